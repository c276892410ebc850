"""A small scored frame for the model-card tests: a hot person box, MagImg = IKR, generated IR = real IR."""
from __future__ import annotations

import numpy as np

from magicfuse_core.data import Box
from magicfuse_core.evaluation import card

HEIGHT, WIDTH = 32, 48
PERSON_ROWS, PERSON_COLS = (8, 24), (10, 18)


def box(cls: int, rows: tuple[int, int], cols: tuple[int, int], height: int, width: int) -> Box:
    """A YOLO box covering exactly rows[0]..rows[1]-1 and cols[0]..cols[1]-1 of an (height, width) frame."""
    (y0, y1), (x0, x1) = rows, cols
    return Box(cls, (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)


def scored_card_frame(seed: int, weight: np.ndarray | None = None) -> dict:
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 200, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    ir = rng.integers(0, 100, (HEIGHT, WIDTH), dtype=np.uint8)
    ir[PERSON_ROWS[0]:PERSON_ROWS[1], PERSON_COLS[0]:PERSON_COLS[1]] = 230
    ikr = np.clip(clean.astype(int) + rng.integers(-10, 10, clean.shape), 0, 255).astype(np.uint8)
    person = box(0, PERSON_ROWS, PERSON_COLS, HEIGHT, WIDTH)
    return card.score_frame((clean // 3).astype(np.uint8), ikr, np.repeat(ir[..., None], 3, axis=2), magimg=ikr,
                            generated_ir=ir, clean=clean, ir=ir, boxes=[person],
                            seg_labels=np.zeros((HEIGHT, WIDTH), np.uint8), weight=weight)
