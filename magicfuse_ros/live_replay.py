"""Live replay: the real node as a process, a bag's frames published into it with rclpy.

    python -m magicfuse_ros.live_replay IN_BAG [OUT_BAG] [--model random-tiny] [--pace bag|lockstep]

Starts `magicfuse_ros.node` as a subprocess (its own ROS domain and namespace,
discovery on this host) with the package's parameter file and overrides, waits
until it subscribes to its input (it does once the model is warm and the replay
subscribes to its outputs), publishes the bag's frames re-stamped with the current
time (so the node's latency figures mean something) at the bag's rate (`--pace
bag`: the node drops what it cannot keep up with) or one after the other's outputs
(`--pace lockstep`), records every output, writes them and the frames sent to
OUT_BAG (and PNGs on request), and reports frames in / out / dropped and latency.

The node process and the rclpy client come from `node_process`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from .node_process import NodeProcess, RosClient, default_domain_id, wait_until
from .outputs import IMAGE_OUTPUT_NAMES, topics as node_topics

def to_rclpy_image(m):
    """A rosbags Image/CompressedImage message as an rclpy message."""
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header

    header = Header(stamp=Time(sec=int(m.header.stamp.sec), nanosec=int(m.header.stamp.nanosec)), frame_id=m.header.frame_id)
    data = np.asarray(m.data, dtype=np.uint8).tobytes()
    if hasattr(m, "format"):
        return CompressedImage(header=header, format=m.format, data=data)
    return Image(header=header, height=m.height, width=m.width, encoding=m.encoding, is_bigendian=m.is_bigendian,
                 step=m.step, data=data)


def percentiles(values_ms: list[float]) -> dict:
    if not values_ms:
        return {"count": 0}
    v = np.asarray(values_ms, dtype=np.float64)
    return {"count": int(v.size), "mean": round(float(v.mean()), 1), "p50": round(float(np.percentile(v, 50)), 1),
            "p95": round(float(np.percentile(v, 95)), 1), "max": round(float(v.max()), 1)}


def live_replay(in_bag: str | Path, out_bag: str | Path | None, *, topic: str | None = None,
                params_file: str | Path | None = None, overrides: dict | None = None, pace: str = "bag",
                rate: float | None = None, max_frames: int | None = None, png_dir: str | Path | None = None,
                storage: str | None = None, reliable: bool = True, start_timeout: float = 600.0, frame_timeout: float = 120.0,
                progress=print) -> dict:
    """Run the real node on a bag through rclpy; returns the report (see module docstring).

    reliable (default): frames go out reliably and the node's input is set reliable
    (qos_overrides) to match, so what the report counts as dropped was dropped by the node (newest frame
    wins), not by the transport: with Fast DDS's default transports, best-effort
    samples above its 0.5 MB shared-memory segment travel as UDP fragments and are
    often lost whole.
    """
    from rclpy.serialization import serialize_message
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
    namespace = f"/live_replay_{os.getpid()}"
    names = node_topics(namespace)
    input_key = "input_compressed" if compressed else "input"
    overrides = dict(overrides or {})
    if reliable:
        overrides[f"qos_overrides.{names[input_key]}.subscription.reliability"] = "reliable"
    if compressed:
        overrides["subscribe_compressed"] = True
    if rate is None:
        span_s = (frames[-1].timestamp_ns - frames[0].timestamp_ns) / 1e9
        rate = (len(frames) - 1) / span_s if span_s > 0 else 10.0
    report: dict = {"input_bag": str(in_bag), "topic": topic, "pace": pace, "rate_hz": round(rate, 3),
                    "input_qos": "reliable" if reliable else "best_effort", "frames_in": 0}
    sent: dict[int, tuple[int, int, object]] = {}  # stamp ns -> (frame index, publish monotonic ns, message)
    domain_id = default_domain_id()
    client = RosClient("magicfuse_live_replay", domain_id)
    node = NodeProcess(namespace=namespace, params_file=params_file, overrides=overrides, domain_id=domain_id)
    try:
        recorders = {name: client.recorder(Image, names[name]) for name in IMAGE_OUTPUT_NAMES}
        debug = {name: client.recorder(Float64, names[name], depth=100) for name in ("processing_time_ms", "pipeline_latency_ms")}
        counters = client.recorder(String, names["counters"], depth=5)
        class_list = client.recorder(String, names["class_list"], depth=1, latched=True)
        publisher = client.publisher(CompressedImage if compressed else Image, names[input_key], reliable=reliable)
        started = time.monotonic()
        progress(f"starting the node (log: {node.log_dir}) ...")
        node.start()
        if not wait_until(lambda: publisher.get_subscription_count() > 0, start_timeout, poll=0.1, while_alive=node):
            raise RuntimeError(f"the node did not become ready (exit code {node.process.poll()}):\n{node.log()[-3000:]}")
        report["node_startup_s"] = round(time.monotonic() - started, 2)
        progress(f"node ready after {report['node_startup_s']} s; publishing {len(frames)} frames ({pace} pace)")
        magimg = recorders["magimg"]
        next_time = time.monotonic()
        for index, frame in enumerate(frames):
            message = to_rclpy_image(frame.message)
            if pace == "bag":
                time.sleep(max(0.0, next_time - time.monotonic()))
                next_time += 1.0 / rate
            message.header.stamp = client.node.get_clock().now().to_msg()
            before = len(magimg)
            sent[bags.stamp_to_ns(message.header.stamp)] = (index, time.monotonic_ns(), message)
            publisher.publish(message)
            report["frames_in"] += 1
            if pace == "lockstep":
                done = wait_until(lambda: len(magimg) > before, frame_timeout, while_alive=node)
                progress(f"frame {index + 1}/{len(frames)} " + ("done" if done else f"gave no output in {frame_timeout} s"))
        last = max(sent)  # let the frame in flight come out, then wait for one more counters report
        wait_until(lambda: any(bags.stamp_to_ns(m.header.stamp) == last for m in magimg.messages), frame_timeout,
                   while_alive=node)
        reports_before = len(counters)
        wait_until(lambda: len(counters) > reports_before + 1, 5.0, while_alive=node)
        report["wall_s"] = round(time.monotonic() - started, 2)
    finally:
        report["node_exit_code"] = node.stop()
        client.close()

    outputs = {name: r.items for name, r in recorders.items()}
    out_stamps = [bags.stamp_to_ns(m.header.stamp) for _, m in outputs["magimg"]]
    latencies = [(t - sent[s][1]) / 1e6 for (t, _), s in zip(outputs["magimg"], out_stamps) if s in sent]
    report["frames_out"] = len(set(out_stamps))
    report["dropped"] = report["frames_in"] - report["frames_out"]
    report["outputs_per_kind"] = {name: len(items) for name, items in outputs.items()}
    report["latency_ms"] = percentiles(latencies)  # publish -> MagImg received, measured here
    for name, recorder in debug.items():
        report[f"node_{name}"] = percentiles([m.data for m in recorder.messages])
    report["node_counters"] = json.loads(counters.messages[-1].data) if len(counters) else None
    report["class_list_received"] = bool(len(class_list))

    if out_bag is not None:
        storage = storage or ("mcap" if any(in_bag.glob("*.mcap")) else "sqlite3")
        with bags.BagOutput(out_bag, storage) as out:
            for stamp_ns, (_, _, message) in sorted(sent.items()):
                out.write(topic, frames[0].msgtype, stamp_ns, raw=serialize_message(message))
            for name, items in outputs.items():
                for _, message in items:
                    out.write(bags.OUTPUT_TOPICS[name], bags.IMAGE_TYPE, bags.stamp_to_ns(message.header.stamp),
                              raw=serialize_message(message))
        report["output_bag"], report["messages_written"] = str(out_bag), dict(out.counts)
    if png_dir is not None:
        png_dir = Path(png_dir)
        for name, items in outputs.items():
            for _, message in items:
                index = sent.get(bags.stamp_to_ns(message.header.stamp), (None,))[0]
                if index is not None:
                    array, _ = conversions.image_to_array(message, encodings=conversions.READABLE_ENCODINGS)
                    write_png(png_dir / name / f"{index:06d}.png", bags.png_of(name, array))
        png_dir.mkdir(parents=True, exist_ok=True)
        (png_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        report["png_dir"] = str(png_dir)
    return report


def format_report(report: dict) -> str:
    lat, proc = report.get("latency_ms", {}), report.get("node_processing_time_ms", {})
    return "\n".join([
        f"frames in {report['frames_in']}, out {report['frames_out']}, dropped {report['dropped']} "
        f"({report['pace']} pace, {report['rate_hz']} Hz, {report['input_qos']} input)",
        f"latency (publish -> MagImg received): mean {lat.get('mean')} ms, p50 {lat.get('p50')}, p95 {lat.get('p95')}, "
        f"max {lat.get('max')}",
        f"node processing time: mean {proc.get('mean')} ms, p95 {proc.get('p95')}",
        f"node counters: {report.get('node_counters')}",
    ])


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
    overrides: dict = {"model_path": args.model, "device": args.device}
    overrides = {k: v for k, v in overrides.items() if v}
    for item in args.param:
        name, sep, value = item.partition(":=")
        if not sep:
            parser.error(f"-p expects NAME:=VALUE, got {item!r}")
        overrides[name] = value
    try:
        report = live_replay(args.in_bag, args.out_bag, topic=args.topic, params_file=args.params_file,
                             overrides=overrides, pace=args.pace, rate=args.rate, max_frames=args.max_frames,
                             png_dir=args.png_dir, storage=args.storage, reliable=not args.best_effort)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"live_replay: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
