"""What phase 1 and phase 2 share: config, distributed set-up, logging, EMA,
checkpoints with exact resume, the frozen autoencoder and the latent cache.

Reproducibility contract: every random draw of training step `s` on rank `r`
comes from `step_generator(seed, s, r)` (plus the dataset's own
(seed, epoch, index) streams), so a run resumed at step s continues exactly as
the uninterrupted run would have (see tests/test_training.py).
"""
from __future__ import annotations

import copy
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import yaml

from magicfuse_core.checkpoint import build_component, load_component
from magicfuse_core.data import PairedFolderDataset
from magicfuse_core.models.autoencoder import Autoencoder, AutoencoderConfig
from magicfuse_core.models.fusion import PROFILES as FUSION_PROFILES
from magicfuse_core.models.fusion import FusionConfig, FusionNet
from magicfuse_core.models.unet import ConditionalUNet, UNetConfig, unet_config
from magicfuse_core.palette import class_ids

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- config

def load_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """YAML config -> dict; `overrides` are "a.b.c=value" strings (value parsed as YAML).

    Relative paths in the config are relative to the repository root.
    """
    cfg = yaml.safe_load(Path(path).read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override must look like key.sub=value, got {item!r}")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    cfg["_config_path"] = str(path)
    return cfg


def repo_path(p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else REPO / p


# ----------------------------------------------------------------------------- distributed

@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> Dist:
    """Read the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK); nccl on CUDA, gloo on CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, dev)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain float32 elsewhere (CPU bf16 is slow and not what we ship)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def step_generator(seed: int, step: int, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of all random draws of one training step on one rank."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) * 1_009 + rank)
    return g


# ----------------------------------------------------------------------------- logging

class RunLogger:
    """Rank-0 text log (stdout + run_dir/train.log) and TensorBoard scalars/images; no-op elsewhere."""

    def __init__(self, run_dir: Path, ctx: Dist, tensorboard: bool = True):
        self.ctx = ctx
        self.run_dir = run_dir
        self.writer = None
        self.log_file = None
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.log_file = open(run_dir / "train.log", "a", buffering=1)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (optional at import time)
                self.writer = SummaryWriter(str(run_dir / "tb"))

    def info(self, message: str) -> None:
        if self.ctx.is_main:
            line = f"{time.strftime('%H:%M:%S')} {message}"
            print(line, flush=True)
            self.log_file.write(line + "\n")

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def image(self, step: int, tag: str, grid: torch.Tensor) -> None:
        """grid: (3, H, W) float in [0, 1]."""
        if self.writer is not None:
            self.writer.add_image(tag, grid.clamp(0, 1), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.log_file is not None:
            self.log_file.close()


def image_grid(rows: list[torch.Tensor]) -> torch.Tensor:
    """rows of (B, 3, H, W) images in [0, 1] -> one (3, rows*H, B*W) grid."""
    return torch.cat([torch.cat(list(r.float().cpu()), dim=2) for r in rows], dim=1)


# ----------------------------------------------------------------------------- EMA

class EMA:
    """Exponential moving average of a module's floating-point state (parameters and buffers).

    The decay warms up as min(decay, (1 + n) / (10 + n)) so that early averages
    are not dominated by the random initialisation.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)

    def copy_to(self, module: nn.Module) -> nn.Module:
        """A deep copy of `module` carrying the averaged weights."""
        averaged = copy.deepcopy(module)
        state = averaged.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v)
        return averaged

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


# ----------------------------------------------------------------------------- checkpoints

def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, step: int, model: nn.Module, optimizer, scheduler=None, ema: EMA | None = None,
                    config: dict | None = None, extra: dict | None = None) -> Path:
    """Everything needed to continue exactly: weights, optimizer, LR schedule, EMA, RNG, step.

    Written to a temporary file and renamed, so a crash never leaves a half checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = unwrap(model)
    state = {
        "step": step,
        "model": module.state_dict(),
        "model_kind": type(module).__name__,
        "model_config": module.config.to_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": rng_state(),
        "config": config,
        "extra": extra or {},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path, *, model: nn.Module, optimizer=None, scheduler=None, ema: EMA | None = None) -> dict:
    """Restore a `save_checkpoint` file into the given objects; returns the raw state (step, extra, ...)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=False)
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"])
    return state


def latest_checkpoint(run_dir: Path) -> Path | None:
    path = Path(run_dir) / "last.pt"
    return path if path.is_file() else None


def resume_if_any(run_dir: Path, fresh: bool, log, **states) -> tuple[int, float]:
    """Load RUN_DIR's latest checkpoint into `states` (model=, optimizer=, ...) unless `fresh`.

    Returns (step, wall seconds of the runs resumed); (0, 0.0) for a new run.
    """
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or fresh:
        return 0, 0.0
    state = load_checkpoint(ckpt, **states)
    log.info(f"resumed from {ckpt} at step {state['step']}")
    return state["step"], float(state["extra"].get("wall_s", 0.0))


def load_trained_module(path: Path, use_ema: bool = True) -> nn.Module:
    """A phase checkpoint (EMA weights when present) or a component of an exported model folder
    (`models/demo/ckg.safetensors`: fine-tune on top of a shipped model) -> the network, eval mode."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_component(path.parent, path.stem)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    kind = {"Autoencoder": "autoencoder", "ConditionalUNet": "unet", "FusionNet": "fusion"}[state["model_kind"]]
    module = build_component(kind, state["model_config"])
    module.load_state_dict(state["model"])
    if use_ema and state.get("ema") is not None:
        sd = module.state_dict()
        for k, v in state["ema"]["shadow"].items():
            sd[k].copy_(v)
    return module.eval()


# ----------------------------------------------------------------------------- networks

def build_unet(spec: dict) -> ConditionalUNet:
    """{"profile": "tiny"} or {"config": {...UNetConfig fields}} (profile fields overridden by config)."""
    cfg = unet_config(spec["profile"]).to_dict() if spec.get("profile") else {}
    cfg.update(spec.get("config") or {})
    return ConditionalUNet(UNetConfig.from_dict(cfg))


def build_fusion(spec: dict) -> FusionNet:
    cfg = FUSION_PROFILES[spec["profile"]].to_dict() if spec.get("profile") else {}
    cfg.update(spec.get("config") or {})
    return FusionNet(FusionConfig.from_dict(cfg))


def build_autoencoder(spec: dict) -> Autoencoder:
    """The autoencoder the diffusion phases use, frozen: `checkpoint` (ours, from phase 1),
    else `official` (the authors' ae.pth), else random weights of `config` (tests only)."""
    if spec.get("checkpoint"):
        ae = load_trained_module(repo_path(spec["checkpoint"]))
    elif spec.get("official"):
        from magicfuse_core.official import load_autoencoder  # noqa: PLC0415
        ae = load_autoencoder(repo_path(spec["official"]))
    else:
        torch.manual_seed(int(spec.get("seed", 0)))
        ae = Autoencoder(AutoencoderConfig(**(spec.get("config") or {})))
    return ae.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- data

def make_dataset(data_cfg: dict, seed: int, augment: bool = True, split: str | None = None) -> PairedFolderDataset:
    return PairedFolderDataset(
        repo_path(data_cfg["root"]), split=split or data_cfg.get("split", "train"),
        crop_size=data_cfg.get("crop") if augment else None, augment=augment,
        degradation=data_cfg.get("degradation", "random"), seed=seed,
        det_subdir=data_cfg.get("det_subdir", "infrared"), outside_box_label=data_cfg.get("outside_box_label", 0),
        silhouette_classes=data_cfg.get("silhouette_classes") or ())


def mask_options(data_cfg: dict) -> dict:
    """The data options the weak masks depend on (a latent cache records them; see `get_latent_cache`)."""
    return {"det_subdir": data_cfg.get("det_subdir", "infrared"),
            "outside_box_label": int(data_cfg.get("outside_box_label", 0)),
            "silhouette_classes": list(class_ids(data_cfg.get("silhouette_classes") or ()))}


def resize_images(images: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Down-scale (B, 3, H, W) images the way the pipeline does for `inference_size` (antialiased bilinear)."""
    if not scale or scale == 1:
        return images
    size = (int(round(images.shape[-2] * scale)), int(round(images.shape[-1] * scale)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) class ids -> (B, h, w), nearest."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0].long()


@torch.no_grad()
def encode(ae: Autoencoder, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 8, H/4, W/4) in the [-1, 1] diffusion space (encoder noise from `generator`)."""
    noise = torch.randn(ae.encoder.noise_shape(images), generator=generator, device="cpu").to(images.device)
    return ae.to_diffusion(ae.encode(images, noise=noise))


class LatentCache:
    """Pre-encoded training latents, the CPU speed-up: the frozen autoencoder runs once per frame and variant.

    Tensors (float16, diffusion space): clean (N, 8, h, w), ir (N, 8, h, w),
    degraded (N, V, 8, h, w) (V seeded degradations of each frame);
    masks (N, 4h, 4w) uint8 weak class ids at image size.
    A batch is a random latent crop (+ horizontal flip) of random frames/variants.
    """

    def __init__(self, tensors: dict, meta: dict):
        self.clean, self.ir, self.degraded, self.masks = (tensors[k] for k in ("clean", "ir", "degraded", "masks"))
        self.meta = meta

    def __len__(self) -> int:
        return self.clean.shape[0]

    @classmethod
    def build(cls, data_cfg: dict, ae: Autoencoder, seed: int, log=print) -> "LatentCache":
        ds = make_dataset(data_cfg, seed, augment=False)
        scale = float(data_cfg.get("scale") or 1.0)
        variants = int(data_cfg.get("cache_variants", 2))
        device = next(ae.parameters()).device
        out = {"clean": [], "ir": [], "degraded": [], "masks": []}
        start = time.time()
        for index in range(len(ds)):
            per_variant = []
            for v in range(variants):
                ds.set_epoch(v)
                sample = ds[index]
                g = torch.Generator().manual_seed(seed * 7919 + index * 31 + v)
                if v == 0:
                    pair = resize_images(torch.stack([sample["clean"], sample["ir"]]).to(device), scale)
                    clean_ir = encode(ae, pair, g).half().cpu()
                    mask = resize_mask(sample["mask"][None], pair.shape[-2:])[0].to(torch.uint8)
                degraded = resize_images(sample["degraded"][None].to(device), scale)
                per_variant.append(encode(ae, degraded, g)[0].half().cpu())
            out["clean"].append(clean_ir[0])
            out["ir"].append(clean_ir[1])
            out["degraded"].append(torch.stack(per_variant))
            out["masks"].append(mask)
            if index % 25 == 0 or index == len(ds) - 1:
                log(f"latent cache {index + 1}/{len(ds)} frames ({time.time() - start:.0f} s)")
        tensors = {k: torch.stack(v) for k, v in out.items()}
        meta = {"names": ds.names, "scale": scale, "variants": variants, "seed": seed,
                "root": str(data_cfg["root"]), "split": data_cfg.get("split", "train"),
                "mask_options": mask_options(data_cfg)}
        return cls(tensors, meta)

    def remake_masks(self, data_cfg: dict) -> None:
        """Recompute the weak masks for new mask options (silhouettes, ...) without re-encoding a frame."""
        ds = make_dataset({**data_cfg, "degradation": "none"}, int(self.meta.get("seed", 0)), augment=False)
        if ds.names != self.meta["names"]:
            raise ValueError("the latent cache was built from other frames than this config lists: delete it "
                             "to rebuild it")
        self.masks = torch.stack([resize_mask(ds[i]["mask"][None], self.masks.shape[-2:])[0].to(torch.uint8)
                                  for i in range(len(ds))])
        self.meta["mask_options"] = mask_options(data_cfg)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"clean": self.clean, "ir": self.ir, "degraded": self.degraded, "masks": self.masks,
                    "meta": self.meta}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "LatentCache":
        state = torch.load(path, map_location="cpu", weights_only=False)
        return cls(state, state["meta"])

    def batch(self, batch_size: int, latent_crop: tuple[int, int] | None, g: torch.Generator,
              focus: float = 0.0) -> dict:
        """Random frames, variants, crops and flips drawn from `g` -> float32 tensors.

        focus: probability that a crop is centred on a random labelled object pixel (mask id 1..8) of its
        frame instead of placed uniformly: people are a few % of a street frame's pixels, so uniform crops
        rarely show the segmentation head a thermal target.
        """
        if not 0.0 <= focus <= 1.0:
            raise ValueError(f"object crop probability must be in [0, 1], got {focus}")
        n, v, _, h, w = self.degraded.shape
        idx = torch.randint(n, (batch_size,), generator=g)
        var = torch.randint(v, (batch_size,), generator=g)
        ch, cw = latent_crop or (h, w)
        tops = torch.randint(h - ch + 1, (batch_size,), generator=g)
        lefts = torch.randint(w - cw + 1, (batch_size,), generator=g)
        if focus > 0:  # no extra draws otherwise: runs without it keep their random stream
            for i in (torch.rand(batch_size, generator=g) < focus).nonzero().flatten().tolist():
                mask = self.masks[int(idx[i])]
                objects = ((mask > 0) & (mask < 255)).nonzero()
                if len(objects):
                    y, x = (int(c) // 4 for c in objects[int(torch.randint(len(objects), (1,), generator=g))])
                    tops[i] = min(max(y - ch // 2, 0), h - ch)
                    lefts[i] = min(max(x - cw // 2, 0), w - cw)
        flips = torch.rand(batch_size, generator=g) < 0.5
        out = {"cond": [], "clean": [], "ir": [], "mask": []}
        for i in range(batch_size):
            k, t, l = int(idx[i]), int(tops[i]), int(lefts[i])
            crop = (slice(t, t + ch), slice(l, l + cw))
            items = {"cond": self.degraded[k, int(var[i])][:, crop[0], crop[1]],
                     "clean": self.clean[k][:, crop[0], crop[1]], "ir": self.ir[k][:, crop[0], crop[1]],
                     "mask": self.masks[k][4 * t:4 * (t + ch), 4 * l:4 * (l + cw)]}
            for key, val in items.items():
                out[key].append(val.flip(-1) if bool(flips[i]) else val)
        batch = {k: torch.stack(v).float() for k, v in out.items() if k != "mask"}
        batch["mask"] = torch.stack(out["mask"]).long()
        return batch


def object_crop_prob(p: dict, cache: LatentCache | None) -> float:
    """The phase's `object_crop_prob` (0 when unset), checked once before training starts; it places
    latent-cache crops, so it needs a cache."""
    value = p.get("object_crop_prob") or 0.0
    try:
        prob = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"object_crop_prob: object crop probability must be a number in [0, 1], "
                         f"got {value!r}") from None
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"object_crop_prob: object crop probability must be in [0, 1], got {prob}")
    if prob and cache is None:
        raise ValueError("object_crop_prob centres latent-cache crops (Ψ, Φ, F/S with data.latent_cache); "
                         "this run reads no latent cache: remove the option or set data.latent_cache")
    return prob


def get_latent_cache(cfg: dict, ae: Autoencoder, ctx: Dist, log=print) -> LatentCache:
    """Load the run's latent cache, building it first (rank 0) when missing."""
    path = repo_path(cfg["data"]["latent_cache"])
    cache = None  # rank 0 keeps what it loaded or built: the file is hundreds of MB
    if ctx.is_main and not path.is_file():
        log(f"building latent cache {path}")
        cache = LatentCache.build(cfg["data"], ae, int(cfg.get("seed", 0)), log)
        cache.save(path)
    elif ctx.is_main:
        cache = LatentCache.load(path)
        # A cache from before the options were recorded was made with the defaults.
        built_with = cache.meta.get("mask_options", mask_options({}))
        if built_with != mask_options(cfg["data"]):
            log(f"latent cache {path}: masks made with {built_with}, config asks {mask_options(cfg['data'])}: "
                f"remaking the masks (the latents stay)")
            cache.remake_masks(cfg["data"])
            cache.save(path)
    barrier(ctx)
    return cache if cache is not None else LatentCache.load(path)


class Throughput:
    """Steps/s and samples/s over the last logging window."""

    def __init__(self):
        self.t0, self.steps, self.samples = time.time(), 0, 0

    def add(self, samples: int) -> None:
        self.steps += 1
        self.samples += samples

    def rates(self) -> dict[str, float]:
        dt = max(time.time() - self.t0, 1e-9)
        out = {"steps_per_s": self.steps / dt, "samples_per_s": self.samples / dt}
        self.t0, self.steps, self.samples = time.time(), 0, 0
        return out


def grad_norm_(params, max_norm: float | None) -> float:
    params = [p for p in params if p.grad is not None]
    if max_norm:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params))) if params else 0.0
