"""MFNet semantic classes (the 9 the paper segments) and their colour palette."""
from __future__ import annotations

import numpy as np

MFNET_CLASSES: tuple[str, ...] = (
    "unlabelled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump",
)
NUM_CLASSES = len(MFNET_CLASSES)

# The palette used by the MFNet/MSRS segmentation papers (class id -> RGB).
MFNET_PALETTE = np.array(
    [
        [0, 0, 0],        # unlabelled
        [64, 0, 128],     # car
        [64, 64, 0],      # person
        [0, 128, 192],    # bike
        [0, 0, 192],      # curve
        [128, 128, 0],    # car_stop
        [64, 64, 128],    # guardrail
        [192, 128, 128],  # color_cone
        [192, 64, 0],     # bump
    ],
    dtype=np.uint8,
)

# Label value that losses and metrics skip (pixels no weak mask speaks for).
IGNORE_INDEX = 255

# Classes that are hot in the thermal band; the reference uses {person}.
DEFAULT_THERMAL_CLASSES: tuple[int, ...] = (MFNET_CLASSES.index("person"),)
# Cap on the visible stream's weight inside the radiation map: the paper's best value.
DEFAULT_TAU = 0.4


def class_ids(names_or_ids) -> tuple[int, ...]:
    """Accept class names ('person') or ids (2) and return validated ids."""
    ids = []
    for item in names_or_ids:
        if isinstance(item, str) and not item.isdigit():
            if item not in MFNET_CLASSES:
                raise ValueError(f"unknown MFNet class {item!r}; known: {', '.join(MFNET_CLASSES)}")
            ids.append(MFNET_CLASSES.index(item))
        else:
            i = int(item)
            if not 0 <= i < NUM_CLASSES:
                raise ValueError(f"MFNet class id must be in [0, {NUM_CLASSES - 1}], got {i}")
            ids.append(i)
    return tuple(sorted(set(ids)))


def colorize(labels: np.ndarray) -> np.ndarray:
    """(..., H, W) integer class ids -> (..., H, W, 3) uint8 RGB; out-of-range ids map to black."""
    labels = np.asarray(labels)
    safe = np.where((labels >= 0) & (labels < NUM_CLASSES), labels, 0).astype(np.intp)
    return MFNET_PALETTE[safe]
