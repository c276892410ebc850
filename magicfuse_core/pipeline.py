"""MagicFusePipeline: RGB images in, MagImg / IKR / CKG / segmentation out.

The pipeline only wires components and does pre/post-processing (uint8 <->
tensors, padding, batching, seeding); the networks live in `models/`, the step
loop in `sampler.py`.

Padding: the autoencoder works at 1/4 resolution and the UNet halves the latent
three times, so frames are padded on the right and bottom to a multiple of
`PAD_MULTIPLE` = 32 pixels (reflection, or edge replication for frames too small
to reflect) and every output is cropped back to the input's H x W. Reflection
keeps the padded border image-like, so it does not disturb GroupNorm statistics
or attention the way a black border would.

Inference size: `inference_size=(H, W)` runs the networks at that resolution
and resizes every output back to the input's (bilinear for images and weights,
nearest for labels), the usual trade of perception nodes on small GPUs or CPUs.
The fusion network's full self-attention grows with the square of the pixel
count, so halving each side makes it 16 times cheaper.

Seeding: the encoder noise, z_T and seg_T of image i are drawn on the CPU from a
generator seeded with `seed + i` (or `seeds[i]`), so a frame's result depends on
its seed only, not on the batch size or its batch neighbours (up to the rounding
of batched kernels: at most one grey level).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import MagicFuseModel, load_model, random_model
from .palette import class_ids
from .sampler import fused_sample

PAD_MULTIPLE = 32


@dataclass
class FuseResult:
    """Batch outputs at input resolution, numpy, RGB order."""

    magimg: np.ndarray                 # (B, H, W, 3) uint8
    ikr: np.ndarray                    # (B, H, W, 3) uint8, restored visible
    ckg: np.ndarray                    # (B, H, W, 3) uint8, generated infrared (decoder RGB)
    ir: np.ndarray                     # (B, H, W) uint8, generated infrared as grey
    seg_labels: np.ndarray             # (B, H, W) uint8 MFNet ids
    seg_logits: np.ndarray | None      # (B, K, H, W) float32 (only if asked)
    fusion_weight: np.ndarray | None   # (B, H, W) float32, last step's w_r averaged over channels
    weights: list[np.ndarray] | None   # per step (B, 8, h, w) w_r, if asked
    steps_run: int
    cut_short: bool


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, C) uint8, rounded."""
    return (images.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def rgb_to_gray(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W), ITU-R BT.601 luma."""
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def _as_batch(images) -> np.ndarray:
    if isinstance(images, np.ndarray) and images.ndim == 4:
        batch = images
    else:
        images = [np.asarray(im) for im in images]
        if not images:
            raise ValueError("no images given")
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise ValueError(f"all images of a batch must have the same shape, got {sorted(shapes)}")
        batch = np.stack(images)
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected RGB images (B, H, W, 3), got shape {batch.shape}")
    if batch.shape[1] < 4 or batch.shape[2] < 4:
        raise ValueError(f"images must be at least 4x4 pixels, got {batch.shape[1]}x{batch.shape[2]}")
    if batch.dtype == np.uint8:
        return batch.astype(np.float32) / 255.0
    if np.issubdtype(batch.dtype, np.floating):
        if not np.isfinite(batch).all():
            raise ValueError("float images contain NaN or Inf")
        return np.clip(batch, 0.0, 1.0).astype(np.float32)
    raise ValueError(f"images must be uint8 or float in [0, 1], got {batch.dtype}")


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class MagicFusePipeline:
    """Callable over batches of RGB frames; see `__call__`."""

    def __init__(self, model: MagicFuseModel, device: str | torch.device = "cpu", steps: int | None = None,
                 inference_size: tuple[int, int] | None = None):
        if inference_size is not None:
            inference_size = (int(inference_size[0]), int(inference_size[1]))
            if min(inference_size) < 4:
                raise ValueError(f"inference_size must be at least 4x4, got {inference_size}")
        self.inference_size = inference_size
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available in this PyTorch build")
        self.model = model.to(self.device)
        for m in self.model.modules().values():
            m.eval().requires_grad_(False)
        self.steps = int(steps or model.schedule.num_inference_steps)
        # Hooks a backend may replace (ONNX Runtime, TensorRT): same call signatures.
        self.ikr_denoiser = self.model.ikr
        self.ckg_denoiser = self.model.ckg
        self.fusion_net = self.model.fusion

    # ---- construction -------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str = "cpu", backend: str = "torch",
                        steps: int | None = None, inference_size="auto") -> "MagicFusePipeline":
        """inference_size: (H, W); None for native resolution; "auto" for the size the
        model records in `info.inference_size` (native if it records none)."""
        model = load_model(Path(model_dir), device="cpu")
        if isinstance(inference_size, str):
            if inference_size != "auto":
                raise ValueError(f"inference_size must be (H, W), None or 'auto', got {inference_size!r}")
            inference_size = model.info.get("inference_size")
        pipe = cls(model, device=device, steps=steps, inference_size=inference_size)
        if backend != "torch":
            from .runtime import apply_backend  # noqa: PLC0415 (optional backends load lazily)
            apply_backend(pipe, backend)
        return pipe

    @classmethod
    def random(cls, profile: str = "tiny", seed: int = 0, device: str = "cpu", steps: int | None = None,
               inference_size: tuple[int, int] | None = None):
        """Untrained networks, for tests and for trying the plumbing without a model."""
        return cls(random_model(profile, seed), device=device, steps=steps, inference_size=inference_size)

    @property
    def trained(self) -> bool:
        return self.model.trained

    def warmup(self, height: int, width: int, runs: int = 1) -> None:
        frame = np.zeros((1, height, width, 3), dtype=np.uint8)
        for _ in range(runs):
            self(frame, seed=0)

    # ---- inference ----------------------------------------------------------
    def _noise(self, seeds: Sequence[int], shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        out = {k: [] for k in shapes}
        for s in seeds:
            g = torch.Generator(device="cpu").manual_seed(int(s))
            for k, shape in shapes.items():
                out[k].append(torch.randn(shape, generator=g))
        return {k: torch.stack(v).to(self.device) for k, v in out.items()}

    @torch.inference_mode()
    def __call__(self, images, *, seed: int | Sequence[int] = 0, steps: int | None = None, tau: float | None = None,
                 thermal_classes=None, return_weights: bool = False, return_step_weights: bool | None = None,
                 return_logits: bool = False, time_budget_s: float | None = None) -> FuseResult:
        """images: (B, H, W, 3) uint8 (or float in [0, 1]) RGB, or a list of such (H, W, 3).

        return_weights: `fusion_weight` (last step, image size); return_step_weights
        (default: return_weights): also every step's w_r as numpy in `weights`, which
        costs a device-to-host copy per step, so per-frame callers leave it off.
        """
        batch = _as_batch(images)
        b, h, w, _ = batch.shape
        seeds = [seed + i for i in range(b)] if isinstance(seed, (int, np.integer)) else list(seed)
        if len(seeds) != b:
            raise ValueError(f"got {len(seeds)} seeds for {b} images")
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)
        if self.inference_size is not None and self.inference_size != (h, w):
            x = F.interpolate(x, size=self.inference_size, mode="bilinear", align_corners=False, antialias=True)
        rh, rw = x.shape[-2:]
        x = pad_to_multiple(x)
        lh, lw = x.shape[-2] // 4, x.shape[-1] // 4
        ae = self.model.autoencoder
        noise = self._noise(seeds, {"enc": (ae.encoder.noise_channels, lh, lw),
                                    "z_T": (ae.config.latent_channels, lh, lw),
                                    "seg_T": (self.model.fusion.config.num_classes, lh, lw)})
        cond = ae.to_diffusion(ae.encode(x, noise=noise["enc"]))
        schedule = self.model.schedule.with_steps(int(steps or self.steps))
        classes = class_ids(thermal_classes) if thermal_classes is not None else self.model.thermal_classes
        clock = self._clock()
        out = fused_sample(self.ikr_denoiser, self.ckg_denoiser, self.fusion_net, cond, noise["z_T"], noise["seg_T"],
                           schedule, tau=self.model.tau if tau is None else float(tau), thermal_classes=classes,
                           return_weights=return_weights, time_budget_s=time_budget_s, clock=clock)
        decoded = self._to_input_size(ae.decode_diffusion(torch.cat([out.z0_fused, out.z0_ikr, out.z0_ckg]))[..., :rh, :rw].float(), h, w)
        magimg, ikr, ckg = decoded.chunk(3)
        logits = self._to_input_size(out.seg_logits_full[..., :rh, :rw].float(), h, w)
        fusion_weight = weights = None
        if return_weights:
            w_last = out.corrected_weights[-1].float().mean(dim=1, keepdim=True)
            w_last = F.interpolate(w_last, size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :rh, :rw]
            fusion_weight = torch.nan_to_num(self._to_input_size(w_last, h, w)[:, 0]).cpu().numpy()
            if return_weights if return_step_weights is None else return_step_weights:
                weights = [wr.float().cpu().numpy() for wr in out.corrected_weights]
        return FuseResult(
            magimg=to_uint8(magimg), ikr=to_uint8(ikr), ckg=to_uint8(ckg), ir=to_uint8(rgb_to_gray(ckg))[..., 0],
            seg_labels=logits.argmax(dim=1).to(torch.uint8).cpu().numpy(),
            seg_logits=logits.cpu().numpy() if return_logits else None,
            fusion_weight=fusion_weight, weights=weights, steps_run=out.steps_run, cut_short=out.cut_short,
        )

    @staticmethod
    def _to_input_size(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        # Logits are resized bilinearly, then argmax'd: smoother label edges than
        # nearest-resizing the labels themselves.
        if x.shape[-2:] == (h, w):
            return x
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)

    def _clock(self):
        if self.device.type != "cuda":
            return time.perf_counter

        def synced():  # GPU work is asynchronous: only a synchronised clock sees it
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return synced
