"""Soak benchmark of the real ROS 2 node: a 30 Hz camera for minutes, 10 % malformed messages.

    python benchmarks/soak_node.py                      # 10 min, bundled model, CPU
    python benchmarks/soak_node.py --minutes 3 --json outputs/soak.json
    python benchmarks/soak_node.py --model random-tiny --minutes 1 --device cpu

Starts `magicfuse_ros.node` as a process (bundled model unless --model), publishes
at --rate Hz a mix of valid frames of several sizes and encodings (rgb8, bgr8,
rgba8, mono8, mono16, JPEG and PNG CompressedImage) and --malformed of malformed
messages (truncated data, unknown encoding, zero size, undecodable JPEG), reads the
node's own counters and timings from ~/debug, samples the node's RSS, and at the
end sends SIGINT while a frame is in the pipeline and times the exit.

Reports: messages sent; the node's received / processed / dropped / invalid /
failed (which must add up once the node is idle); processing time and latency
percentiles; RSS after the node's own warm-up, at the baseline (--warmup-s into
the run, once every size has been through the pipeline) and at the end (growth from
the baseline must stay under --max-rss-growth-mb); shutdown time. Exit 1 if a check fails. Not a test: the
figures go into docs/ROS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicfuse_ros.live_replay import percentiles  # noqa: E402
from magicfuse_ros.node_process import NodeProcess, RosClient, default_domain_id, wait_until  # noqa: E402
from magicfuse_ros.outputs import topics  # noqa: E402

DEFAULT_SIZES = ("64x80", "96x128", "120x160")
VALID_KINDS = ("rgb8", "bgr8", "rgba8", "mono8", "mono16", "jpeg", "png")
MALFORMED_KINDS = ("truncated", "unknown_encoding", "zero_size", "bad_jpeg")


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def make_message(kind: str, rgb: np.ndarray, stamp, frame_id: str):
    """One input message of `kind` (a VALID_KINDS or MALFORMED_KINDS entry) from an (H, W, 3) uint8 picture."""
    import cv2
    from sensor_msgs.msg import CompressedImage, Image

    from magicfuse_ros import conversions

    h, w = rgb.shape[:2]
    if kind in ("jpeg", "png", "bad_jpeg"):
        ok, data = cv2.imencode("." + ("png" if kind == "png" else "jpg"), rgb[:, :, ::-1])
        payload = b"\xff\xd8 not a jpeg" if kind == "bad_jpeg" else data.tobytes()
        msg = CompressedImage(format="png" if kind == "png" else "jpeg", data=payload)
    else:
        if kind == "mono16":
            grey = (rgb[:, :, 1].astype(np.uint16) * 257)
            msg = Image(height=h, width=w, encoding="mono16", is_bigendian=0, step=w * 2, data=grey.astype("<u2").tobytes())
        elif kind == "rgba8":
            rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
            msg = Image(height=h, width=w, encoding="rgba8", is_bigendian=0, step=w * 4, data=rgba.tobytes())
        elif kind == "mono8":
            msg = Image(**conversions.image_fields(np.ascontiguousarray(rgb[:, :, 1]), "mono8"))
        else:
            msg = Image(**conversions.image_fields(rgb, "bgr8" if kind == "bgr8" else "rgb8"))
        if kind == "truncated":
            msg.data = bytes(msg.data)[:-7]
        elif kind == "unknown_encoding":
            msg.encoding = "yuv422"
        elif kind == "zero_size":
            msg.height = msg.width = msg.step = 0
            msg.data = b""
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    return msg


def soak(args) -> dict:
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Float64, String

    rng = np.random.default_rng(args.seed)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    pictures = {size: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in sizes}
    namespace = f"/soak_{os.getpid()}"
    names = topics(namespace)
    domain = default_domain_id()
    overrides = {"model_path": args.model, "device": args.device, "subscribe_compressed": True,
                 "cpu_threads": args.cpu_threads, "max_input_pixels": max(h * w for h, w in sizes)}
    node = NodeProcess(namespace=namespace, overrides=overrides, domain_id=domain)
    client = RosClient("magicfuse_soak", domain)
    report: dict = {"model": args.model, "device": args.device, "rate_hz": args.rate, "minutes": args.minutes,
                    "sizes": args.sizes, "malformed_fraction": args.malformed,
                    "sent": {"valid": 0, "malformed": 0, "malformed_compressed": 0}}
    try:
        magimg = client.recorder(Image, names["magimg"], depth=50)
        processing = client.recorder(Float64, names["processing_time_ms"], depth=1000)
        latency = client.recorder(Float64, names["pipeline_latency_ms"], depth=1000)
        counters = client.recorder(String, names["counters"], depth=5)
        raw_pub = client.publisher(Image, names["input"], reliable=True, depth=5)
        compressed_pub = client.publisher(CompressedImage, names["input_compressed"], reliable=True, depth=5)
        started = time.monotonic()
        node.start()
        if not wait_until(lambda: raw_pub.get_subscription_count() > 0 and compressed_pub.get_subscription_count() > 0,
                          600.0, poll=0.2, while_alive=node):
            raise RuntimeError(f"the node did not become ready:\n{node.log()[-3000:]}")
        report["startup_s"] = round(time.monotonic() - started, 1)
        pid = node.process.pid
        report["rss_mb"] = {"after_startup": round(rss_mb(pid), 1)}
        rss_samples = []
        baseline_at = time.monotonic() + min(args.warmup_s, args.minutes * 30.0)
        period = 1.0 / args.rate
        end = time.monotonic() + args.minutes * 60.0
        next_send, next_sample, index = time.monotonic(), time.monotonic(), 0
        print(f"node ready in {report['startup_s']} s (RSS {report['rss_mb']['after_startup']} MB); "
              f"publishing at {args.rate} Hz for {args.minutes} min", flush=True)
        while time.monotonic() < end:
            time.sleep(max(0.0, next_send - time.monotonic()))
            next_send += period
            malformed = rng.random() < args.malformed
            kind = rng.choice(MALFORMED_KINDS if malformed else VALID_KINDS)
            size = sizes[index % len(sizes)]
            msg = make_message(str(kind), pictures[size], client.node.get_clock().now().to_msg(), f"soak_{index}")
            (compressed_pub if isinstance(msg, CompressedImage) else raw_pub).publish(msg)
            report["sent"]["malformed" if malformed else "valid"] += 1
            report["sent"]["malformed_compressed"] += int(kind == "bad_jpeg")
            index += 1
            if "baseline" not in report["rss_mb"] and time.monotonic() >= baseline_at:
                report["rss_mb"]["baseline"] = round(rss_mb(pid), 1)
            if time.monotonic() >= next_sample:
                rss_samples.append(rss_mb(pid))
                next_sample += 10.0
                print(f"  {index} sent, {len(magimg)} MagImg received, RSS {rss_samples[-1]:.1f} MB", flush=True)
        # Idle: the frame in the pipeline comes out, then the counters must add up.
        def settled() -> bool:
            if not len(counters):
                return False
            c = json.loads(counters.messages[-1].data)
            return c["received"] == c["invalid"] + c["processed"] + c["failed"] + sum(
                c[k] for k in ("dropped_superseded", "dropped_stale", "dropped_stopped"))
        wait_until(settled, 300.0, poll=0.5, while_alive=node)
        time.sleep(2.0)
        node_counters = json.loads(counters.messages[-1].data)
        report["rss_mb"].update(end=round(rss_mb(pid), 1), max=round(max(rss_samples + [rss_mb(pid)]), 1))
        report["rss_mb"]["growth"] = round(report["rss_mb"]["end"] - report["rss_mb"]["baseline"], 1)
        # Shutdown mid-frame: one more frame of the largest size, SIGINT well before it can be done
        # (the node's shutdown counters below say whether it was still in the pipeline).
        raw_pub.publish(make_message("rgb8", pictures[sizes[-1]], client.node.get_clock().now().to_msg(), "last"))
        typical_s = float(np.median([m.data for m in processing.messages] or [400.0])) / 1000.0
        time.sleep(min(0.5, max(0.1, typical_s / 4.0)))  # the message arrives, the frame starts, far from done
        stop_started = time.monotonic()
        node.process.send_signal(signal.SIGINT)
        exit_code = node.wait(60.0)
        report["shutdown_s"] = round(time.monotonic() - stop_started, 2)
        report["node_exit_code"] = exit_code
    finally:
        node.stop()
        client.close()
    totals = {k: node_counters[k] for k in ("received", "processed", "invalid", "failed", "dropped_superseded",
                                            "dropped_stale", "dropped_stopped", "cut_short")}
    report["node_counters"] = totals
    report["counters_add_up"] = totals["received"] == (totals["processed"] + totals["invalid"] + totals["failed"]
                                                       + totals["dropped_superseded"] + totals["dropped_stale"]
                                                       + totals["dropped_stopped"])
    report["processing_ms"] = percentiles([m.data for m in processing.messages])
    report["pipeline_latency_ms"] = percentiles([m.data for m in latency.messages])
    report["magimg_received"] = len(magimg)
    log = node.log()
    report["node_log"] = str(node.log_dir / "node.log")
    report["traceback_in_log"] = "Traceback" in log
    report["counter_lines_at_shutdown"] = log.count("counters at shutdown")
    final = re.search(r"counters at shutdown: (\{.*\})", log)
    report["shutdown_counters"] = json.loads(final.group(1)) if final else None
    report["shutdown_was_mid_frame"] = bool(final) and report["shutdown_counters"]["dropped_stopped"] == 1
    report["checks"] = {
        "counters add up": report["counters_add_up"],
        "every message received": totals["received"] == report["sent"]["valid"] + report["sent"]["malformed"],
        # Raw images are checked in the callback; compressed ones when decoded, so a bad one may be superseded first.
        "malformed counted invalid": (report["sent"]["malformed"] - report["sent"]["malformed_compressed"]
                                      <= totals["invalid"] <= report["sent"]["malformed"]),
        f"RSS growth < {args.max_rss_growth_mb} MB": report["rss_mb"]["growth"] < args.max_rss_growth_mb,
        "no failed frame": totals["failed"] == 0,
        "clean exit": exit_code == 0 and not report["traceback_in_log"] and report["counter_lines_at_shutdown"] == 1,
        "shutdown mid-frame < 2 s": report["shutdown_was_mid_frame"] and report["shutdown_s"] < 2.0,
    }
    return report


def main(argv: list[str] | None = None) -> int:
    from magicfuse_core.paths import default_model_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="publishing time (default 10)")
    parser.add_argument("--rate", type=float, default=30.0, help="messages per second (default 30)")
    parser.add_argument("--model", default=None, help="model_path (default: the bundled model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cpu-threads", type=int, default=0, help="the node's cpu_threads (default 0: PyTorch's)")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="HxW of the valid frames, cycled")
    parser.add_argument("--malformed", type=float, default=0.1, help="fraction of malformed messages (default 0.1)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0,
                        help="allowed RSS growth from the baseline to the end (default 50)")
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="the RSS baseline is taken this long into the run (at most half of it), once every "
                             "frame size and encoding has been through the node (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.model is None:
        found = default_model_dir()
        if found is None:
            parser.error("no bundled model found; pass --model PATH (or random-tiny)")
        args.model = str(found)
    report = soak(args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    failed = [name for name, ok in report["checks"].items() if not ok]
    print("checks: " + ("all passed" if not failed else "FAILED: " + ", ".join(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
