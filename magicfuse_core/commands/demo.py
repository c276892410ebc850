"""`magicfuse demo`: the bundled model on the bundled frames (what `make demo` runs).

1. `magicfuse fuse` over samples/msrs/vis -> OUT/fuse/{magimg,ikr,ckg,seg,seg_labels}.
2. When ROS 2 (rclpy) is importable: a rosbag2 of the frames, the real node run on
   it through rclpy (live replay), and the output bag + PNGs -> OUT/ros/.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from ..paths import find_data


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the bundled model on the bundled sample frames",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/demo"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-ros", action="store_true", help="skip the ROS part even when rclpy is available")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..cli import main as cli_main

    samples = find_data("samples/msrs")
    if samples is None:
        raise FileNotFoundError("bundled sample frames (samples/msrs) not found")
    print(f"[demo] 1/2 magicfuse fuse {samples / 'vis'} -> {args.out / 'fuse'}", flush=True)
    rc = cli_main(["fuse", str(samples / "vis"), "--out", str(args.out / "fuse"), "--device", args.device])
    if rc:
        return rc
    if args.no_ros:
        return 0
    if importlib.util.find_spec("rclpy") is None or importlib.util.find_spec("magicfuse_ros.live_replay") is None:
        print("[demo] 2/2 skipped: rclpy is not installed (pip install -r requirements-ros.txt)", file=sys.stderr)
        return 0
    from magicfuse_ros.live_replay import demo as ros_demo

    print(f"[demo] 2/2 ROS: bag from the frames, the real node through rclpy -> {args.out / 'ros'}", flush=True)
    return int(ros_demo(samples, args.out / "ros", device=args.device) or 0)
