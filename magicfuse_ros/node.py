"""The `magicfuse` ROS 2 node: a thin shell over `magicfuse_core`'s pipeline.

A frame's journey, top to bottom in this file:
callback (cheap checks, count) -> newest-frame slot -> worker thread (age check,
decode, pipeline, encode) -> publish with the input's header -> timing and
diagnostics.

The executor never waits for the pipeline: callbacks only validate the message
geometry and put the frame in a one-place slot, replacing (and counting) any
frame still waiting there. One worker thread takes the newest frame, so the
output always follows the camera as closely as the pipeline allows.

Start-up order matters: parameters are validated first (failing fast with the
parameter's name), the model is loaded and warmed up next, and only then is
the input subscribed, so the node never accepts frames it cannot process.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64, String

from . import conversions
from .params import NODE_NAME, ParameterError, declare_and_validate
from .processing import FrameProcessor, ModelLoadError, class_list_json, load_pipeline, output_images

COUNTERS = (
    "received",            # messages on the input topics
    "invalid",             # rejected: unknown encoding, bad geometry, too large, undecodable
    "dropped_superseded",  # replaced in the slot by a newer frame before the worker took it
    "dropped_stale",       # older than max_input_age_ms when the worker took it
    "processed",           # frames whose outputs were published
    "failed",              # the pipeline raised
    "cut_short",           # the time budget ended sampling early
)
OUTPUTS = ("magimg", "segmentation", "segmentation_color", "ir", "fusion_weight")


@dataclass
class PendingFrame:
    """A checked input message waiting for the worker (decoded only there)."""

    msg: Image | CompressedImage
    compressed: bool


class LatestFrameSlot:
    """Holds at most one frame. `put` replaces the waiting one; `take` blocks until one is there."""

    def __init__(self):
        self._cond = threading.Condition()
        self._frame: PendingFrame | None = None
        self._closed = False

    def put(self, frame: PendingFrame) -> bool:
        """Store `frame`; True if it replaced a frame nobody had taken yet."""
        with self._cond:
            replaced = self._frame is not None
            self._frame = frame
            self._cond.notify()
            return replaced

    def take(self, timeout: float) -> PendingFrame | None:
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class MagicFuseNode(Node):
    """Node `magicfuse`: ~/input/image(/compressed) in, MagImg + segmentation (+ lazy extras) out.

    `node_kwargs` go to rclpy's Node (context, namespace, parameter_overrides, ...).
    Raises ParameterError for invalid parameters and ModelLoadError when the model
    cannot be loaded or warmed up; nothing is subscribed in either case.
    """

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        log = self.get_logger()
        self.params = declare_and_validate(self)
        p = self.params

        # ---- model: load and warm up before anything is subscribed ----
        started = time.monotonic()
        pipeline = load_pipeline(p, log=log.info)
        log.info(f"model ready in {time.monotonic() - started:.1f} s on {pipeline.device}")
        if not getattr(pipeline, "trained", True):
            log.warning("the networks are untrained (random weights): outputs exercise the plumbing only")
        self.processor = FrameProcessor(pipeline, p)
        self.device = str(pipeline.device)
        if p.warmup:
            started = time.monotonic()
            log.info("warming up ...")
            try:
                height, width = self.processor.warmup()
            except Exception as exc:  # noqa: BLE001 - any failure here means the model cannot run
                raise ModelLoadError(f"warm-up failed on {self.device}: {type(exc).__name__}: {exc}") from exc
            log.info(f"warm-up at {width}x{height} done in {time.monotonic() - started:.1f} s")

        # ---- state shared by the callbacks, the worker and the diagnostics timer ----
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._published = dict.fromkeys(OUTPUTS, 0)
        self._window = self._new_window()
        self._previous_totals = dict(self._counters)  # totals at the last report
        self._last_error = ""
        self._slot = LatestFrameSlot()

        # ---- publishers ----
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=p.output_depth, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)
        self._pub = {
            "magimg": self.create_publisher(Image, "~/output/magimg", out_qos),
            "segmentation": self.create_publisher(Image, "~/output/segmentation", out_qos),
            "segmentation_color": self.create_publisher(Image, "~/output/segmentation/color", out_qos),
            "ir": self.create_publisher(Image, "~/output/ir", out_qos),
            "fusion_weight": self.create_publisher(Image, "~/output/fusion_weight", out_qos),
        }
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._class_list_pub = self.create_publisher(String, "~/output/segmentation/class_list", latched)
        self._class_list_pub.publish(String(data=class_list_json(p.thermal_classes)))
        self._debug_pub = {}
        if p.publish_debug:
            self._debug_pub = {
                "processing_time_ms": self.create_publisher(Float64, "~/debug/processing_time_ms", out_qos),
                "pipeline_latency_ms": self.create_publisher(Float64, "~/debug/pipeline_latency_ms", out_qos),
                "counters": self.create_publisher(String, "~/debug/counters", out_qos),
            }
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        # ---- worker, then inputs ----
        self._running = True
        self._worker = threading.Thread(target=self._work, name="magicfuse-worker", daemon=True)
        self._worker.start()
        in_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=p.input_depth,
            reliability=ReliabilityPolicy.BEST_EFFORT if p.input_reliability == "best_effort" else ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
        self._image_sub = self.create_subscription(Image, "~/input/image", self._on_image, in_qos)
        self._compressed_sub = None
        if p.subscribe_compressed:
            self._compressed_sub = self.create_subscription(CompressedImage, "~/input/image/compressed", self._on_compressed, in_qos)
        self._diagnostics_timer = self.create_timer(p.diagnostics_period_s, self._report)
        topics = [self._image_sub.topic_name] + ([self._compressed_sub.topic_name] if self._compressed_sub else [])
        log.info(f"ready: listening on {', '.join(topics)}")

    # ---- callbacks: cheap checks only, never the pipeline ----
    def _on_image(self, msg: Image) -> None:
        self._count("received")
        try:
            conversions.check_image(msg, self.params.max_input_pixels)
        except ValueError as exc:
            self._reject(msg, exc)
            return
        self._enqueue(PendingFrame(msg, compressed=False))

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._count("received")
        if len(msg.data) == 0:
            self._reject(msg, ValueError("compressed image has no data"))
            return
        self._enqueue(PendingFrame(msg, compressed=True))

    def _enqueue(self, frame: PendingFrame) -> None:
        if self._slot.put(frame):
            self._count("dropped_superseded")

    def _reject(self, msg, exc: Exception) -> None:
        self._count("invalid")
        self.get_logger().warning(f"skipping input frame (frame_id '{msg.header.frame_id}'): {exc}", throttle_duration_sec=5.0)

    # ---- worker: one frame at a time, newest first ----
    def _work(self) -> None:
        while self._running:
            frame = self._slot.take(timeout=0.25)
            if frame is None or not self._running:
                continue
            try:
                self._process(frame)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any single frame
                if not self._running:
                    break  # shutting down: the context is gone
                self._count("failed")
                with self._lock:
                    self._last_error = f"{type(exc).__name__}: {exc}"
                self.get_logger().error(f"frame failed: {self._last_error}", throttle_duration_sec=5.0)

    def _process(self, frame: PendingFrame) -> None:
        started = time.monotonic()
        p = self.params
        header = frame.msg.header
        stamp = Time.from_msg(header.stamp)
        age_ms = (self.get_clock().now() - stamp).nanoseconds / 1e6
        if p.max_input_age_ms > 0 and age_ms > p.max_input_age_ms:
            self._count("dropped_stale")
            self.get_logger().warning(
                f"dropping a frame {age_ms:.0f} ms old (max_input_age_ms {p.max_input_age_ms:.0f}; "
                "0 disables the check, e.g. for unstamped cameras)", throttle_duration_sec=5.0)
            return
        try:
            if frame.compressed:
                rgb = conversions.compressed_to_rgb(frame.msg, p.max_input_pixels)
            else:
                rgb = conversions.image_to_rgb(frame.msg, p.max_input_pixels)
        except ValueError as exc:
            self._reject(frame.msg, exc)
            return

        wanted = {name: pub.get_subscription_count() > 0 for name, pub in self._pub.items()}
        try:
            out = self.processor.process(rgb, stamp.nanoseconds, with_color=wanted["segmentation_color"],
                                         with_ir=wanted["ir"], with_weight=wanted["fusion_weight"])
        except Exception as exc:  # noqa: BLE001 - a failing frame must not end the node
            self._count("failed")
            with self._lock:
                self._last_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"pipeline failed on a {rgb.shape[1]}x{rgb.shape[0]} frame: {self._last_error}",
                                    throttle_duration_sec=5.0)
            self._release_gpu_memory(exc)
            return

        for name, (array, encoding) in output_images(out, p).items():
            if array is None:
                continue
            msg = Image(header=header, **conversions.image_fields(array, encoding))
            self._pub[name].publish(msg)
            with self._lock:
                self._published[name] += 1

        processing_ms = (time.monotonic() - started) * 1000.0
        latency_ms = (self.get_clock().now() - stamp).nanoseconds / 1e6
        with self._lock:
            self._counters["processed"] += 1
            self._counters["cut_short"] += int(out.cut_short)
            self._window["processing_ms"].append(processing_ms)
            self._window["latency_ms"].append(latency_ms)
        if self._debug_pub:
            self._debug_pub["processing_time_ms"].publish(Float64(data=processing_ms))
            self._debug_pub["pipeline_latency_ms"].publish(Float64(data=latency_ms))

    def _release_gpu_memory(self, exc: Exception) -> None:
        if "out of memory" in str(exc).lower():
            try:
                import torch

                torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001 - best effort only
                pass

    # ---- counters, timing, diagnostics ----
    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1

    @staticmethod
    def _new_window() -> dict:
        return {"processing_ms": [], "latency_ms": [], "since": time.monotonic()}

    def counters(self) -> dict:
        """Totals since start: COUNTERS plus messages published per output."""
        with self._lock:
            return {**self._counters, "published": dict(self._published)}

    def _report(self) -> None:
        """Once per diagnostics period: /diagnostics status and ~/debug/counters."""
        with self._lock:
            window, self._window = self._window, self._new_window()
            totals = dict(self._counters)
            last_error, self._last_error = self._last_error, ""
            published = dict(self._published)
            previous, self._previous_totals = self._previous_totals, totals
        delta = {k: totals[k] - previous[k] for k in COUNTERS}
        seconds = max(time.monotonic() - window["since"], 1e-6)
        mean_processing = sum(window["processing_ms"]) / len(window["processing_ms"]) if window["processing_ms"] else 0.0
        mean_latency = sum(window["latency_ms"]) / len(window["latency_ms"]) if window["latency_ms"] else 0.0
        dropped = delta["dropped_superseded"] + delta["dropped_stale"]

        level, message = DiagnosticStatus.OK, "ok"
        if totals["received"] == 0:
            message = "waiting for images"
        warn_ms = self.params.warn_processing_time_ms
        problems = []
        if dropped:
            problems.append(f"dropped {dropped} frame(s) (pipeline slower than the input)")
        if delta["invalid"]:
            problems.append(f"skipped {delta['invalid']} invalid frame(s)")
        if warn_ms > 0 and mean_processing > warn_ms:
            problems.append(f"slow: {mean_processing:.0f} ms per frame > {warn_ms:.0f} ms")
        if problems:
            level, message = DiagnosticStatus.WARN, "; ".join(problems)
        if delta["failed"]:
            level, message = DiagnosticStatus.ERROR, f"pipeline failed on {delta['failed']} frame(s): {last_error}"

        values = {
            **{k: str(v) for k, v in totals.items()},
            **{f"published_{k}": str(v) for k, v in published.items()},
            "input_rate_hz": f"{delta['received'] / seconds:.2f}",
            "output_rate_hz": f"{delta['processed'] / seconds:.2f}",
            "mean_processing_time_ms": f"{mean_processing:.1f}",
            "mean_pipeline_latency_ms": f"{mean_latency:.1f}",
            "device": self.device,
        }
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: MagImg pipeline", message=message,
                                  hardware_id=self.device, values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)
        if self._debug_pub:
            self._debug_pub["counters"].publish(String(data=json.dumps({**totals, "published": published})))

    def close(self) -> None:
        """Stop the worker (waiting briefly for a frame in flight) and destroy the node."""
        self._running = False
        self._slot.close()
        self._worker.join(timeout=5.0)
        self.destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Console script `magicfuse_node`: exit 0 on shutdown, 2 on bad parameters, 1 when the model cannot load."""
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=argv if argv is not None else sys.argv)
    logger = rclpy.logging.get_logger(NODE_NAME)
    node = None
    code = 0
    try:
        node = MagicFuseNode()
        rclpy.spin(node)
    except ParameterError as exc:
        logger.fatal(f"{exc}; not starting")
        code = 2
    except ModelLoadError as exc:
        logger.fatal(f"{exc}; not starting")
        code = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
