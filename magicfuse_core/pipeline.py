"""MagicFusePipeline: RGB images in, MagImg / IKR / CKG / segmentation out.

The pipeline only wires components and does pre/post-processing (uint8 <->
tensors, padding, batching, seeding); the networks live in `models/`, the step
loop in `sampler.py`, how the networks execute in `backends/`.

Outputs: a call computes only what it is asked for (`outputs=`): the encoder
runs once per frame, and the decoder once per image kind asked for (magimg,
ikr, ckg), all kinds in one batched pass. "seg" up-samples the segmentation
logits; "weights" the last step's fusion weight map.

Padding: frames are padded on the right and bottom to a multiple of
`io_contract.PAD_MULTIPLE` = 32 pixels (reflection, or edge replication for
frames too small to reflect) and every output is cropped back to the input's
H x W. Reflection keeps the padded border image-like, so it does not disturb
GroupNorm statistics or attention the way a black border would.

Inference size: `inference_size=(H, W)` runs the networks at that resolution
and resizes every output back to the input's (bilinear for images and weights;
labels from the bilinearly resized logits), the usual trade of perception nodes
on small GPUs or CPUs.

Seeding: the encoder noise, z_T and seg_T of image i are drawn on the CPU from a
generator seeded with `seed + i` (or `seeds[i]`), so a frame's result depends on
its seed only, not on the batch size or its batch neighbours (up to the rounding
of batched kernels: at most one grey level).
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .backends import DEFAULT_BACKEND, BackendInfo, build_hooks
from .checkpoint import MagicFuseModel, load_model, random_model
from .color import luma, to_uint8
from .io_contract import PAD_MULTIPLE
from .models.fusion import class_labels
from .palette import class_ids
from .paths import default_model_dir
from .sampler import fused_sample

log = logging.getLogger(__name__)

OUTPUTS = ("magimg", "ikr", "ckg", "seg", "weights")
DEFAULT_OUTPUTS = frozenset({"magimg", "ikr", "ckg", "seg"})
IMAGE_OUTPUTS = ("magimg", "ikr", "ckg")  # decoded from a latent
RANDOM_MODEL_PREFIX = "random-"
RANDOM_MODEL_SIZE = (120, 160)  # untrained nets show only the plumbing: run them small unless told otherwise


@dataclass
class FuseResult:
    """Batch outputs at input resolution, numpy, RGB order; None where not asked for."""

    magimg: np.ndarray | None          # (B, H, W, 3) uint8
    ikr: np.ndarray | None             # (B, H, W, 3) uint8, restored visible
    ckg: np.ndarray | None             # (B, H, W, 3) uint8, generated infrared (decoder RGB)
    ir: np.ndarray | None              # (B, H, W) uint8, generated infrared as grey (with ckg)
    seg_labels: np.ndarray | None      # (B, H, W) uint8 MFNet ids
    seg_logits: np.ndarray | None      # (B, K, H, W) float32 (only if asked)
    fusion_weight: np.ndarray | None   # (B, H, W) float32, last step's w_r averaged over channels
    weights: list[np.ndarray] | None   # per step (B, 8, h, w) w_r, if asked
    steps_run: int
    cut_short: bool


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, C) uint8."""
    return to_uint8(images.float().permute(0, 2, 3, 1).cpu().numpy())


def parse_outputs(outputs: Iterable[str] | str | None) -> frozenset[str]:
    """'magimg,seg' or an iterable -> a validated set; None -> DEFAULT_OUTPUTS."""
    if outputs is None:
        return DEFAULT_OUTPUTS
    if isinstance(outputs, str):
        outputs = [o.strip() for o in outputs.split(",") if o.strip()]
    chosen = frozenset(outputs)
    unknown = chosen - set(OUTPUTS)
    if unknown or not chosen:
        raise ValueError(f"outputs must be a non-empty subset of {', '.join(OUTPUTS)}; got {sorted(outputs)}")
    return chosen


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
    """Callable over batches of RGB frames; see `__call__`. Starts on eager fp32 torch;
    `use_backend` attaches another backend (`load_pipeline` does both)."""

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
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        self.use_backend("torch")

    # ---- construction -------------------------------------------------------
    def use_backend(self, spec: str = DEFAULT_BACKEND, **opts) -> "MagicFusePipeline":
        """Run the networks on backend `spec` (see `magicfuse_core.backends`); returns self.

        The pipeline owns its model: a reduced-precision torch backend converts the model's
        networks in place (one copy of Φ's weights on the device, not two), and a backend that
        needs fp32 weights (an ONNX export) converts them back, with a warning that the precision
        already lost stays lost. `backend_info` says what runs and why."""
        hooks, info = build_hooks(self.model, self.device, spec, inference_size=self.inference_size, **opts)
        self.ikr_denoiser, self.ckg_denoiser, self.fusion_net = hooks["ikr"], hooks["ckg"], hooks["fusion"]
        self.encoder, self.decoder, self.styled_decoder = hooks["encoder"], hooks["decoder"], hooks["styled_decoder"]
        if info.fixed_size is not None and self.inference_size != info.fixed_size:
            info.notes.append(f"frames run at the backend's {info.fixed_size[0]}x{info.fixed_size[1]} and outputs are "
                              "resized back")
            self.inference_size = info.fixed_size
        self.backend_info: BackendInfo = info
        return self

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
        return pipe if backend == "torch" else pipe.use_backend(backend)

    @classmethod
    def random(cls, profile: str = "tiny", seed: int = 0, device: str = "cpu", steps: int | None = None,
               inference_size: tuple[int, int] | None = None):
        """Untrained networks, for tests and for trying the plumbing without a model."""
        return cls(random_model(profile, seed), device=device, steps=steps, inference_size=inference_size)

    @property
    def trained(self) -> bool:
        return self.model.trained

    def warmup(self, height: int, width: int, runs: int = 1, outputs=None, steps: int | None = None) -> None:
        """Run at the size real frames will have: CUDA graphs, compiled graphs, ONNX Runtime arenas and
        engines are per shape. steps=1 is enough to give every network its real shapes."""
        frame = np.zeros((1, height, width, 3), dtype=np.uint8)
        for _ in range(runs):
            self(frame, seed=0, outputs=outputs, steps=steps)

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
                 thermal_classes=None, outputs: Iterable[str] | str | None = None, return_weights: bool = False,
                 return_step_weights: bool | None = None, return_logits: bool = False, time_budget_s: float | None = None,
                 should_stop: Callable[[], bool] | None = None) -> FuseResult:
        """images: (B, H, W, 3) uint8 (or float in [0, 1]) RGB, or a list of such (H, W, 3).

        outputs: subset of OUTPUTS (default DEFAULT_OUTPUTS); return_weights=True is
        outputs + {"weights"}. return_step_weights (default: return_weights): also every
        step's w_r as numpy in `weights` (a device-to-host copy per step, so per-frame
        callers leave it off). should_stop(): asked between steps;
        True raises sampler.SamplingStopped.
        """
        wanted = parse_outputs(outputs)
        if return_weights:
            wanted = wanted | {"weights"}
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
        noise = self._noise(seeds, {"enc": (ae.config.noise_channels, lh, lw),
                                    "z_T": (ae.config.latent_channels, lh, lw),
                                    "seg_T": (self.model.fusion.config.num_classes, lh, lw)})
        cond = ae.to_diffusion(self.encoder(x, noise["enc"]).float())
        seg_T = self._frame_state(x) if self.model.fusion.config.seg_head == "frame" else noise["seg_T"]
        schedule = self.model.schedule.with_steps(int(steps or self.steps))
        classes = class_ids(thermal_classes) if thermal_classes is not None else self.model.thermal_classes
        out = fused_sample(self.ikr_denoiser, self.ckg_denoiser, self.fusion_net, cond, noise["z_T"], seg_T,
                           schedule, tau=self.model.tau if tau is None else float(tau), thermal_classes=classes,
                           radiation_map=self.model.radiation_map, radiation_shift=self.model.radiation_shift,
                           return_weights="weights" in wanted, time_budget_s=time_budget_s, clock=self._clock(),
                           should_stop=should_stop)
        images_out = self._decode(out, wanted, rh, rw, h, w)
        labels = logits = None
        if "seg" in wanted or return_logits:
            full = self._to_input_size(out.seg_logits_full[..., :rh, :rw].float(), h, w)
            labels = class_labels(full).to(torch.uint8).cpu().numpy()
            logits = full.cpu().numpy() if return_logits else None
        fusion_weight = step_weights = None
        if "weights" in wanted:
            w_last = out.corrected_weights[-1].float().mean(dim=1, keepdim=True)
            w_last = F.interpolate(w_last, size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :rh, :rw]
            fusion_weight = torch.nan_to_num(self._to_input_size(w_last, h, w)[:, 0]).cpu().numpy()
            if return_weights if return_step_weights is None else return_step_weights:
                step_weights = [wr.float().cpu().numpy() for wr in out.corrected_weights]
        ckg = images_out.get("ckg")
        return FuseResult(
            magimg=_uint8_or_none(images_out.get("magimg")), ikr=_uint8_or_none(images_out.get("ikr")),
            ckg=_uint8_or_none(ckg),
            ir=None if ckg is None else images_to_uint8(luma(ckg[:, 0:1], ckg[:, 1:2], ckg[:, 2:3]))[..., 0],
            seg_labels=labels, seg_logits=logits, fusion_weight=fusion_weight, weights=step_weights,
            steps_run=out.steps_run, cut_short=out.cut_short,
        )

    def _frame_state(self, x: torch.Tensor) -> torch.Tensor:
        """seg_head "frame": S's state from the padded frame, once per frame. A small net (one pass, tens of
        milliseconds on a CPU) that every backend runs as torch, in the precision the backend left it in."""
        head = self.model.fusion.frame_seg
        return head(x.to(next(head.parameters()).dtype)).float()

    def _decode(self, out, wanted, rh: int, rw: int, h: int, w: int) -> dict[str, torch.Tensor]:
        """The image kinds asked for -> {kind: (B, 3, h, w) in [0, 1]}: one batched pass of the plain decoder
        and one of the styled decoder, which decodes MagImg in the IKR stream's tone (`magimg_tone: ikr`)
        and the CKG image in the model's reference infrared tone (`ckg_tone: reference`)."""
        ae = self.model.autoencoder
        latents = {"magimg": out.z0_fused, "ikr": out.z0_ikr, "ckg": out.z0_ckg}
        kinds = [k for k in IMAGE_OUTPUTS if k in wanted]
        styles = {}  # kind -> the latent (diffusion space) whose decoding statistics it takes
        if "magimg" in kinds and self.model.magimg_tone == "ikr":
            styles["magimg"] = out.z0_ikr
        if "ckg" in kinds and self.model.ckg_tone_latent is not None:
            styles["ckg"] = self._ckg_tone_style(out.z0_ckg)
        plain = [k for k in kinds if k not in styles]
        images = {}
        if plain:
            decoded = self.decoder(ae.from_diffusion(torch.cat([latents[k] for k in plain]))).float()
            images.update(zip(plain, decoded.chunk(len(plain))))
        if styles:
            styled = list(styles)
            decoded = self.styled_decoder(ae.from_diffusion(torch.cat([latents[k] for k in styled])),
                                          ae.from_diffusion(torch.cat([styles[k] for k in styled]))).float()
            images.update(zip(styled, decoded.chunk(len(styled))))
        return {k: self._to_input_size(images[k][..., :rh, :rw], h, w) for k in kinds}

    def _ckg_tone_style(self, z0_ckg: torch.Tensor) -> torch.Tensor:
        """The reference infrared latent in diffusion space at z0_ckg's size and batch. Nearest resizing keeps
        its value distribution (the decoder's statistics); every backend's styled decoder takes one size."""
        tone = self.model.ckg_tone_latent.to(device=z0_ckg.device, dtype=z0_ckg.dtype)
        if tone.shape[-2:] != z0_ckg.shape[-2:]:
            tone = F.interpolate(tone, size=z0_ckg.shape[-2:], mode="nearest")
        return self.model.autoencoder.to_diffusion(tone).expand(z0_ckg.shape[0], -1, -1, -1)

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


def _uint8_or_none(images: torch.Tensor | None) -> np.ndarray | None:
    return None if images is None else images_to_uint8(images)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; anything else is checked and returned."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    torch.device(device)  # ValueError-like RuntimeError for nonsense such as 'gpu'
    return device


def load_pipeline(model: str | Path | None = None, device: str = "cpu", backend: str = DEFAULT_BACKEND,
                  steps: int | None = None, size: tuple[int, int] | str | None = "auto",
                  log: Callable[[str], None] | None = None) -> MagicFusePipeline:
    """The one way the CLI, the node and the tools build a pipeline.

    model: a model folder; None for $MAGICFUSE_MODEL or the bundled models/demo;
    "random-<profile>" (e.g. random-tiny) for untrained networks (plumbing only).
    device: cpu | cuda | cuda:N | auto. backend: a backend spec ("auto" by default:
    ONNX Runtime on CPU, its step networks in torch bf16 on CPUs with native bf16, the
    torch fast path on CUDA). steps: DDIM steps (default:
    the model's). size: (H, W), None for native resolution, "auto" for the model's
    recorded size. The chosen backend, and why, is logged once (`log`, default stderr).
    """
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if steps is not None and int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = resolve_device(device)
    if size is not None and not isinstance(size, str):
        size = (int(size[0]), int(size[1]))
    elif size not in (None, "auto"):
        raise ValueError(f"size must be (H, W), None or 'auto', got {size!r}")
    if model is None:
        model = default_model_dir()
    if model is None or str(model).startswith(RANDOM_MODEL_PREFIX):
        profile = "tiny" if model is None else str(model)[len(RANDOM_MODEL_PREFIX):]
        why = "no bundled model found" if model is None else f"model {model}"
        say(f"WARNING: the weights are UNTRAINED (random {profile} networks, {why}): outputs show the plumbing, "
            "not MagicFuse's quality.")
        pipe = MagicFusePipeline.random(profile, seed=0, device=device, steps=steps,
                                        inference_size=RANDOM_MODEL_SIZE if size == "auto" else size)
    else:
        folder = Path(model)
        if not folder.exists():
            raise FileNotFoundError(f"model folder not found: {folder} (a model folder holds model.json and one "
                                    "safetensors + json per network)")
        pipe = MagicFusePipeline.from_pretrained(folder, device=device, backend="torch", steps=steps,
                                                 inference_size=size)
        if not pipe.trained:
            say(f"WARNING: the weights in {folder} are UNTRAINED.")
    pipe.use_backend(backend)
    say(f"backend: {pipe.backend_info.summary()}")
    return pipe
