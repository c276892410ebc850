"""`magicfuse bag make|replay`: rosbag2 files of camera frames, and offline replay of the node's processing.

  magicfuse bag make IMAGES_DIR OUT_BAG [--topic T] [--rate HZ] [--storage sqlite3|mcap]
      Images of IMAGES_DIR (or of its vis/ folder) as sensor_msgs/Image, one every
      1/rate s, header stamp = bag timestamp; real infrared from IMAGES_DIR/ir/ (same
      file names) on a second topic. rosbag2 version 8 (readable by Humble and later).

  magicfuse bag replay IN_BAG OUT_BAG [--topic T] [--params-file F] [--png-dir D]
      Offline and deterministic: every frame goes through the node's processing with
      the node's parameter file and gives one message of each output kind
      (/magicfuse/output/{magimg,segmentation,segmentation/color,ir,fusion_weight})
      with the frame's header and bag timestamp. --png-dir adds PNGs, report.json and,
      when the bag has real infrared, the evaluation report (eval/report.html).

Needs only `rosbags` (no ROS install). The live counterpart, through the real node
and rclpy, is `python -m magicfuse_ros.live_replay`; `demo_step` runs it for `magicfuse demo`.

The core's `magicfuse` command knows nothing of ROS: this package registers the
`bag` sub-command and the ROS step of `magicfuse demo` through the entry-point
groups `magicfuse.commands` and `magicfuse.demo_steps` (setup.py).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from magicfuse_core.commands.common import add_model_options


def register(sub) -> None:
    p = sub.add_parser("bag", help="make rosbag2 files from images; replay them through the pipeline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="bag_command", required=True)

    make = verbs.add_parser("make", help="images folder -> rosbag2 of sensor_msgs/Image")
    make.add_argument("images_dir", type=Path, help="folder of images (or with vis/ and optional ir/ sub-folders)")
    make.add_argument("out_bag", type=Path, help="output bag folder (must not exist)")
    make.add_argument("--topic", default="/camera/image_raw", help="image topic (default: /camera/image_raw)")
    make.add_argument("--ir-topic", default="/camera/ir/image_raw", help="topic of the real infrared, when ir/ exists")
    make.add_argument("--rate", type=float, default=10.0, help="frames per second (default: 10)")
    make.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3", help="storage plugin (default: sqlite3)")
    make.add_argument("--frame-id", default="camera", help="header frame_id (default: camera)")
    make.add_argument("--encoding", choices=("rgb8", "bgr8", "mono8"), default="rgb8")
    make.add_argument("--start", type=float, default=None, help="stamp of the first frame, in seconds since the epoch "
                                                                "(default: now)")
    make.add_argument("--max-frames", type=int, default=None)
    make.set_defaults(func=run_make)

    replay = verbs.add_parser("replay", help="bag -> pipeline -> bag of the node's outputs (offline)")
    replay.add_argument("in_bag", type=Path)
    replay.add_argument("out_bag", type=Path, help="output bag folder (must not exist)")
    replay.add_argument("--topic", default=None, help="image topic to process (default: the bag's visible image topic)")
    replay.add_argument("--params-file", type=Path, default=None,
                        help="node parameter file (default: the package's config/magicfuse.param.yaml)")
    replay.add_argument("--storage", choices=("sqlite3", "mcap"), default=None, help="default: the input bag's")
    replay.add_argument("--png-dir", type=Path, default=None, help="also write PNGs, report.json and the evaluation")
    replay.add_argument("--no-eval", action="store_true", help="skip the evaluation report even with real infrared")
    add_model_options(replay)
    replay.set_defaults(func=run_replay)


def run_make(args) -> int:
    from .bag import make_bag

    start_ns = None if args.start is None else int(round(args.start * 1e9))
    try:
        made = make_bag(args.images_dir, args.out_bag, topic=args.topic, ir_topic=args.ir_topic, rate=args.rate,
                        storage=args.storage, frame_id=args.frame_id, encoding=args.encoding, start_ns=start_ns,
                        max_frames=args.max_frames)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from None
    ir = f", {made.ir_frames} infrared on {made.ir_topic}" if made.ir_frames else ""
    print(f"wrote {made.path}: {made.frames} frames on {made.topic}{ir} ({args.storage}, {args.rate:g} Hz)")
    return 0


def replay_overrides(args) -> dict:
    """Parameter overrides from the shared model options; unset options keep the parameter file's values."""
    overrides = {"device": args.device, "backend": args.backend}
    model = args.model if args.model is not None else os.environ.get("MAGICFUSE_MODEL")
    if model:
        overrides["model_path"] = str(model)
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.size is not None:
        overrides["processing_height"], overrides["processing_width"] = args.size
    if args.tau is not None:
        overrides["tau"] = args.tau
    if args.thermal_classes:
        overrides["thermal_classes"] = [c.strip() for c in args.thermal_classes.split(",") if c.strip()]
    return overrides


def run_replay(args) -> int:
    from .bag import replay_bag
    from .params import load_param_file

    params = load_param_file(args.params_file, replay_overrides(args))
    try:
        report = replay_bag(args.in_bag, args.out_bag, params=params, topic=args.topic, storage=args.storage,
                            png_dir=args.png_dir, evaluate=not args.no_eval)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from None
    summary = {k: report[k] for k in ("frames_in", "frames_out", "mean_processing_ms", "cut_short", "messages_written")}
    print(json.dumps(summary, indent=1))
    return 0 if report["frames_out"] == report["frames_in"] else 1


def demo_step(samples_dir: Path, out_dir: Path, device: str) -> int:
    """The ROS half of `magicfuse demo`: a bag of the sample frames through the real node."""
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("rclpy") is None:
        print("[demo] ROS step skipped: rclpy is not installed (pip install -r requirements-ros.txt)", flush=True)
        return 0
    print(f"[demo] ROS: bag from the frames, the real node through rclpy -> {out_dir}", flush=True)
    return demo(samples_dir, out_dir, device=device)


def demo(samples_dir: str | Path, out_dir: str | Path, device: str = "cpu", max_frames: int | None = None,
         model: str | None = None) -> int:
    """`make demo`'s ROS part: bag from the sample frames, the node on it live, output bag + PNGs + report."""
    import shutil
    import sys

    from magicfuse_core.paths import default_model_dir

    from . import bag as bags
    from .live_replay import format_report, live_replay  # noqa: PLC0415 (rclpy loads only here)

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
