"""`magicfuse demo`: the bundled model on the bundled frames (what `make demo` runs).

1. `magicfuse fuse` over samples/msrs/vis -> OUT/fuse/{magimg,ikr,ckg,seg,seg_labels}.
2. Every step other installed packages register in the entry-point group
   `magicfuse.demo_steps` (`step(samples_dir, out_dir, device) -> exit code`), into
   OUT/<step name>/. The ROS package registers `ros`: a rosbag2 of the frames, the
   real node run on it through rclpy (live replay), and the output bag + PNGs.
"""
from __future__ import annotations

import argparse
from importlib.metadata import entry_points
from pathlib import Path

from ..paths import find_data


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the bundled model on the bundled sample frames",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/demo"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-ros", action="store_true", help="skip the ROS step even when it is installed")
    p.set_defaults(func=run)


DEMO_STEP_GROUP = "magicfuse.demo_steps"


def run(args) -> int:
    from ..cli import main as cli_main

    samples = find_data("samples/msrs")
    if samples is None:
        raise FileNotFoundError("bundled sample frames (samples/msrs) not found")
    steps = [] if args.no_ros else sorted(entry_points(group=DEMO_STEP_GROUP), key=lambda ep: ep.name)
    total = 1 + len(steps)
    print(f"[demo] 1/{total} magicfuse fuse {samples / 'vis'} -> {args.out / 'fuse'}", flush=True)
    rc = cli_main(["fuse", str(samples / "vis"), "--out", str(args.out / "fuse"), "--device", args.device])
    for n, ep in enumerate(steps, start=2):
        if rc:
            break
        print(f"[demo] {n}/{total} {ep.name}", flush=True)
        rc = int(ep.load()(samples, args.out / ep.name, args.device) or 0)
    return rc
