"""One frame through the core pipeline, as the node and the offline bag replay both need it.

`load_pipeline` turns the parameters into a pipeline (model folder or random
networks, device, backend and its options, steps, inference size).
`FrameProcessor.process` takes one (H, W, 3) uint8 RGB frame at the camera's
resolution, asks the pipeline for the products the wanted outputs need (and no
more), and returns each wanted output as (array, encoding) ready to publish,
following the output table in `outputs.py`. Resizing to the inference size and
back is the pipeline's job (bilinear for images, logits resized before the argmax
for the labels, so ids are never blended); every output comes back at the
camera's resolution.

No ROS here: plain numpy in, plain numpy out.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

import numpy as np

from magicfuse_core.palette import MFNET_CLASSES, MFNET_PALETTE, colorize

from .outputs import IMAGE_OUTPUT_NAMES, IMAGE_OUTPUTS
from .params import MagicFuseParams

# Warm-up size when frames run at their own size (unknown until the first frame comes): VGA, the
# size of the paper's and MSRS's cameras. CUDA graphs, compiled graphs and ONNX Runtime arenas are
# per shape, so a warm-up at a toy size would leave the first real frame to capture them again.
DEFAULT_WARMUP_SIZE = (480, 640)


class ModelLoadError(RuntimeError):
    """The model could not be found, read or placed on its device."""


class FrameStopped(Exception):
    """`should_stop()` turned true while a frame was in the pipeline: the frame was abandoned."""


def resolve_model_path(model_path: str) -> Path:
    """Absolute model folder for the `model_path` parameter.

    A relative path is tried against the working directory, then the source tree
    and the package's share folder (`magicfuse_core.paths.find_data`).
    FileNotFoundError says where it looked.
    """
    from magicfuse_core.paths import find_data

    path = Path(model_path).expanduser()
    if path.is_dir():
        return path.resolve()
    found = None if path.is_absolute() else find_data(str(path))
    if found is not None and found.is_dir():
        return found.resolve()
    where = str(path) if path.is_absolute() else f"{Path.cwd() / path}, the source tree, the package share folder"
    raise FileNotFoundError(
        f"model folder '{model_path}' not found (looked in: {where}); "
        "set the model_path parameter to a MagicFuse model folder, or to 'random-tiny' for untrained test networks"
    )


def load_pipeline(params: MagicFuseParams, log=print):
    """Build the pipeline the parameters describe; ModelLoadError with a clear message on failure.

    `log(message)` receives progress lines. A positive `cpu_threads` sets PyTorch's
    (process-wide) CPU thread count.
    """
    import torch

    from magicfuse_core.pipeline import RANDOM_MODEL_PREFIX
    from magicfuse_core.pipeline import load_pipeline as core_load_pipeline

    if params.cpu_threads > 0:
        torch.set_num_threads(params.cpu_threads)
    try:
        model = params.model_path
        if model.startswith(RANDOM_MODEL_PREFIX):
            log(f"building random (untrained) '{model[len(RANDOM_MODEL_PREFIX):]}' networks")
        else:
            model = str(resolve_model_path(model))
            log(f"loading model {model} (backend {params.backend}; may export or build engines on first use)")
        return core_load_pipeline(model, device=params.device, backend=params.backend, steps=params.steps or None,
                                  size=params.processing_size or "auto", log=log)
    except (FileNotFoundError, ValueError, RuntimeError, OSError, ImportError) as exc:
        raise ModelLoadError(f"cannot load model '{params.model_path}': {exc}") from exc


def load_and_warm_up(params: MagicFuseParams, info=print, warn=print) -> "FrameProcessor":
    """The node's start-up: load the model the parameters name, warm it up (when `warmup`), log timings.

    Raises ModelLoadError (loading or warm-up failed). info / warn receive log lines.
    """
    import time

    started = time.monotonic()
    pipeline = load_pipeline(params, log=info)
    info(f"model ready in {time.monotonic() - started:.1f} s on {pipeline.device}")
    if not pipeline.trained:
        warn("the networks are untrained (random weights): outputs exercise the plumbing only")
    processor = FrameProcessor(pipeline, params)
    if params.warmup:
        started = time.monotonic()
        info("warming up ...")
        try:
            height, width = processor.warmup()
        except Exception as exc:  # noqa: BLE001 - any failure here means the model cannot run
            raise ModelLoadError(f"warm-up failed on {pipeline.device}: {type(exc).__name__}: {exc}") from exc
        info(f"warm-up at {width}x{height} done in {time.monotonic() - started:.1f} s")
    return processor


def release(processor: "FrameProcessor") -> None:
    """Drop the processor's pipeline and give its GPU memory back (managed node: cleanup)."""
    import gc

    device = str(getattr(processor.pipeline, "device", "cpu"))
    processor.pipeline = None
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def frame_seed(params: MagicFuseParams, stamp_ns: int) -> int:
    """Seed of one frame's starting noise under the parameters' seed policy (0 <= seed < 2**31)."""
    if params.seed_policy == "fixed":
        return params.seed
    if params.seed_policy == "stamp":
        state = np.random.SeedSequence([params.seed, int(stamp_ns) % 2**63]).generate_state(1)[0]
        return int(state) & 0x7FFFFFFF
    return secrets.randbits(31)


def weight_to_mono8(weight: np.ndarray) -> np.ndarray:
    """(H, W) float fusion weight -> (H, W) uint8: clipped to [0, 1], times 255, rounded."""
    return np.round(np.clip(weight, 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclass
class FrameResult:
    """One frame's wanted outputs at the camera's resolution, ready to publish."""

    images: dict[str, tuple[np.ndarray, str]]   # output name -> (array, encoding), in IMAGE_OUTPUTS order
    seed: int
    steps_run: int
    cut_short: bool


class FrameProcessor:
    """Runs single frames through a pipeline with the node's parameters."""

    def __init__(self, pipeline, params: MagicFuseParams):
        self.pipeline = pipeline
        self.params = params

    def warmup(self) -> tuple[int, int]:
        """One one-step run at the pipeline's inference size (or DEFAULT_WARMUP_SIZE); returns the size used.
        One step is enough: every network sees its real shapes in it."""
        height, width = self.pipeline.inference_size or DEFAULT_WARMUP_SIZE
        self.pipeline.warmup(height, width, steps=1)
        return height, width

    def process(self, rgb: np.ndarray, stamp_ns: int = 0, wanted: Collection[str] = IMAGE_OUTPUT_NAMES,
                should_stop: Callable[[], bool] | None = None) -> FrameResult:
        """rgb: (H, W, 3) uint8 at the camera's resolution; stamp_ns feeds the 'stamp' seed policy.

        wanted: names of IMAGE_OUTPUTS to make (unknown names: ValueError). Raises
        FrameStopped when `should_stop()` turns true between two sampling steps.
        """
        unknown = set(wanted) - set(IMAGE_OUTPUT_NAMES)
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)} (known: {', '.join(IMAGE_OUTPUT_NAMES)})")
        chosen = [o for o in IMAGE_OUTPUTS if o.name in wanted]
        seed = frame_seed(self.params, stamp_ns)
        result = self._run_pipeline(rgb, seed, {o.needs for o in chosen}, should_stop)
        images = {}
        for output in chosen:
            encoding = output.encoding(self.params)
            images[output.name] = (self._image(output.name, encoding, result), encoding)
        return FrameResult(images, seed, int(result.steps_run), bool(result.cut_short))

    def _run_pipeline(self, rgb: np.ndarray, seed: int, products: set[str], should_stop):
        """The one call into the core pipeline. products: the pipeline's `outputs=` names."""
        from magicfuse_core.sampler import SamplingStopped

        params = self.params
        try:
            return self.pipeline(
                rgb[None],
                seed=seed,
                tau=params.tau if params.tau >= 0 else None,  # negative: the model's own tau
                thermal_classes=list(params.thermal_classes),
                outputs=products,
                return_step_weights=False,  # only the last step's map is published
                time_budget_s=params.time_budget_ms / 1000.0 if params.time_budget_ms > 0 else None,
                should_stop=should_stop,
            )
        except SamplingStopped as exc:
            raise FrameStopped() from exc

    @staticmethod
    def _image(name: str, encoding: str, result) -> np.ndarray:
        """The array of output `name` (to be published as `encoding`) from a pipeline result (batch of one)."""
        if name == "magimg":
            return result.magimg[0]
        if name == "segmentation":
            return result.seg_labels[0]
        if name == "segmentation_color":
            return colorize(result.seg_labels[0])
        if name == "ir":
            return result.ir[0]
        if name == "fusion_weight":
            weight = np.nan_to_num(result.fusion_weight[0].astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
            return weight_to_mono8(weight) if encoding == "mono8" else weight
        raise ValueError(f"no rule for output {name!r}")


def class_list_json(thermal_classes) -> str:
    """The class list the node latches on ~/output/segmentation/class_list (JSON)."""
    return json.dumps({
        "format": "magicfuse/class_list/1",
        "source": "MFNet",
        "classes": [{"id": i, "name": n, "color_rgb": [int(c) for c in MFNET_PALETTE[i]]} for i, n in enumerate(MFNET_CLASSES)],
        "thermal_classes": list(thermal_classes),
    })
