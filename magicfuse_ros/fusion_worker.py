"""The part of the node both node classes share: topics, newest-frame slot, worker, one frame function.

`FusionWorker` is driven by the plain node (`node.MagicFuseNode`: built, then
started) and by the managed node (`managed_node`: built on configure, started on
activate, stopped on deactivate, destroyed on cleanup), so nothing is written twice.

A frame's journey, top to bottom in this file:
publishers (built with the worker) -> subscriptions (only while an image output has
a subscriber, unless `lazy_input` is false) -> callback (one check, count) ->
newest-frame slot -> worker thread -> `_process_frame`: age check (opt-in) ->
decode -> pipeline (only the outputs someone listens to) -> encode -> publish with
the input's header (and the camera_info of that frame) -> timing.

The executor never waits for the pipeline: callbacks only check the message and
put it into a one-place slot, replacing (and counting) a frame still waiting there.
QoS follows REP-2003 (sensor-data QoS in, reliable out) and can be changed through
ROS 2's own `qos_overrides.<topic>.<publisher|subscription>.<policy>` parameters.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from rclpy.clock import Clock, ClockType
try:
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble (the module was renamed in Iron)
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_policy_name_from_kind, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import String

from . import conversions
from .monitoring import DiagnosticsPublisher, FrameStats, StopWatch
from .outputs import (CLASS_LIST, IMAGE_OUTPUT_NAMES, IMAGE_OUTPUTS, INPUT_CAMERA_INFO, INPUT_COMPRESSED, INPUT_IMAGE,
                      OUTPUT_CAMERA_INFO, private)
from .processing import FrameProcessor, FrameStopped, class_list_json

# How often the subscriber count of the image outputs is checked (lazy input).
LAZY_INPUT_PERIOD_S = 0.2
# A stamp this far from the node's clock (either way) comes from another time base.
FOREIGN_CLOCK_MIN_S = 60.0
WORKER_THREAD = "magicfuse-worker"
# How long stop() waits for a frame in the pipeline (it stops between two sampling steps).
STOP_TIMEOUT_S = 1.5


@dataclass
class PendingFrame:
    """A checked input message waiting for the worker (decoded only there)."""

    msg: Image | CompressedImage
    layout: conversions.ImageLayout | None   # from the callback's check; None for compressed frames


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

    def close(self) -> PendingFrame | None:
        """Wake the worker for good; returns the frame left waiting, if any."""
        with self._cond:
            self._closed = True
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame


def output_qos() -> QoSProfile:
    """REP-2003 output QoS: reliable, keep last 1 (overridable per topic)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)


def input_qos() -> QoSProfile:
    """REP-2003 input QoS: sensor data (best effort, keep last 5; overridable per topic)."""
    return QoSProfile(**{k: getattr(qos_profile_sensor_data, k) for k in ("history", "depth", "reliability", "durability")})


class FusionWorker:
    """Publishers, lazy subscriptions, slot, worker thread and frame function of one node.

    node: an rclpy Node or LifecycleNode (for the latter, publishers are lifecycle
    publishers, enabled by the node's activate). processor: a warmed-up FrameProcessor.
    """

    def __init__(self, node, processor: FrameProcessor, device: str):
        self.node, self.processor, self.params = node, processor, processor.params
        self.log = node.get_logger()
        self.stats = FrameStats(IMAGE_OUTPUT_NAMES)
        self._lifecycle = hasattr(node, "create_lifecycle_publisher")
        self._stop = threading.Event()
        self._slot = LatestFrameSlot()
        self._thread: threading.Thread | None = None
        self._subscriptions: list = []
        self._timers: list = []
        self._camera_info: CameraInfo | None = None
        self._clock_warned = False
        self._abandoned = False  # stop() gave up waiting for the frame in the pipeline (and counted it)

        # ---- publishers ----
        overridable = QoSOverridingOptions.with_default_policies()
        self._image_pubs = {o.name: self._publisher(Image, private(o.topic), output_qos(), overridable)
                            for o in IMAGE_OUTPUTS}
        self._camera_info_pub = self._publisher(CameraInfo, private(OUTPUT_CAMERA_INFO), output_qos(), overridable)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._class_list_pub = self._publisher(String, private(CLASS_LIST), latched)
        self.debug = DiagnosticsPublisher(node, self._publisher, self.params.publish_debug, device,
                                          self.params.warn_processing_time_ms)

    def _publisher(self, msg_type, topic: str, qos, overriding: QoSOverridingOptions | None = None):
        create = self.node.create_lifecycle_publisher if self._lifecycle else self.node.create_publisher
        kwargs = {}
        if overriding is not None:
            kwargs = {"qos_overriding_options": overriding,
                      "event_callbacks": PublisherEventCallbacks(incompatible_qos=self._incompatible(topic, "subscriber"))}
        return create(msg_type, topic, qos, **kwargs)

    def _incompatible(self, topic: str, other: str):
        def report(event) -> None:
            self.log.warning(
                f"incompatible QoS on {self.node.resolve_topic_name(topic)}: a {other} there cannot be matched "
                f"(policy {qos_policy_name_from_kind(event.last_policy_kind)}, {event.total_count} so far); "
                "see the qos_overrides parameters")
        return report

    # ---- start and stop (plain node: at start-up and shutdown; managed node: activate / deactivate) ----
    def start(self) -> None:
        self._class_list_pub.publish(String(data=class_list_json(self.params.thermal_classes)))
        self._stop.clear()
        self._abandoned = False
        self._slot = LatestFrameSlot()
        self._thread = threading.Thread(target=self._work, name=WORKER_THREAD, daemon=True)
        self._thread.start()
        # Wall-clock timers: with use_sim_time, a paused /clock must not stop the diagnostics or the subscriber checks.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._timers.append(self.node.create_timer(self.params.diagnostics_period_s, lambda: self.debug.report(self.stats),
                                                   clock=steady))
        inputs = ", ".join(self.node.resolve_topic_name(private(t)) for t in self._input_topics())
        if self.params.lazy_input:
            self._timers.append(self.node.create_timer(LAZY_INPUT_PERIOD_S, self._update_subscriptions, clock=steady))
            self.log.info(f"ready: listening on {inputs} while an image output has a subscriber (lazy_input)")
        else:
            self._subscribe()
            self.log.info(f"ready: listening on {inputs}")

    def stop(self) -> None:
        """Unsubscribe, stop the timers and the worker (a frame in the pipeline stops between two steps)."""
        for timer in self._timers:
            self.node.destroy_timer(timer)
        self._timers.clear()
        self._unsubscribe()
        self._stop.set()
        if self._slot.close() is not None:
            self.stats.count("dropped_stopped")
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S)
            if self._thread.is_alive():  # the frame it holds will never be published: count it now
                self._abandoned = True
                self.stats.count("dropped_stopped")
                self.log.warning(f"the worker is still in the pipeline after {STOP_TIMEOUT_S} s; leaving it behind")
            self._thread = None

    def destroy(self) -> None:
        """Destroy the publishers (after `stop`)."""
        destroy = self.node.destroy_lifecycle_publisher if self._lifecycle else self.node.destroy_publisher
        for publisher in [*self._image_pubs.values(), self._camera_info_pub, self._class_list_pub, *self.debug.publishers]:
            destroy(publisher)

    # ---- subscriptions: only while someone listens (lazy_input) ----
    def _input_topics(self) -> list[str]:
        return [INPUT_IMAGE, INPUT_CAMERA_INFO] + ([INPUT_COMPRESSED] if self.params.subscribe_compressed else [])

    def _update_subscriptions(self) -> None:
        listened = any(pub.get_subscription_count() > 0 for pub in self._image_pubs.values())
        if listened and not self._subscriptions:
            self._subscribe()
            self.log.info("an image output has a subscriber: subscribed to the camera")
        elif not listened and self._subscriptions:
            self._unsubscribe()
            self.log.info("no image output has a subscriber left: unsubscribed from the camera")

    def _subscribe(self) -> None:
        def create(msg_type, topic, callback):
            return self.node.create_subscription(
                msg_type, private(topic), callback, input_qos(),
                qos_overriding_options=QoSOverridingOptions.with_default_policies(),
                event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._incompatible(private(topic), "publisher")))

        self._subscriptions = [create(Image, INPUT_IMAGE, self._on_image),
                               create(CameraInfo, INPUT_CAMERA_INFO, self._on_camera_info)]
        if self.params.subscribe_compressed:
            self._subscriptions.append(create(CompressedImage, INPUT_COMPRESSED, self._on_compressed))

    def _unsubscribe(self) -> None:
        for subscription in self._subscriptions:
            self.node.destroy_subscription(subscription)
        self._subscriptions = []

    # ---- callbacks: one check, never the pipeline ----
    def _on_image(self, msg: Image) -> None:
        self.stats.count("received")
        try:
            layout = conversions.check_image(msg, self.params.max_input_pixels)
        except ValueError as exc:
            self._reject(msg, exc)
            return
        self._enqueue(PendingFrame(msg, layout))

    def _on_compressed(self, msg: CompressedImage) -> None:
        self.stats.count("received")
        if len(msg.data) == 0:
            self._reject(msg, ValueError("compressed image has no data"))
            return
        self._enqueue(PendingFrame(msg, None))  # the decode in the worker is its check

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _enqueue(self, frame: PendingFrame) -> None:
        if self._slot.put(frame):
            self.stats.count("dropped_superseded")

    def _reject(self, msg, exc: Exception) -> None:
        self.stats.count("invalid")
        self.log.warning(f"skipping input frame (frame_id '{msg.header.frame_id}'): {exc}", throttle_duration_sec=5.0)

    # ---- worker: one frame at a time, newest first ----
    def _work(self) -> None:
        while not self._stop.is_set():
            frame = self._slot.take(timeout=0.25)
            if frame is None:
                continue
            if self._stop.is_set():
                self.stats.count("dropped_stopped")
                break
            try:
                self._process_frame(frame)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any single frame
                if isinstance(exc, FrameStopped) or self._stop.is_set():  # stopping: the context may be gone
                    if not self._abandoned:
                        self.stats.count("dropped_stopped")
                    continue
                self.stats.failed(f"{type(exc).__name__}: {exc}")
                self.log.error(f"frame failed: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)
                release_gpu_memory_after(exc)

    def _process_frame(self, frame: PendingFrame) -> None:
        """decode -> pipeline -> encode -> publish, for one frame."""
        watch = StopWatch()
        header = frame.msg.header
        stamp = Time.from_msg(header.stamp)
        if self._stale(stamp):
            self.stats.count("dropped_stale")
            return
        try:
            if frame.layout is None:
                rgb = conversions.compressed_to_rgb(frame.msg, self.params.max_input_pixels)
            else:
                rgb = conversions.to_rgb8(conversions.read_checked(frame.msg, frame.layout), frame.layout.encoding)
        except ValueError as exc:
            self._reject(frame.msg, exc)
            return
        wanted = [o.name for o in IMAGE_OUTPUTS if not o.lazy or self._image_pubs[o.name].get_subscription_count() > 0]
        result = self.processor.process(rgb, stamp.nanoseconds, wanted, should_stop=self._stop.is_set)

        for name, (array, encoding) in result.images.items():
            self._image_pubs[name].publish(Image(header=header, **conversions.image_fields(array, encoding)))
        if self._camera_info is not None:
            fields = conversions.camera_info_fields(self._camera_info, rgb.shape[1], rgb.shape[0])
            roi = RegionOfInterest(**fields.pop("roi"))
            self._camera_info_pub.publish(CameraInfo(header=header, roi=roi, **fields))

        processing_ms = watch.elapsed_ms()
        latency_ms = (self.node.get_clock().now() - stamp).nanoseconds / 1e6
        self.stats.frame_done(list(result.images), processing_ms, latency_ms, result.cut_short)
        self.debug.frame(processing_ms, latency_ms)

    def _stale(self, stamp: Time) -> bool:
        """True when the opt-in age check drops this frame. A stamp from another time base is never stale."""
        now = self.node.get_clock().now()
        age_s = (now - stamp).nanoseconds / 1e9
        max_age_s = self.params.max_input_age_ms / 1000.0
        if abs(age_s) > max(FOREIGN_CLOCK_MIN_S, 2.0 * max_age_s):
            if not self._clock_warned:
                self._clock_warned = True
                self.log.warning(
                    f"the camera clock differs from the node's: a frame stamped {stamp.nanoseconds / 1e9:.3f} s arrived at "
                    f"{now.nanoseconds / 1e9:.3f} s ({age_s:+.1f} s). Every frame is processed whatever its stamp "
                    "(max_input_age_ms does not apply to another time base) and ~/debug/pipeline_latency_ms is not "
                    "meaningful. Stamp with the node's clock, or use use_sim_time with ros2 bag play --clock.")
            return False
        if 0 < max_age_s < age_s:
            self.log.warning(f"dropping a frame {age_s * 1000:.0f} ms old (max_input_age_ms "
                             f"{self.params.max_input_age_ms:.0f}; 0 never drops)", throttle_duration_sec=5.0)
            return True
        return False


def release_gpu_memory_after(exc: Exception) -> None:
    """After a CUDA out-of-memory error, hand the cached blocks back so the next frame may fit."""
    if "out of memory" in str(exc).lower():
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - best effort only
            pass
