"""One frame through the core pipeline, as the node and the offline bag replay both need it.

`load_pipeline` turns the parameters into a `MagicFusePipeline` (model folder or
random networks, device, backend and its options, steps, inference size).
`FrameProcessor.process` takes one (H, W, 3) uint8 RGB frame at the camera's
resolution and runs the pipeline with the parameters' seed policy, tau, thermal
classes and time budget. Resizing to the inference size and back is the
pipeline's job (bilinear for images, logits resized before the argmax for the
labels, so ids are never blended); every output comes back at the camera's
resolution. Only the outputs asked for are made.

No ROS here: plain numpy in, plain numpy out.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magicfuse_core.palette import MFNET_CLASSES, MFNET_PALETTE, colorize

from .params import MagicFuseParams, share_candidates

RANDOM_MODEL_PREFIX = "random-"
# Warm-up size when frames run at their own size (unknown until the first frame comes).
DEFAULT_WARMUP_SIZE = (64, 64)


class ModelLoadError(RuntimeError):
    """The model could not be found, read or placed on its device."""


def resolve_model_path(model_path: str) -> Path:
    """Absolute model folder for the `model_path` parameter.

    A relative path is tried against the working directory, then the package's
    share folder and the source tree. FileNotFoundError lists every place tried.
    """
    path = Path(model_path).expanduser()
    candidates = [path] if path.is_absolute() else list(dict.fromkeys([Path.cwd() / path, *share_candidates(path)]))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise FileNotFoundError(
        f"model folder '{model_path}' not found (looked in: {', '.join(str(c) for c in candidates)}); "
        "set the model_path parameter to a MagicFuse model folder, or to 'random-tiny' for untrained test networks"
    )


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when PyTorch sees a GPU, else 'cpu'; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(params: MagicFuseParams, log=print):
    """Build the pipeline the parameters describe; ModelLoadError with a clear message on failure.

    `log(message)` receives progress lines. A positive `cpu_threads` sets PyTorch's
    (process-wide) CPU thread count.
    """
    import torch

    from magicfuse_core.pipeline import RANDOM_MODEL_PREFIX as CORE_RANDOM_PREFIX
    from magicfuse_core.pipeline import load_pipeline as core_load_pipeline

    if params.cpu_threads > 0:
        torch.set_num_threads(params.cpu_threads)
    try:
        model = params.model_path
        if model.startswith(CORE_RANDOM_PREFIX):
            log(f"building random (untrained) '{model[len(CORE_RANDOM_PREFIX):]}' networks")
        else:
            model = str(resolve_model_path(model))
            log(f"loading model {model} (backend {params.backend}; may export or build engines on first use)")
        return core_load_pipeline(model, device=params.device, backend=params.backend, steps=params.steps or None,
                                  size=params.processing_size or "auto", log=log)
    except (FileNotFoundError, ValueError, RuntimeError, OSError, ImportError) as exc:
        raise ModelLoadError(f"cannot load model '{params.model_path}': {exc}") from exc


def frame_seed(params: MagicFuseParams, stamp_ns: int) -> int:
    """Seed of one frame's starting noise under the parameters' seed policy (0 <= seed < 2**31)."""
    if params.seed_policy == "fixed":
        return params.seed
    if params.seed_policy == "stamp":
        state = np.random.SeedSequence([params.seed, int(stamp_ns) % 2**63]).generate_state(1)[0]
        return int(state) & 0x7FFFFFFF
    return secrets.randbits(31)


@dataclass
class FrameOutputs:
    """One frame's outputs at the camera's resolution. Optional ones are None when not asked for."""

    magimg: np.ndarray                       # (H, W, 3) uint8 RGB
    segmentation: np.ndarray                 # (H, W) uint8 MFNet class ids 0..8
    segmentation_color: np.ndarray | None    # (H, W, 3) uint8 RGB palette
    ir: np.ndarray | None                    # (H, W) uint8 generated infrared
    fusion_weight: np.ndarray | None         # (H, W) float32, finite (corrected visible weight of the last step)
    seed: int
    steps_run: int
    cut_short: bool


def weight_to_mono8(weight: np.ndarray) -> np.ndarray:
    """(H, W) float fusion weight -> (H, W) uint8: clipped to [0, 1], times 255, rounded."""
    return np.round(np.clip(weight, 0.0, 1.0) * 255.0).astype(np.uint8)


class FrameProcessor:
    """Runs single frames through a `MagicFusePipeline` with the node's parameters."""

    def __init__(self, pipeline, params: MagicFuseParams):
        self.pipeline = pipeline
        self.params = params

    def warmup(self) -> tuple[int, int]:
        """One run at the pipeline's inference size (or DEFAULT_WARMUP_SIZE); returns the size used."""
        height, width = getattr(self.pipeline, "inference_size", None) or DEFAULT_WARMUP_SIZE
        self.pipeline.warmup(height, width)
        return height, width

    def process(self, rgb: np.ndarray, stamp_ns: int = 0, *, with_color: bool = True, with_ir: bool = True,
                with_weight: bool = True) -> FrameOutputs:
        """rgb: (H, W, 3) uint8 at the camera's resolution; stamp_ns feeds the 'stamp' seed policy."""
        params = self.params
        seed = frame_seed(params, stamp_ns)
        result = self.pipeline(
            rgb[None],
            seed=seed,
            tau=params.tau if params.tau >= 0 else None,  # negative: the model's own tau
            thermal_classes=list(params.thermal_classes),
            return_weights=with_weight,
            return_step_weights=False,  # only the last step's map is published
            time_budget_s=params.time_budget_ms / 1000.0 if params.time_budget_ms > 0 else None,
        )
        labels = result.seg_labels[0]
        weight = None
        if with_weight and result.fusion_weight is not None:
            weight = np.nan_to_num(result.fusion_weight[0].astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return FrameOutputs(
            magimg=result.magimg[0],
            segmentation=labels,
            segmentation_color=colorize(labels) if with_color else None,
            ir=result.ir[0] if with_ir else None,
            fusion_weight=weight,
            seed=seed,
            steps_run=int(result.steps_run),
            cut_short=bool(result.cut_short),
        )


def class_list_json(thermal_classes) -> str:
    """The class list the node latches on ~/output/segmentation/class_list (JSON)."""
    return json.dumps({
        "format": "magicfuse/class_list/1",
        "source": "MFNet",
        "classes": [{"id": i, "name": n, "color_rgb": [int(c) for c in MFNET_PALETTE[i]]} for i, n in enumerate(MFNET_CLASSES)],
        "thermal_classes": list(thermal_classes),
    })


def output_images(outputs, params) -> dict[str, tuple[np.ndarray, str]]:
    """{output kind: (array, encoding)} for one frame's `FrameOutputs`, as the node publishes them."""
    weight = outputs.fusion_weight
    if weight is not None and params.fusion_weight_encoding == "mono8":
        weight = weight_to_mono8(weight)
    return {
        "magimg": (outputs.magimg, params.output_encoding),
        "segmentation": (outputs.segmentation, "mono8"),
        "segmentation_color": (outputs.segmentation_color, "rgb8"),
        "ir": (outputs.ir, "mono8"),
        "fusion_weight": (weight, params.fusion_weight_encoding),
    }
