"""Tiny registered vis/ir frames with a warm person box: the training tests' data."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from magicfuse_core.imageio import write_png

SIZE = 48  # frames are SIZE x SIZE; crops 32 x 32 -> latents 8 x 8


def make_dataset(root: Path, n: int = 2) -> Path:
    """n registered vis/ir frames with a warm 'person' box (a bright IR blob) and its YOLO box."""
    rng = np.random.default_rng(0)
    for sub in ("vis", "ir", "det/infrared"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    names = []
    for i in range(n):
        name = f"frame{i:02d}"
        vis = np.stack([yy, xx, 0.5 * (yy + xx)], -1) * 200 + rng.uniform(0, 40, (SIZE, SIZE, 3))
        ir = np.full((SIZE, SIZE), 40.0) + rng.uniform(0, 20, (SIZE, SIZE))
        ir[12:36, 16 + 4 * i:28 + 4 * i] = 230
        write_png(root / "vis" / f"{name}.png", vis.clip(0, 255).astype(np.uint8))
        write_png(root / "ir" / f"{name}.png", ir.clip(0, 255).astype(np.uint8))
        (root / "det/infrared" / f"{name}.txt").write_text(f"0 {(22 + 4 * i) / SIZE:.4f} 0.5 {12 / SIZE:.4f} 0.5\n")
        names.append(name)
    (root / "train.txt").write_text("\n".join(names) + "\n")
    return root
