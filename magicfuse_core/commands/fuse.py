"""`magicfuse fuse INPUT... --out DIR`: run MagicFuse over image files and folders.

Writes, under --out, one PNG per input frame with the input's name (suffix .png):
magimg/, ikr/ (restored visible), ckg/ (generated infrared), seg/ (MFNet colour
palette) and seg_labels/ (uint8 class ids). `--outputs magimg,seg` (any subset of
magimg, ikr, ckg, seg) computes and writes only those: the decoder runs once per
image kind asked for. Unreadable or non-image files are reported and skipped; the
rest are processed.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from .common import add_model_options, fuse_options, load_pipeline

CLI_OUTPUTS = ("magimg", "ikr", "ckg", "seg")  # "seg" writes seg/ and seg_labels/


def parse_cli_outputs(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(o.strip() for o in text.split(",") if o.strip()))
    unknown = [o for o in chosen if o not in CLI_OUTPUTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"--outputs takes a comma-separated subset of {','.join(CLI_OUTPUTS)}, "
                                         f"got {text!r}")
    return chosen


def register(sub) -> None:
    p = sub.add_parser("fuse", help="fuse visible images into MagImg + segmentation",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (not recursive)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="base seed; frame i of the sorted inputs uses seed + i")
    p.add_argument("--batch", type=int, default=1, help="frames per forward pass (same-size frames are batched)")
    p.add_argument("--outputs", type=parse_cli_outputs, default=CLI_OUTPUTS, metavar="LIST",
                   help=f"what to compute and write, a subset of {','.join(CLI_OUTPUTS)} (default: all)")
    add_model_options(p)
    p.set_defaults(func=run)


def collect_inputs(inputs: list[Path]) -> tuple[list[Path], list[str]]:
    """Image paths to process, sorted, and one message per skipped entry."""
    from ..imageio import is_image_file

    images, skipped = set(), []
    for entry in inputs:
        if entry.is_dir():
            for p in sorted(entry.iterdir()):
                if not p.is_file():
                    continue
                if is_image_file(p):
                    images.add(p)
                else:
                    skipped.append(f"{p}: not an image file")
        elif entry.is_file():
            images.add(entry)
        else:
            skipped.append(f"{entry}: no such file or folder")
    return sorted(images), skipped


def run(args) -> int:
    from ..imageio import read_rgb, write_png
    from ..palette import colorize

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    paths, skipped = collect_inputs(args.inputs)
    for msg in skipped:
        print(f"skipped {msg}", file=sys.stderr)
    if not paths:
        print("no images to process", file=sys.stderr)
        return 1
    pipe = load_pipeline(args)
    opts = fuse_options(args)
    seeds = {p: args.seed + i for i, p in enumerate(paths)}  # independent of --batch

    # Group frames by size so a batch always stacks; read lazily to bound memory.
    done, failed = 0, 0
    pending: dict[tuple, list] = defaultdict(list)
    names_seen: dict[str, Path] = {}
    bar = tqdm(total=len(paths), unit="frame", desc="fuse")

    def flush(key):
        nonlocal done
        group = pending.pop(key)
        res = pipe([im for _, im in group], seed=[seeds[p] for p, _ in group], outputs=args.outputs, **opts)
        for j, (p, _) in enumerate(group):
            name = p.stem + ".png"
            for kind in ("magimg", "ikr", "ckg"):
                if kind in args.outputs:
                    write_png(args.out / kind / name, getattr(res, kind)[j])
            if "seg" in args.outputs:
                write_png(args.out / "seg" / name, colorize(res.seg_labels[j]))
                write_png(args.out / "seg_labels" / name, res.seg_labels[j])
        done += len(group)
        bar.update(len(group))

    for p in paths:
        if p.stem in names_seen:
            print(f"skipped {p}: output name {p.stem}.png already used by {names_seen[p.stem]}", file=sys.stderr)
            failed += 1
            bar.update(1)
            continue
        try:
            image = read_rgb(p)
        except (ValueError, FileNotFoundError) as exc:
            print(f"skipped {exc}", file=sys.stderr)
            failed += 1
            bar.update(1)
            continue
        names_seen[p.stem] = p
        key = image.shape
        pending[key].append((p, image))
        if len(pending[key]) >= args.batch:
            flush(key)
    for key in list(pending):
        flush(key)
    bar.close()
    folders = [d for o in args.outputs for d in (("seg", "seg_labels") if o == "seg" else (o,))]
    print(f"fused {done} frame(s) into {args.out} ({', '.join(folders)}); skipped {failed + len(skipped)}")
    return 0 if done else 1
