"""Training data from a config: the paired-frame dataset, resumable endless batches, resizing, and encoding into the diffusion space."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from magicfuse_core.data import PairedFolderDataset
from magicfuse_core.models.autoencoder import Autoencoder
from magicfuse_core.palette import class_ids
from training.config import repo_path


def make_dataset(data_cfg: dict, seed: int, augment: bool = True, split: str | None = None) -> PairedFolderDataset:
    """The config's `data:` section -> the dataset (crops and flips only when `augment`)."""
    return PairedFolderDataset(
        repo_path(data_cfg["root"]), split=split or data_cfg.get("split", "train"),
        crop_size=data_cfg.get("crop") if augment else None, augment=augment,
        degradation=data_cfg.get("degradation", "random"), seed=seed,
        det_subdir=data_cfg.get("det_subdir", "infrared"), outside_box_label=data_cfg.get("outside_box_label", 0),
        silhouette_classes=data_cfg.get("silhouette_classes") or ())


def variant_samples(dataset: PairedFolderDataset, variant: int, workers: int = 0):
    """Every frame of `dataset` in order, as its epoch `variant` draws it (the seeded degradation number
    `variant` of each frame), loaded by `workers` DataLoader processes: the same samples with any number of them,
    since each is drawn from (seed, variant, frame). What the latent and frame caches are built from."""
    dataset.set_epoch(variant)
    samples = DataLoader(dataset, batch_size=None, num_workers=workers) if workers else dataset
    return zip(range(len(dataset)), samples)


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


def image_batches(loader, sampler, dataset, start_step: int):
    """Endless batches of a DataLoader, resumable: step s is batch (s mod len) of epoch (s // len)."""
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ValueError(f"{len(dataset)} frames give no full batch of {loader.batch_size} per process: "
                         "lower batch_size or add data")
    step = start_step
    while True:
        epoch, skip = divmod(step, per_epoch)
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        for i, batch in enumerate(loader):
            if i < skip:
                continue
            yield batch
            step += 1
