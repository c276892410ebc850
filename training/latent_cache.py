"""The latent cache, the CPU speed-up: every training frame pre-encoded once by the frozen autoencoder.

Built by rank 0 on first use (or ahead of time by `python -m training.cache_latents`), saved next to the
data, and reused by every run of a config; `object_crop_prob` centres its crops on labelled objects.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from magicfuse_core.models.autoencoder import Autoencoder
from training.config import repo_path
from training.data import encode, make_dataset, mask_options, resize_images, resize_mask, variant_samples
from training.distributed import Dist, barrier


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
        workers = int(data_cfg.get("num_workers") or 0)  # degrading frames is CPU work: worker processes share it
        device = next(ae.parameters()).device
        n = len(ds)
        out = {"clean": [None] * n, "ir": [None] * n, "degraded": [[] for _ in range(n)], "masks": [None] * n}
        start = time.time()
        for v in range(variants):
            for index, sample in variant_samples(ds, v, workers):
                g = torch.Generator().manual_seed(seed * 7919 + index * 31 + v)
                if v == 0:
                    pair = resize_images(torch.stack([sample["clean"], sample["ir"]]).to(device), scale)
                    clean_ir = encode(ae, pair, g).half().cpu()
                    out["clean"][index], out["ir"][index] = clean_ir[0], clean_ir[1]
                    out["masks"][index] = resize_mask(sample["mask"][None], pair.shape[-2:])[0].to(torch.uint8)
                degraded = resize_images(sample["degraded"][None].to(device), scale)
                out["degraded"][index].append(encode(ae, degraded, g)[0].half().cpu())
                done = v * n + index + 1
                if done % 25 == 0 or done == n * variants:
                    log(f"latent cache {done}/{n * variants} encodings ({time.time() - start:.0f} s)")
        out["degraded"] = [torch.stack(per_variant) for per_variant in out["degraded"]]
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
        save_cache_file(path, {"clean": self.clean, "ir": self.ir, "degraded": self.degraded, "masks": self.masks,
                               "meta": self.meta})

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
                window = object_centred_window(self.masks[int(idx[i])], (ch, cw), (h, w), g)
                if window is not None:
                    tops[i], lefts[i] = window
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


def save_cache_file(path: Path, state: dict) -> None:
    """Write a training cache (a dict of tensors and meta) through a temporary file, so that an interrupted
    write never leaves a half cache behind that the next run would read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_cache_file(path: Path, what: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """A `save_cache_file` dict holding `keys` (and `optional` ones, None where an older file lacks them); a
    truncated or foreign file raises a ValueError that says which file and how to get a good one (`what`
    names the cache: "rollout cache", ...)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        return {**{k: state[k] for k in keys}, **{k: state.get(k) for k in optional}}
    except Exception as exc:
        raise ValueError(f"cannot read the {what} {path} ({exc}): delete it to rebuild it") from exc


def object_centred_window(mask: torch.Tensor, crop: tuple[int, int], size: tuple[int, int],
                          g: torch.Generator, scale: int = 4, ids: tuple[int, ...] | None = None) -> tuple[int, int] | None:
    """(top, left) of a latent crop centred on a random labelled object pixel (id 1..8, or one of `ids`) of
    the image-size `mask`, kept inside the (h, w) grid that is `scale` times smaller than the mask (the
    latent: 4); None when the frame has no such pixel."""
    objects = (torch.isin(mask, torch.tensor(ids, dtype=mask.dtype)) if ids else (mask > 0) & (mask < 255)).nonzero()
    if not len(objects):
        return None
    y, x = (int(c) // scale for c in objects[int(torch.randint(len(objects), (1,), generator=g))])
    (ch, cw), (h, w) = crop, size
    return min(max(y - ch // 2, 0), h - ch), min(max(x - cw // 2, 0), w - cw)


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
    """Load the run's latent cache, building it first (rank 0) when missing.

    The other ranks wait in a barrier meanwhile: building takes minutes per thousand frames, which is
    why the process group's timeout is `ddp_timeout_min` (training.distributed, default 120 minutes).
    """
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
