"""Finding and reading the frames of a `magicfuse eval` run.

Frames are matched across folders by file stem. `build_tasks` makes one
picklable `FrameTask` (paths only) per name; `load_frame` reads and checks the
inputs of one task and raises `FrameError` saying what is wrong, so that the
caller can skip that frame for every method.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import index_images, read_names, read_yolo_boxes
from ..imageio import read_label, read_rgb
from ..palette import IGNORE_INDEX, NUM_CLASSES
from . import metrics
from .config import EvalConfig


@dataclass
class FrameTask:
    """Paths of one frame's inputs (None = absent). Picklable, for worker processes."""

    name: str
    vis: Path | None
    ir: Path | None
    clean_vis: Path | None
    results: dict[str, Path | None]
    seg: dict[str, Path | None]
    label: Path | None
    det_txt: Path | None
    want_clean: bool
    want_label: bool
    fusion_names: tuple[str, ...]
    gen_ir_names: tuple[str, ...]


class FrameError(Exception):
    """A frame cannot be scored; the message says why."""


def resolve_det_dir(det: Path) -> Path:
    """The folder holding NAME.txt files: `det` itself, or det/infrared for the MSRS layout.

    MSRS ships det/{visible,infrared,fusion}/; its infrared boxes list the most
    people (data/README.md), so that sub-folder is the default.
    """
    if not det.is_dir():
        raise FileNotFoundError(f"--det folder not found: {det}")
    # classes.txt sits beside the sub-folders in that layout: it is not a frame.
    has_frames = any(p.name != "classes.txt" for p in det.glob("*.txt"))
    if not has_frames and (det / "infrared").is_dir():
        return det / "infrared"
    return det


def frame_names(config: EvalConfig) -> list[str]:
    """Names to evaluate: the --names file in its order, else all image stems of --vis, sorted."""
    if config.names_file is not None:
        names = read_names(config.names_file)
        if not names:
            raise ValueError(f"names list {config.names_file} is empty")
        return list(dict.fromkeys(names))  # drop repeats, keep order
    names = sorted(index_images(config.vis))
    if not names:
        raise FileNotFoundError(f"no images in the visible folder {config.vis}")
    return names


def _folder_index(folder: Path, what: str) -> dict[str, Path]:
    """stem -> path of one folder, with a clear error when the folder does not exist."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    return index_images(Path(folder))


def build_tasks(config: EvalConfig, names: list[str]) -> list[FrameTask]:
    """One FrameTask per name, with None for inputs that a folder lacks."""
    vis = _folder_index(config.vis, "visible")
    ir = _folder_index(config.ir, "infrared")
    clean = _folder_index(config.clean_vis, "clean visible") if config.clean_vis else {}
    results = {n: _folder_index(p, f"result '{n}'") for n, p in config.results.items()}
    seg = {n: _folder_index(p, f"segmentation '{n}'") for n, p in config.seg.items()}
    labels = _folder_index(config.labels, "labels") if config.labels else {}
    det = resolve_det_dir(Path(config.det)) if config.det else None
    fusion_names, gen_names = config.fusion_result_names(), config.generated_ir_names()
    return [
        FrameTask(
            name=name, vis=vis.get(name), ir=ir.get(name), clean_vis=clean.get(name),
            results={n: idx.get(name) for n, idx in results.items()},
            seg={n: idx.get(name) for n, idx in seg.items()},
            label=labels.get(name), det_txt=None if det is None else det / f"{name}.txt",
            want_clean=config.clean_vis is not None, want_label=config.labels is not None,
            fusion_names=fusion_names, gen_ir_names=gen_names,
        )
        for name in names
    ]


def read_gray_u8(path: Path) -> np.ndarray:
    """Read an image as (H, W) uint8 grey with MATLAB rgb2gray weights (the metrics' convention)."""
    return metrics.to_gray(read_rgb(path), str(path)).astype(np.uint8)


def _load(path: Path | None, what: str, reader, shape: tuple[int, int] | None):
    """Read one input of a frame or raise FrameError saying what is wrong with it."""
    if path is None:
        raise FrameError(f"missing {what}")
    try:
        image = reader(path)
    except (FileNotFoundError, ValueError) as exc:
        raise FrameError(f"unreadable {what}: {exc}") from exc
    if shape is not None and image.shape[:2] != shape:
        raise FrameError(f"{what} is {image.shape[1]}x{image.shape[0]}, the visible frame {shape[1]}x{shape[0]}")
    return image


def load_frame(task: FrameTask) -> dict:
    """Read and check every input of one frame. Raises FrameError.

    Returns a dict: vis (H, W, 3), ir (H, W), clean (H, W, 3) or None, results
    {name: (H, W, 3)}, seg {name: (H, W)}, label (H, W) or None, boxes list or None.
    """
    vis = _load(task.vis, "visible image", read_rgb, None)
    shape = vis.shape[:2]
    if min(shape) < metrics.MIN_SIDE:
        raise FrameError(f"frame is {shape[1]}x{shape[0]}, smaller than {metrics.MIN_SIDE}x{metrics.MIN_SIDE}")
    frame = {
        "vis": vis,
        "ir": _load(task.ir, "infrared image", read_gray_u8, shape),
        "clean": _load(task.clean_vis, "clean visible image", read_rgb, shape) if task.want_clean else None,
        "results": {n: _load(p, f"result '{n}'", read_rgb, shape) for n, p in task.results.items()},
        "seg": {n: _load(p, f"segmentation '{n}'", read_label, shape) for n, p in task.seg.items()},
        "label": _load(task.label, "label", read_label, shape) if task.want_label else None,
        "boxes": None,
    }
    if task.det_txt is not None:
        try:
            frame["boxes"] = read_yolo_boxes(task.det_txt)  # a missing file means no boxes
        except ValueError as exc:
            raise FrameError(str(exc)) from exc
    for name, seg in frame["seg"].items():
        bad = (seg >= NUM_CLASSES) & (seg != IGNORE_INDEX)
        if bad.any():
            raise FrameError(f"segmentation '{name}' has ids outside 0..{NUM_CLASSES - 1}: {sorted(set(seg[bad].tolist()))[:5]}")
    return frame
