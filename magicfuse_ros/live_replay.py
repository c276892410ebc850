"""Live replay: the real node as a process, a bag's frames published into it with rclpy.

    python -m magicfuse_ros.live_replay IN_BAG OUT_BAG [--model random-tiny] [--pace bag|lockstep]

1. starts `magicfuse_ros.node` as a subprocess (its own ROS domain and namespace,
   discovery kept on this host) with the package's parameter file and overrides;
2. waits until the node subscribes to its input (model loaded and warmed up);
3. publishes the bag's frames, re-stamped with the current time (reliable by
   default, see `live_replay`; `--best-effort` like a camera driver): at the bag's
   own rate (`--pace bag`: the node drops what it cannot keep up with) or one frame
   after the other's outputs (`--pace lockstep`: every frame is processed);
4. records every output, writes them (and the frames sent) to OUT_BAG, PNGs on
   request, and reports frames in / out / dropped and the latency.

`NodeProcess` and `RosClient` are the building blocks, also used by the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .params import PARAM_FILE, find_share_path
from .processing import weight_to_mono8

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT_KINDS = ("magimg", "segmentation", "segmentation_color", "ir", "fusion_weight")


def default_domain_id() -> int:
    """A ROS domain for this process (1..100), so concurrent runs do not hear each other."""
    return 1 + os.getpid() % 100


def ros_environment(domain_id: int, base: dict | None = None) -> dict:
    """Environment for a node process: our domain, discovery on this host only, unbuffered
    logs, and this source tree importable (for runs without an install)."""
    env = dict(os.environ if base is None else base)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # Iron and later
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated since Iron; conflicts with the line above
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _ros_arg_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_ros_arg_value(v) for v in value) + "]"
    return str(value)


class NodeProcess:
    """The magicfuse node in a subprocess. Output goes to files (a full pipe would block it)."""

    def __init__(self, *, namespace: str = "", params_file: str | Path | None = None, overrides: dict | None = None,
                 domain_id: int | None = None, env: dict | None = None, log_dir: str | Path | None = None,
                 extra_ros_args: list[str] | None = None):
        self.namespace = namespace
        self.params_file = Path(params_file) if params_file is not None else find_share_path(PARAM_FILE)
        self.overrides = dict(overrides or {})
        self.domain_id = default_domain_id() if domain_id is None else domain_id
        self.env = ros_environment(self.domain_id, env)
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="magicfuse_node_"))
        self.extra_ros_args = list(extra_ros_args or [])
        self.process: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        args = [sys.executable, "-m", "magicfuse_ros.node", "--ros-args", "--params-file", str(self.params_file)]
        if self.namespace:
            args += ["-r", f"__ns:={self.namespace}"]
        for name, value in self.overrides.items():
            args += ["-p", f"{name}:={_ros_arg_value(value)}"]
        return args + self.extra_ros_args

    def start(self) -> "NodeProcess":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._stdout = open(self.log_dir / "stdout.log", "wb")
        self._stderr = open(self.log_dir / "stderr.log", "wb")
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self._stdout, stderr=self._stderr,
                                        stdin=subprocess.DEVNULL)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Exit code, or None if still running after `timeout` s."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGINT (a clean ROS shutdown), then SIGKILL after `timeout` s. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            if self.wait(timeout) is None:
                self.process.kill()
                self.process.wait(10)
        for stream in (self._stdout, self._stderr):
            stream.close()
        return self.process.returncode

    def log(self) -> str:
        """stdout + stderr so far (the node logs to stderr)."""
        text = ""
        for name in ("stdout.log", "stderr.log"):
            path = self.log_dir / name
            if path.exists():
                text += path.read_text(errors="replace")
        return text

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class Received:
    monotonic_ns: int
    message: object


class Recorder:
    """Messages of one topic with their arrival time (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: list[Received] = []
        self.subscription = None

    def _append(self, message) -> None:
        with self._lock:
            self._items.append(Received(time.monotonic_ns(), message))

    @property
    def items(self) -> list[Received]:
        with self._lock:
            return list(self._items)

    @property
    def messages(self) -> list:
        return [item.message for item in self.items]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class RosClient:
    """An rclpy node in its own context, spun by a background thread."""

    def __init__(self, name: str = "magicfuse_client", domain_id: int | None = None):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=default_domain_id() if domain_id is None else domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=f"{name}-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except (ExternalShutdownException, Exception):  # noqa: BLE001 - the test or tool ends it
            pass

    def publisher(self, msg_type, topic: str, *, reliable: bool = False, depth: int = 1):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        return self.node.create_publisher(msg_type, topic, qos)

    def recorder(self, msg_type, topic: str, *, depth: int = 10, latched: bool = False) -> Recorder:
        """Reliable subscriber keeping everything it receives."""
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
        recorder = Recorder()
        recorder.subscription = self.node.create_subscription(msg_type, topic, recorder._append, qos)
        return recorder

    def stop_recording(self, recorder: Recorder) -> None:
        self.node.destroy_subscription(recorder.subscription)

    def now_msg(self):
        return self.node.get_clock().now().to_msg()

    @staticmethod
    def wait_until(predicate, timeout: float, poll: float = 0.02, while_alive: NodeProcess | None = None) -> bool:
        """True once predicate() holds; False after `timeout` s or when `while_alive` has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if while_alive is not None and not while_alive.alive():
                return bool(predicate())
            time.sleep(poll)
        return bool(predicate())

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)


def output_topics(namespace: str) -> dict[str, str]:
    """Fully qualified output topics of a `magicfuse` node in `namespace`."""
    base = f"{namespace.rstrip('/')}/magicfuse"
    return {
        "magimg": f"{base}/output/magimg",
        "segmentation": f"{base}/output/segmentation",
        "segmentation_color": f"{base}/output/segmentation/color",
        "ir": f"{base}/output/ir",
        "fusion_weight": f"{base}/output/fusion_weight",
        "class_list": f"{base}/output/segmentation/class_list",
        "processing_time_ms": f"{base}/debug/processing_time_ms",
        "pipeline_latency_ms": f"{base}/debug/pipeline_latency_ms",
        "counters": f"{base}/debug/counters",
        "input": f"{base}/input/image",
        "input_compressed": f"{base}/input/image/compressed",
    }


def to_rclpy_image(frame):
    """A rosbags Image/CompressedImage (bag.BagFrame.message) as an rclpy message."""
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header

    m = frame.message
    header = Header(stamp=Time(sec=int(m.header.stamp.sec), nanosec=int(m.header.stamp.nanosec)), frame_id=m.header.frame_id)
    data = np.asarray(m.data, dtype=np.uint8).tobytes()
    if hasattr(m, "format"):
        return CompressedImage(header=header, format=m.format, data=data)
    return Image(header=header, height=m.height, width=m.width, encoding=m.encoding, is_bigendian=m.is_bigendian,
                 step=m.step, data=data)


def _percentiles(values_ms: list[float]) -> dict:
    if not values_ms:
        return {"count": 0}
    v = np.asarray(values_ms, dtype=np.float64)
    return {"count": int(v.size), "mean": round(float(v.mean()), 1), "p50": round(float(np.percentile(v, 50)), 1),
            "p95": round(float(np.percentile(v, 95)), 1), "max": round(float(v.max()), 1)}


def live_replay(in_bag: str | Path, out_bag: str | Path | None, *, topic: str | None = None,
                params_file: str | Path | None = None, overrides: dict | None = None, pace: str = "bag",
                rate: float | None = None, max_frames: int | None = None, png_dir: str | Path | None = None,
                storage: str | None = None, reliable: bool = True, start_timeout: float = 600.0,
                frame_timeout: float = 120.0, progress=print) -> dict:
    """Run the real node on a bag through rclpy; returns the report (see module docstring).

    reliable: publish the frames reliably (and set the node's input_reliability to match),
    so that what the report counts as dropped is dropped by the node, not by the transport:
    with Fast DDS's default transports, best-effort samples larger than its 0.5 MB
    shared-memory segment travel as UDP fragments and are often lost whole.
    """
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Float64, String

    from magicfuse_core.imageio import write_png

    from . import bag as bags
    from . import conversions

    if pace not in ("bag", "lockstep"):
        raise ValueError(f"pace must be 'bag' or 'lockstep', got {pace!r}")
    in_bag = Path(in_bag)
    topic = bags.pick_topic(in_bag, topic)
    frames = list(bags.read_images(in_bag, [topic]))[:max_frames]
    if not frames:
        raise ValueError(f"bag {in_bag} has no frames on {topic}")
    if out_bag is not None and Path(out_bag).exists():
        raise FileExistsError(f"output bag {out_bag} exists already; choose another path or remove it")
    compressed = frames[0].msgtype == bags.COMPRESSED_TYPE
    overrides = dict(overrides or {})
    overrides["input_reliability"] = "reliable" if reliable else "best_effort"
    if compressed:
        overrides["subscribe_compressed"] = True
    if rate is None and len(frames) > 1:
        span_s = (frames[-1].timestamp_ns - frames[0].timestamp_ns) / 1e9
        rate = (len(frames) - 1) / span_s if span_s > 0 else 10.0
    period_s = 1.0 / (rate or 10.0)

    domain_id = default_domain_id()
    namespace = f"/live_replay_{os.getpid()}"
    topics = output_topics(namespace)
    report: dict = {"input_bag": str(in_bag), "topic": topic, "pace": pace, "rate_hz": round(1.0 / period_s, 3),
                    "input_qos": overrides["input_reliability"], "frames_in": 0, "frames_out": 0, "dropped": 0}
    sent: dict[int, tuple[int, int]] = {}  # stamp ns given at publishing -> (frame index, publish monotonic ns)
    sent_messages = []
    client = RosClient("magicfuse_live_replay", domain_id)
    try:
        recorders = {kind: client.recorder(Image, topics[kind]) for kind in OUTPUT_KINDS}
        debug = {name: client.recorder(Float64, topics[name], depth=100) for name in ("processing_time_ms", "pipeline_latency_ms")}
        counters = client.recorder(String, topics["counters"], depth=5)
        class_list = client.recorder(String, topics["class_list"], depth=1, latched=True)
        publisher = client.publisher(CompressedImage if compressed else Image,
                                     topics["input_compressed" if compressed else "input"], reliable=reliable)
        node = NodeProcess(namespace=namespace, params_file=params_file, overrides=overrides, domain_id=domain_id)
        started = time.monotonic()
        progress(f"starting the node (log: {node.log_dir}) ...")
        node.start()
        try:
            ready = client.wait_until(lambda: publisher.get_subscription_count() > 0, start_timeout, poll=0.1,
                                      while_alive=node)
            if not ready:
                raise RuntimeError(f"the node did not become ready (exit code {node.process.poll()}):\n{node.log()[-3000:]}")
            client.wait_until(lambda: all(r.subscription.get_publisher_count() > 0 for r in recorders.values()), 10.0)
            report["node_startup_s"] = round(time.monotonic() - started, 2)
            progress(f"node ready after {report['node_startup_s']} s; publishing {len(frames)} frames ({pace} pace)")
            next_time = time.monotonic()
            for index, frame in enumerate(frames):
                message = to_rclpy_image(frame)
                if pace == "bag":
                    time.sleep(max(0.0, next_time - time.monotonic()))
                    next_time += period_s
                message.header.stamp = client.now_msg()  # fresh stamps: the node checks their age
                before = len(recorders["magimg"])
                sent[bags.stamp_to_ns(message.header.stamp)] = (index, time.monotonic_ns())
                sent_messages.append(message)
                publisher.publish(message)
                report["frames_in"] += 1
                if pace == "lockstep":
                    done = client.wait_until(lambda: len(recorders["magimg"]) > before, frame_timeout, while_alive=node)
                    progress(f"frame {index + 1}/{len(frames)} " + ("done" if done else f"gave no output in {frame_timeout} s"))
            # Let the frame in flight come out, then wait for one more counters report.
            last_stamp = max(sent)
            client.wait_until(lambda: any(bags.stamp_to_ns(m.header.stamp) == last_stamp for m in recorders["magimg"].messages),
                              frame_timeout, while_alive=node)
            time.sleep(0.3)
            reports_before = len(counters)
            client.wait_until(lambda: len(counters) > reports_before, 5.0, while_alive=node)
            report["wall_s"] = round(time.monotonic() - started, 2)
        finally:
            report["node_exit_code"] = node.stop()
        outputs = {kind: r.items for kind, r in recorders.items()}
        debug_values = {name: [i.message.data for i in r.items] for name, r in debug.items()}
        report["node_counters"] = json.loads(counters.messages[-1].data) if len(counters) else None
        report["class_list_received"] = bool(len(class_list))
    finally:
        client.close()

    magimg = outputs.get("magimg", [])
    latencies = []
    for item in magimg:
        stamp_ns = bags.stamp_to_ns(item.message.header.stamp)
        if stamp_ns in sent:
            latencies.append((item.monotonic_ns - sent[stamp_ns][1]) / 1e6)
    report["frames_out"] = len({bags.stamp_to_ns(i.message.header.stamp) for i in magimg})
    report["dropped"] = report["frames_in"] - report["frames_out"]
    report["outputs_per_kind"] = {kind: len(items) for kind, items in outputs.items()}
    report["latency_ms"] = _percentiles(latencies)  # publish -> MagImg received, measured here
    report["node_processing_time_ms"] = _percentiles(debug_values.get("processing_time_ms", []))
    report["node_pipeline_latency_ms"] = _percentiles(debug_values.get("pipeline_latency_ms", []))

    if out_bag is not None:
        from rclpy.serialization import serialize_message

        if storage is None:
            storage = "mcap" if any(in_bag.glob("*.mcap")) else "sqlite3"
        with bags.BagOutput(out_bag, storage) as out:
            input_type = bags.COMPRESSED_TYPE if compressed else bags.IMAGE_TYPE
            for message in sent_messages:
                out.write(topic, input_type, bags.stamp_to_ns(message.header.stamp), raw=serialize_message(message))
            for kind, items in outputs.items():
                for item in items:
                    stamp_ns = bags.stamp_to_ns(item.message.header.stamp)
                    out.write(bags.OUTPUT_TOPICS[kind], bags.IMAGE_TYPE, stamp_ns, raw=serialize_message(item.message))
        report["output_bag"] = str(out_bag)
        report["messages_written"] = dict(out.counts)
    if png_dir is not None:
        png_dir = Path(png_dir)
        for kind, items in outputs.items():
            for item in items:
                index = sent.get(bags.stamp_to_ns(item.message.header.stamp), (None,))[0]
                if index is None:
                    continue
                array, _ = conversions.image_to_array(item.message, encodings=conversions.READABLE_ENCODINGS)
                if array.dtype != np.uint8:  # 32FC1 fusion weight
                    array = weight_to_mono8(array)
                write_png(png_dir / kind / f"{index:06d}.png", array)
        png_dir.mkdir(parents=True, exist_ok=True)
        (png_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        report["png_dir"] = str(png_dir)
    return report


def format_report(report: dict) -> str:
    lat, proc = report.get("latency_ms", {}), report.get("node_processing_time_ms", {})
    lines = [
        f"frames in {report['frames_in']}, out {report['frames_out']}, dropped {report['dropped']} "
        f"({report['pace']} pace, {report['rate_hz']} Hz, {report['input_qos']} input)",
        f"latency (publish -> MagImg received): mean {lat.get('mean')} ms, p50 {lat.get('p50')}, p95 {lat.get('p95')}, max {lat.get('max')}",
        f"node processing time: mean {proc.get('mean')} ms, p95 {proc.get('p95')}",
        f"node counters: {report.get('node_counters')}",
    ]
    return "\n".join(lines)


def demo(samples_dir: str | Path, out_dir: str | Path, device: str = "cpu", max_frames: int | None = None,
         model: str | None = None) -> int:
    """`make demo`'s ROS part: bag from the sample frames, the node on it live, output bag + PNGs + report."""
    import shutil

    from magicfuse_core.paths import default_model_dir

    from . import bag as bags

    out_dir = Path(out_dir)
    for stale in ("frames_bag", "output_bag", "png"):
        if (out_dir / stale).exists():
            shutil.rmtree(out_dir / stale)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = bags.make_bag(samples_dir, out_dir / "frames_bag", rate=2.0, max_frames=max_frames)
    print(f"[ros] bag of {made.frames} frames (+{made.ir_frames} IR) -> {made.path}", flush=True)
    overrides = {"device": device}
    if model is None:
        found = default_model_dir()
        model = str(found) if found is not None else "random-tiny"
        if found is None:
            # Untrained full-resolution sampling takes minutes per frame on a CPU; the plumbing shows as well small.
            print("[ros] WARNING: no bundled model: the node runs random untrained tiny networks at 120x160",
                  file=sys.stderr)
            overrides.update(processing_height=120, processing_width=160)
    overrides["model_path"] = model
    report = live_replay(made.path, out_dir / "output_bag", overrides=overrides, pace="lockstep",
                         png_dir=out_dir / "png", progress=lambda m: print(f"[ros] {m}", flush=True))
    print(format_report(report), flush=True)
    print(f"[ros] output bag {report.get('output_bag')}, PNGs and report.json in {out_dir / 'png'}", flush=True)
    return 0 if report["frames_out"] == report["frames_in"] and report["node_exit_code"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magicfuse_ros.live_replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("in_bag", type=Path)
    parser.add_argument("out_bag", type=Path, nargs="?", default=None, help="output bag (default: none)")
    parser.add_argument("--topic", default=None, help="input image topic in the bag (default: the visible one)")
    parser.add_argument("--params-file", type=Path, default=None, help="node parameter file (default: the package's)")
    parser.add_argument("--model", default=None, help="model_path for the node (e.g. random-tiny)")
    parser.add_argument("--device", default=None, help="device for the node (default: the parameter file's)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra node parameter override, as after --ros-args -p")
    parser.add_argument("--pace", choices=("bag", "lockstep"), default="bag",
                        help="bag: publish at the bag's rate (drops show); lockstep: wait for each output")
    parser.add_argument("--rate", type=float, default=None, help="publish rate in Hz for --pace bag (default: the bag's)")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--png-dir", type=Path, default=None, help="write the outputs as PNGs and report.json here")
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default=None)
    parser.add_argument("--best-effort", action="store_true",
                        help="publish best effort like a camera driver (large frames may then be lost in transport)")
    args = parser.parse_args(argv)
    # A plain `kill` must still stop the node process: turn SIGTERM into a normal exit (finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    overrides: dict = {}
    if args.model:
        overrides["model_path"] = args.model
    if args.device:
        overrides["device"] = args.device
    for item in args.param:
        name, sep, value = item.partition(":=")
        if not sep:
            parser.error(f"-p expects NAME:=VALUE, got {item!r}")
        overrides[name] = value
    try:
        report = live_replay(args.in_bag, args.out_bag, topic=args.topic, params_file=args.params_file, overrides=overrides,
                             pace=args.pace, rate=args.rate, max_frames=args.max_frames, png_dir=args.png_dir,
                             storage=args.storage, reliable=not args.best_effort)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"live_replay: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
