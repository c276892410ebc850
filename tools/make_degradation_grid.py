#!/usr/bin/env python3
"""Make docs/img/degradations.png: one MSRS val frame under each degradation kind and a composition.

Usage: python tools/make_degradation_grid.py [--frame 00375D] [--data ../shared/data/msrs] [--out docs/img/degradations.png]

The frame is first reduced to 320x240 and then degraded, so noise and JPEG
blocks appear at their true pixel scale in the figure. Each tile uses a fixed,
mid-range spec (written on the tile); the last ones are `degrade_seeded(frame, seed, "random")` for a few seeds.
The PNG is palette-quantised to stay small (< 400 KB).
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from magicfuse_core import degrade
from magicfuse_core.color import to_uint8
from magicfuse_core.imageio import read_rgb

REPO = Path(__file__).resolve().parents[1]
TILE_W, TILE_H = 320, 240
COLUMNS = 4


def example_specs(composition_seeds: list[int]) -> list[tuple[str, degrade.Degradation]]:
    """(title, spec) per tile: one representative setting per kind, then seeded random compositions."""
    step = degrade.DegradationStep
    tiles = [
        ("clean", degrade.Degradation()),
        ("lowlight", degrade.Degradation((step("lowlight", {"exposure": 0.12, "gamma": 1.2, "full_well": 600.0,
                                                             "read_sigma": 0.005}),), noise_seed=1)),
        ("haze", degrade.Degradation((step("haze", {"beta": 1.8, "airlight": 0.85, "tint": [0.0, 0.01, 0.02],
                                                     "depth_noise": 0.15, "horizon": 0.45}),), noise_seed=2)),
        ("noise", degrade.Degradation((step("noise", {"sigma": 0.06}),), noise_seed=3)),
        ("blur gaussian", degrade.Degradation((step("blur", {"type": "gaussian", "sigma": 1.8}),))),
        ("blur motion", degrade.Degradation((step("blur", {"type": "motion", "length": 11.0, "angle": 20.0}),))),
        ("jpeg", degrade.Degradation((step("jpeg", {"quality": 12}),))),
    ]
    for seed in composition_seeds:
        # The spec depends on the seed only, not on the image.
        _, spec = degrade.degrade_seeded(np.zeros((16, 16, 3), np.float32), seed, "random", return_spec=True)
        tiles.append((f"random composition, seed {seed}", spec))
    return tiles


def caption(spec: degrade.Degradation) -> list[str]:
    """Short lines describing a spec's parameters, for the tile."""
    lines = []
    for s in spec.steps:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in s.params.items() if k != "tint")
        lines.extend(textwrap.wrap(f"{s.kind}: {params}", width=58, subsequent_indent="  "))
    return lines


def label(tile: np.ndarray, title: str, lines: list[str]) -> np.ndarray:
    """Write the title and parameter lines on a dark band at the top of a uint8 RGB tile."""
    tile = tile.copy()
    band = 18 + 12 * len(lines)
    tile[:band] = (tile[:band] * 0.35).astype(np.uint8)
    cv2.putText(tile, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    for i, line in enumerate(lines):
        cv2.putText(tile, line, (4, 28 + 12 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (230, 230, 120), 1, cv2.LINE_AA)
    return tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "msrs")
    parser.add_argument("--frame", default="00375D", help="MSRS val frame name")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 3, 6, 11, 12],
                        help="seeds of the random composition tiles")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "degradations.png")
    args = parser.parse_args()

    frame = read_rgb(args.data / "vis" / f"{args.frame}.png")
    small = cv2.resize(frame, (TILE_W, TILE_H), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    tiles = []
    for title, spec in example_specs(args.seeds):
        tiles.append(label(to_uint8(degrade.apply(small, spec)), title, caption(spec)))
    rows = [np.concatenate(tiles[i:i + COLUMNS], axis=1) for i in range(0, len(tiles), COLUMNS)]
    grid = np.concatenate(rows, axis=0)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Palette quantisation keeps the noisy tiles from blowing up the PNG size.
    Image.fromarray(grid).quantize(colors=96, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB), frame {args.frame}")


if __name__ == "__main__":
    main()
