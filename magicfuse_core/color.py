"""Colour and value conversions shared by the losses (torch), the metrics and the pipeline (numpy).

One definition, written over the three channel planes, so it serves both array
types: Y = 0.299 R + 0.587 G + 0.114 B, Cb = (B - Y) 0.564 + 0.5,
Cr = (R - Y) 0.713 + 0.5 (the paper's visual loss). For RGB in [0, 1] all three are in [0, 1].
"""
from __future__ import annotations

import numpy as np


def ycbcr_from_planes(red, green, blue):
    """Three same-shaped planes (numpy arrays or torch tensors) -> (Y, Cb, Cr)."""
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    return luma, (blue - luma) * 0.564 + 0.5, (red - luma) * 0.713 + 0.5


def luma(red, green, blue):
    """ITU-R BT.601 luma of three planes."""
    return 0.299 * red + 0.587 * green + 0.114 * blue


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8, rounded half up; any shape."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
