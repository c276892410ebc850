"""Options shared by the sub-commands that run the pipeline."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..backends.registry import BACKENDS, DEFAULT_BACKEND


def parse_size(text: str) -> tuple[int, int]:
    """'240x320' -> (240, 320) as (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH, e.g. 240x320, got {text!r}") from None
    if h < 4 or w < 4:
        raise argparse.ArgumentTypeError(f"size must be at least 4x4, got {text!r}")
    return h, w


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None,
                   help="model folder in our format (default: $MAGICFUSE_MODEL or the bundled models/demo); "
                        "'random-tiny' runs untrained tiny networks")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default: cpu)")
    p.add_argument("--backend", default=DEFAULT_BACKEND,
                   help=f"{' | '.join(BACKENDS)}, optionally NAME:KEY=VALUE,... (default: {DEFAULT_BACKEND}: "
                        "ONNX Runtime on CPU, with the step networks in torch bf16 where the CPU computes bf16 "
                        "natively; the torch fast path on CUDA)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    p.add_argument("--size", type=parse_size, default=None, metavar="HxW",
                   help="inference size; outputs are resized back (default: the model's recorded size, else native)")
    p.add_argument("--tau", type=float, default=None, help="weight cap on thermal classes (default: the model's)")
    p.add_argument("--thermal-classes", default=None,
                   help="comma-separated MFNet classes treated as thermal, e.g. person,car (default: the model's)")


def load_pipeline(args):
    """The pipeline the options describe (magicfuse_core.pipeline.load_pipeline)."""
    from ..pipeline import load_pipeline as load  # noqa: PLC0415 (torch loads only for commands that fuse)

    return load(None if args.model is None else str(args.model), device=args.device, backend=args.backend,
                steps=args.steps, size=args.size or "auto")


def fuse_options(args) -> dict:
    opts = {}
    if args.tau is not None:
        opts["tau"] = args.tau
    if args.thermal_classes:
        opts["thermal_classes"] = [c.strip() for c in args.thermal_classes.split(",") if c.strip()]
    return opts
