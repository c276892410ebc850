"""Phase 1, decoder: a local decoder for a frozen encoder's latent space.

    python -m training.decoder --config training/configs/cpu_demo.yaml --set decoder.time_budget_min=30

Ψ, Φ and F/S were trained on the released encoder's latents, so the encoder stays;
only the decoder is replaced by `LocalDecoder` (no InstanceNorm, most of its work at
H/4). It learns from the latent cache (the clean and infrared latents of the
training frames, encoded once) and the frames themselves:
- reconstruction: the clean latent -> the clean frame, the infrared latent -> the infrared frame;
- locality: a latent mixed from the two with a soft random mask m (what the per-step
  noise fusion produces in person regions) -> the two frames mixed with m upsampled.
  That is the property the released decoder lacks: its per-image normalisation moves
  pixels far outside m, and not monotonically (docs/TRAINING.md).
Loss: L1 on pixels plus L1 on their horizontal/vertical differences (edges).
The result is a whole autoencoder checkpoint (released encoder + trained decoder) in
RUN_DIR/decoder/last.pt, which a config uses as `autoencoder: {checkpoint: ...}` (and then names
the released one as `decoder: {encoder: {official: ...}}`).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from magicfuse_core.models.autoencoder import Autoencoder, AutoencoderConfig
from training.builders import build_autoencoder
from training.checkpoints import resume_if_any, save_checkpoint
from training.config import RUN_DEFAULTS, load_config, repo_path, with_defaults
from training.data import make_dataset
from training.distributed import setup_distributed
from training.ema import EMA
from training.latent_cache import LatentCache, get_latent_cache
from training.rng import step_generator
from training.run_log import RunLogger, Throughput

DECODER_DEFAULTS = {
    "encoder": None,           # the autoencoder whose encoder is kept (a build_autoencoder spec); None: `autoencoder:`
    "channels": 64,            # width at H/4
    "blocks": 4,               # residual blocks at H/4
    "batch_size": 8,
    "latent_crop": 32,         # latent crop side (128 px)
    "mix_prob": 0.5,           # share of samples that are clean/infrared latent mixes
    "edge_weight": 0.5,        # weight of the L1 on pixel differences
    "lr": 7.0e-4,
    "ema_decay": 0.998,
    "max_steps": 100000,
    "time_budget_min": 30,
    "log_every": 50,
    "ckpt_every": 250,
}


def load_frames(cache: LatentCache, data_cfg: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, infrared) uint8 frames (N, 3, H, W) / (N, 1, H, W) in the latent cache's order."""
    ds = make_dataset({**data_cfg, "degradation": "none"}, seed, augment=False)
    index = {name: i for i, name in enumerate(ds.names)}
    clean, ir = [], []
    for name in tqdm(cache.meta["names"], desc="frames", leave=False):
        arrays = ds.load(index[name])
        clean.append(torch.from_numpy(arrays["vis"]).permute(2, 0, 1))
        ir.append(torch.from_numpy(arrays["ir"])[None])
    return torch.stack(clean), torch.stack(ir)


def soft_masks(n: int, size: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """(n, 1, h, w) soft blobs in [0, 1]: smooth noise through a sigmoid of random sharpness."""
    h, w = size
    coarse = torch.randn(n, 1, max(h // 8, 2), max(w // 8, 2), generator=g)
    smooth = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)
    sharpness = torch.empty(n, 1, 1, 1).uniform_(2.0, 12.0, generator=g)
    return torch.sigmoid(sharpness * smooth)


def make_batch(cache: LatentCache, clean: torch.Tensor, ir: torch.Tensor, p: dict, g: torch.Generator):
    """(crop latents, whole-frame latents, target crops), latents in [0, 1], for one step.

    The decoder decodes the crop but reads the frame's tone from the whole frame, as it does at
    inference (the released latent holds a frame's brightness only globally)."""
    n, c = p["batch_size"], p["latent_crop"]
    frames = torch.randint(len(cache), (n,), generator=g)
    lh, lw = cache.clean.shape[-2:]
    tops, lefts = torch.randint(lh - c + 1, (n,), generator=g), torch.randint(lw - c + 1, (n,), generator=g)
    # the cache holds diffusion-space latents (2z - 1); the decoder reads z in [0, 1]
    z_vis = Autoencoder.from_diffusion(cache.clean[frames].float())
    z_ir = Autoencoder.from_diffusion(cache.ir[frames].float())
    # m = 1 keeps the visible stream, 0 the infrared one, inside the crop; unmixed samples take a stream whole
    m = soft_masks(n, (c, c), g)
    mixed = torch.rand(n, 1, 1, 1, generator=g) < p["mix_prob"]
    whole = (torch.rand(n, 1, 1, 1, generator=g) < 0.5).float()
    m = torch.where(mixed, m, whole)
    m_frame = whole.expand(-1, 1, lh, lw).clone()
    crops, targets = [], []
    for i, (f, y, x) in enumerate(zip(frames.tolist(), tops.tolist(), lefts.tolist())):
        m_frame[i, :, y:y + c, x:x + c] = m[i]
        m_image = F.interpolate(m[i:i + 1], scale_factor=4, mode="bilinear", align_corners=False)[0]
        x_vis = clean[f, :, 4 * y:4 * (y + c), 4 * x:4 * (x + c)].float() / 255
        x_ir = ir[f, :, 4 * y:4 * (y + c), 4 * x:4 * (x + c)].float().expand(3, -1, -1) / 255
        targets.append(m_image * x_vis + (1 - m_image) * x_ir)
    frame_latents = m_frame * z_vis + (1 - m_frame) * z_ir
    for i, (y, x) in enumerate(zip(tops.tolist(), lefts.tolist())):
        crops.append(frame_latents[i, :, y:y + c, x:x + c])
    return torch.stack(crops), frame_latents, torch.stack(targets)


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, edge_weight: float) -> torch.Tensor:
    def diffs(x):
        return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]
    loss = F.l1_loss(pred, target)
    for d_pred, d_target in zip(diffs(pred), diffs(target)):
        loss = loss + edge_weight * F.l1_loss(d_pred, d_target)
    return loss


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    parser.add_argument("--fresh", action="store_true", help="ignore RUN_DIR/decoder/last.pt")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    run = with_defaults(cfg, RUN_DEFAULTS)
    p = with_defaults(cfg.get("decoder") or {}, DECODER_DEFAULTS)
    seed = int(run["seed"])
    if run["threads"]:
        torch.set_num_threads(int(run["threads"]))
    ctx = setup_distributed(run["device"], run["ddp_timeout_min"])
    if ctx.enabled:
        raise SystemExit("training.decoder runs in one process (a CPU hour is enough); start it without torchrun")
    run_dir = repo_path(cfg["run_dir"]) / "decoder"
    log = RunLogger(run_dir, ctx, tensorboard=run["tensorboard"])

    if not cfg["data"].get("latent_cache"):
        raise SystemExit("training.decoder reads the latent cache: set data.latent_cache (built on first use)")
    # `decoder.encoder` names the released autoencoder when `autoencoder:` already points at this run's result
    released = build_autoencoder(p["encoder"] or cfg["autoencoder"])
    cache = get_latent_cache(cfg, released, ctx, log.info)  # the frames encoded once, as Ψ/Φ/F saw them
    clean, ir = load_frames(cache, cfg["data"], seed)
    log.info(f"decoder: {len(cache)} frames, latents {tuple(cache.clean.shape[-2:])}, frames {tuple(clean.shape[-2:])}")

    ae_cfg = AutoencoderConfig(**{**released.config.to_dict(), "decoder": "local", "decoder_channels": p["channels"],
                                  "decoder_blocks": p["blocks"]})
    torch.manual_seed(seed)
    model = Autoencoder(ae_cfg)
    model.encoder.load_state_dict(released.encoder.state_dict())
    model.encoder.requires_grad_(False)
    decoder = model.decoder.train()
    log.info(f"LocalDecoder: {sum(q.numel() for q in decoder.parameters()) / 1e6:.2f} M parameters")
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=float(p["lr"]), weight_decay=0.0)
    max_steps = int(p["max_steps"])
    # cosine to 10 % over max_steps: a time budget usually stops the run earlier, at a higher LR
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(s / max_steps, 1.0))))
    ema = EMA(model, p["ema_decay"], prefix="decoder.")  # the encoder stays the released one, bit for bit
    step, wall_before = resume_if_any(run_dir, args.fresh, log, ctx=ctx, seed=seed, model=model,
                                      optimizer=optimizer, scheduler=scheduler, ema=ema)

    budget_s = float(p["time_budget_min"] or 0) * 60
    t_start, meter, losses = time.time(), Throughput(), []
    bar = tqdm(total=max_steps, initial=step, disable=args.no_progress, dynamic_ncols=True, desc="decoder")
    while step < max_steps:
        g = step_generator(seed, step, 0)
        latents, frame_latents, target = make_batch(cache, clean, ir, p, g)
        loss = reconstruction_loss(decoder(latents, style_latent=frame_latents), target, p["edge_weight"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        ema.update(model)
        step += 1
        meter.add(len(latents))
        losses.append(float(loss.detach()))
        bar.update(1)
        if step % p["log_every"] == 0:
            window = losses[-p["log_every"]:]
            scalars = {"loss": sum(window) / len(window), "lr": scheduler.get_last_lr()[0], **meter.rates()}
            log.scalars(step, scalars)
            bar.set_postfix(loss=f"{scalars['loss']:.4f}")
            log.info(f"step {step} loss {scalars['loss']:.5f} lr {scalars['lr']:.2e} "
                     f"{scalars['steps_per_s']:.2f} it/s")
        out_of_time = budget_s and time.time() - t_start > budget_s
        if step % p["ckpt_every"] == 0 or step == max_steps or out_of_time:
            save_checkpoint(run_dir / "last.pt", ctx=ctx, step=step, model=model, optimizer=optimizer,
                            scheduler=scheduler, ema=ema, config=cfg,
                            extra={"component": "decoder", "wall_s": wall_before + time.time() - t_start})
        if out_of_time:
            log.info(f"time budget of {budget_s / 60:.1f} min reached at step {step}")
            break
    bar.close()
    summary = {"step": step, "wall_s": time.time() - t_start, "final_loss": float(np.mean(losses[-50:] or [0.0]))}
    log.info(f"done: step {step}, {summary['wall_s'] / 60:.1f} min, loss (last 50) {summary['final_loss']:.5f}")
    log.close()
    return summary


if __name__ == "__main__":
    main()
