"""Options and model loading shared by the sub-commands that run the pipeline."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..paths import default_model_dir

RANDOM_TINY_SIZE = (120, 160)


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
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--backend", default="torch", help="torch | torch-compiled | onnxruntime | tensorrt (default: torch)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's, 25)")
    p.add_argument("--size", type=parse_size, default=None, metavar="HxW",
                   help="inference size; outputs are resized back (default: the model's recorded size, else native)")
    p.add_argument("--tau", type=float, default=None, help="weight cap on thermal classes (default: the model's, 0.4)")
    p.add_argument("--thermal-classes", default=None,
                   help="comma-separated MFNet classes treated as thermal, e.g. person,car (default: the model's)")


def load_pipeline(args):
    """Build the pipeline the options describe; say plainly when the weights are untrained."""
    from ..pipeline import MagicFusePipeline

    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    model_dir = args.model if args.model is not None else default_model_dir()
    if model_dir is None or str(model_dir) == "random-tiny":
        # Untrained nets show only the plumbing: run them small unless told otherwise.
        pipe = MagicFusePipeline.random("tiny", seed=0, device=args.device, steps=args.steps,
                                        inference_size=args.size or RANDOM_TINY_SIZE)
        why = "no bundled model found" if model_dir is None else "--model random-tiny"
        print(f"WARNING: the weights are UNTRAINED (random tiny networks, {why}): outputs show the plumbing, "
              "not MagicFuse's quality.", file=sys.stderr)
        return pipe
    pipe = MagicFusePipeline.from_pretrained(model_dir, device=args.device, backend=args.backend, steps=args.steps,
                                             inference_size=args.size or "auto")
    if not pipe.trained:
        print(f"WARNING: the weights in {model_dir} are UNTRAINED.", file=sys.stderr)
    return pipe


def fuse_options(args) -> dict:
    opts = {}
    if args.tau is not None:
        opts["tau"] = args.tau
    if args.thermal_classes:
        opts["thermal_classes"] = [c.strip() for c in args.thermal_classes.split(",") if c.strip()]
    return opts
