"""`magicfuse eval`: score fusion results (and baselines) on a folder of frames and write a report.

Example (MSRS val split, baselines only):

    magicfuse eval --vis ../shared/data/msrs/vis --ir ../shared/data/msrs/ir \
        --names ../shared/data/msrs/val.txt --out outputs/eval_msrs_val

Outputs in --out: metrics.json, per_frame.csv, metrics_bars.png, report.html.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _name_dir(text: str) -> tuple[str, Path]:
    """argparse type for NAME=DIR."""
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, Path(folder)


def _to_dict(pairs: list[tuple[str, Path]] | None, option: str) -> dict[str, Path]:
    """[(name, dir)] -> ordered dict, rejecting a name given twice."""
    out: dict[str, Path] = {}
    for name, folder in pairs or []:
        if name in out:
            raise ValueError(f"{option} {name}= given twice")
        out[name] = folder
    return out


def register(subparsers) -> None:
    """Add the `eval` sub-command."""
    p = subparsers.add_parser(
        "eval",
        help="score fused results and baselines, write metrics.json, CSV and an HTML report",
        description="Fusion metrics (Tang's convention, see docs/METRICS.md) of every --result folder and of three "
                    "baselines (visible, avg_fusion, maxlum_fusion) against the source pair (clean or input visible, "
                    "real IR); generated-IR scores; segmentation mIoU or a person-box proxy. Frames are matched by "
                    "file stem; bad frames are reported and skipped.",
    )
    p.add_argument("--vis", type=Path, required=True, metavar="DIR", help="folder of input visible frames (what a method sees)")
    p.add_argument("--ir", type=Path, required=True, metavar="DIR", help="folder of real infrared frames (source B)")
    p.add_argument("--clean-vis", type=Path, metavar="DIR", help="folder of clean visible frames: source A instead of --vis")
    p.add_argument("--result", type=_name_dir, action="append", metavar="NAME=DIR",
                   help="a method's outputs (repeatable); a result named 'ckg' is scored as generated IR")
    p.add_argument("--generated-ir", action="append", default=[], metavar="NAME",
                   help="score result NAME as generated infrared vs the real IR (PSNR/SSIM/CC) instead of as a fusion")
    p.add_argument("--seg", type=_name_dir, action="append", metavar="NAME=DIR",
                   help="folder of predicted MFNet class-id PNGs (repeatable)")
    p.add_argument("--names", type=Path, metavar="FILE", help="file with one frame stem per line (default: every image in --vis)")
    p.add_argument("--labels", type=Path, metavar="DIR", help="folder of MFNet label PNGs (ids 0..8, 255 ignored): mIoU of --seg")
    p.add_argument("--det", type=Path, metavar="DIR",
                   help="folder of YOLO boxes NAME.txt ('class cx cy w h', 0 person); a folder holding infrared/ "
                        "(the MSRS det/ layout) uses that: weak person-box proxy for --seg")
    p.add_argument("--out", type=Path, default=Path("outputs/eval"), metavar="DIR", help="output folder (default: outputs/eval)")
    p.add_argument("--max-grid", type=int, default=6, metavar="N", help="sample frames in the report (0: none)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the EvalConfig from the parsed options, run it and print the means. Returns 0."""
    from magicfuse_core.evaluation import EvalConfig, format_means, run_evaluation

    config = EvalConfig(
        vis=args.vis, ir=args.ir, out=args.out, clean_vis=args.clean_vis,
        results=_to_dict(args.result, "--result"), generated_ir=tuple(args.generated_ir),
        seg=_to_dict(args.seg, "--seg"), names_file=args.names, labels=args.labels, det=args.det,
        max_grid=args.max_grid, jobs=args.jobs, progress=not args.no_progress,
        command_line="magicfuse " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None,
    )
    result = run_evaluation(config)
    frames = result["frames"]
    print(f"scored {frames['scored']} of {frames['requested']} frames"
          + (f" ({len(frames['skipped'])} skipped)" if frames["skipped"] else ""))
    print(format_means(result))
    for name, values in result.get("ir_similarity", {}).get("mean", {}).items():
        print(f"generated IR {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    for name, values in result.get("segmentation", {}).items():
        print(f"segmentation {name}: mIoU {values['mIoU']:.4f}")
    for name, values in result.get("box_proxy", {}).get("scores", {}).items():
        print(f"segmentation {name}: person-box coverage {values['person_box_coverage']:.4f}, "
              f"person-mask precision {values['person_mask_precision']:.4f}")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0
