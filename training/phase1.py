"""Phase 1 of the paper's training: train the autoencoder, the IKR denoiser Ψ or the CKG denoiser Φ.

    python -m training.phase1 --config training/configs/cpu_smoke.yaml --component ikr
    torchrun --nproc_per_node 8 -m training.phase1 --config training/configs/gpu_20min.yaml --component ckg

- autoencoder: L1 reconstruction of clean visible, degraded visible and infrared frames
  (the encoder's injected noise is drawn per step, as at inference).
- ikr / ckg: epsilon-prediction MSE of the conditional latent diffusion; condition =
  2 E(degraded) - 1, target latent = 2 E(clean) - 1 (Ψ) or 2 E(infrared) - 1 (Φ);
  the autoencoder is frozen (`autoencoder:` in the config says which one).

AdamW with linear warm-up, EMA weights, gradient clipping, bf16 autocast on CUDA,
checkpoint every `ckpt_every` steps to RUN_DIR/COMPONENT/last.pt and exact resume
from it (the default when it exists; --fresh to start over), TensorBoard scalars
and sample grids, rank-0 logging. Stops at `max_steps` or after `time_budget_min`.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from magicfuse_core.checkpoint import load_state_dict_strict
from magicfuse_core.denoiser import EpsilonDenoiser
from magicfuse_core.losses import eps_mse
from magicfuse_core.models.autoencoder import Autoencoder, AutoencoderConfig
from magicfuse_core.sampler import ddim_sample
from magicfuse_core.schedule import DDIMSchedule
from training.builders import build_autoencoder, build_unet
from training.checkpoints import load_trained_module, resume_if_any, save_checkpoint
from training.config import DATA_DEFAULTS, RUN_DEFAULTS, load_config, repo_path, with_defaults
from training.data import encode, image_batches, make_dataset, resize_images
from training.distributed import autocast, cleanup_distributed, setup_distributed
from training.ema import EMA
from training.latent_cache import get_latent_cache, object_crop_prob
from training.optim import grad_norm_
from training.rng import step_generator
from training.run_log import RunLogger, Throughput, image_grid

COMPONENTS = ("autoencoder", "ikr", "ckg")
# ---- defaults: every phase1 setting a config may leave out, and its value then (batch_size, lr, max_steps,
# log_every and ckpt_every are required). A component's own section (phase1.ckg: {...}) overrides these.
PHASE1_DEFAULTS = {
    "betas": (0.9, 0.999),
    "weight_decay": 0.0,
    "warmup_steps": 0,
    "ema_decay": 0.999,
    "grad_clip": None,             # None: no clipping, only the norm is logged
    "train_timesteps": "all",      # "all" 1000 timesteps, or "sampler": the 25 DDIM ones only
    "min_snr_gamma": None,         # Min-SNR-γ weights for ε-prediction; None: plain ε-MSE
    "latent_crop": "data",         # "data": data.latent_crop
    "time_budget_min": 0,          # 0: no time budget
    "sample_every": 0,             # 0: no sample grids
    "sample_steps": 25,
    "init": None,                  # fine-tune from a trained Ψ/Φ (a last.pt or an exported *.safetensors)
    # Exposure-bias correction for few-step sampling: with this probability a batch's x_t is the state the
    # model's own DDIM rollout of `rollout_steps` steps reaches (no graph), not the forward-noised target, so
    # the denoiser learns from the states inference visits (their errors compound over few large steps).
    "rollout_prob": 0.0,
    "rollout_steps": 5,
}


class Reconstruction(torch.nn.Module):
    """image -> D(E(image, noise)): the autoencoder as one forward call (what DDP wraps)."""

    def __init__(self, ae: Autoencoder):
        super().__init__()
        self.ae = ae

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.ae.decode(self.ae.encode(images, noise=noise))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="MagicFuse phase 1: autoencoder, IKR (Ψ) or CKG (Φ)")
    parser.add_argument("--config", required=True, help="training/configs/*.yaml")
    parser.add_argument("--component", required=True, choices=COMPONENTS)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. phase1.max_steps=10 (values parsed as YAML)")
    parser.add_argument("--fresh", action="store_true", help="ignore RUN_DIR/COMPONENT/last.pt and start over")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return parser.parse_args(argv)


def weighted_eps_mse(eps: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, schedule: DDIMSchedule,
                     gamma: float) -> torch.Tensor:
    """ε-MSE with Min-SNR-γ weights min(1, γ / SNR_t), SNR_t = ᾱ_t / (1 - ᾱ_t).

    Low-noise steps (large SNR), whose ε errors barely move the clean estimate, weigh less, so a small
    network spends its capacity on the noisy steps, where an ε error is amplified sqrt(1/SNR) times
    in z0_hat.
    """
    a = schedule.alphas_cumprod.to(device=t.device, dtype=torch.float32)[t]
    weight = (gamma * (1 - a) / a).clamp(max=1.0)
    return (weight.view(-1, 1, 1, 1) * (eps.float() - noise.float()) ** 2).mean()


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    component = args.component
    run, data = with_defaults(cfg, RUN_DEFAULTS), with_defaults(cfg["data"], DATA_DEFAULTS)
    p = with_defaults({k: v for k, v in cfg["phase1"].items() if k not in COMPONENTS}, PHASE1_DEFAULTS)
    p.update(cfg["phase1"].get(component) or {})  # per-component overrides, e.g. phase1.ckg.lr
    p["lr"] = float(p["lr"])  # YAML reads `--set phase1.lr=1e-4` as a string (1.0e-4 is a float)
    seed = int(run["seed"])
    if run["threads"]:  # small convs on a shared CPU run faster on fewer threads
        torch.set_num_threads(int(run["threads"]))
    ctx = setup_distributed(run["device"], run["ddp_timeout_min"])
    device = ctx.device
    run_dir = repo_path(cfg["run_dir"]) / component
    log = RunLogger(run_dir, ctx, tensorboard=run["tensorboard"])
    log.info(f"phase 1 {component}: world size {ctx.world_size}, device {device}, config {args.config}")

    # ---- data -----------------------------------------------------------------
    schedule = DDIMSchedule()
    ae = None if component == "autoencoder" else build_autoencoder(cfg["autoencoder"]).to(device)
    cache = None
    if ae is not None and data["latent_cache"]:
        cache = get_latent_cache(cfg, ae, ctx, log.info)
        log.info(f"latent cache: {len(cache)} frames x {cache.degraded.shape[1]} degradations, "
                 f"latents {tuple(cache.clean.shape[-2:])}")
    else:
        dataset = make_dataset(cfg["data"], seed)
        # Also with one process: its order is a function of (seed, epoch), which exact resume needs.
        sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=seed, drop_last=True)
        loader = DataLoader(dataset, batch_size=p["batch_size"], sampler=sampler, drop_last=True,
                            num_workers=int(data["num_workers"]), persistent_workers=False)
        log.info(f"dataset: {len(dataset)} frames from {dataset.root} ({data['split']})")

    # ---- model, optimizer -----------------------------------------------------
    torch.manual_seed(seed)  # identical initial weights on every rank
    if component == "autoencoder":
        model = Autoencoder(AutoencoderConfig(**(cfg["autoencoder"].get("config") or {})))
    else:
        model = build_unet(cfg[component]["unet"])
    if p["init"] and component != "autoencoder":
        start = load_trained_module(repo_path(p["init"]))
        load_state_dict_strict(model, start.state_dict(), f"phase1.init {p['init']}")
        log.info(f"fine-tuning from {p['init']}")
    model.to(device).train()
    n_params = sum(p_.numel() for p_ in model.parameters())
    log.info(f"{type(model).__name__}: {n_params / 1e6:.2f} M parameters, config {model.config.to_dict()}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=p["lr"], betas=tuple(p["betas"]),
                                  weight_decay=p["weight_decay"])
    warmup = max(int(p["warmup_steps"]), 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    ema = EMA(model, p["ema_decay"])

    # wall_before: wall time of the runs this one resumes
    step, wall_before = resume_if_any(run_dir, args.fresh, log, ctx=ctx, seed=seed, model=model, optimizer=optimizer,
                                      scheduler=scheduler, ema=ema)
    trained = Reconstruction(model) if component == "autoencoder" else model
    ddp_model = DistributedDataParallel(trained) if ctx.enabled else trained
    if cache is None:
        batches = image_batches(loader, sampler, dataset, step)
    latent_crop = data["latent_crop"] if p["latent_crop"] == "data" else p["latent_crop"]
    focus = object_crop_prob(p, cache)  # crops centred on labelled objects (people: ~2 % of the pixels)

    def next_batch(step: int, g: torch.Generator) -> dict:
        if cache is not None:
            batch = cache.batch(p["batch_size"], latent_crop, g, focus=focus)
            return {k: v.to(device) for k, v in batch.items()}
        batch = {k: v.to(device) for k, v in next(batches).items()}
        for k in ("degraded", "clean", "ir"):
            batch[k] = resize_images(batch[k], data["scale"])
        if component == "autoencoder":
            return batch
        images = torch.cat([batch["degraded"], batch["clean"] if component == "ikr" else batch["ir"]])
        cond, target = encode(ae, images, g).chunk(2)
        return {"cond": cond, "clean": target, "ir": target}

    # Which t the denoiser is trained on: all 1000 (the standard), or only the DDIM steps the sampler
    # visits ("sampler": 40x more training per visited t, what a small CPU budget needs).
    if p["train_timesteps"] == "sampler":
        train_timesteps = torch.tensor(schedule.timesteps)
    else:
        train_timesteps = torch.arange(schedule.num_train_timesteps)
    rollout_prob = float(p["rollout_prob"])
    if not 0.0 <= rollout_prob <= 1.0:
        raise ValueError(f"phase1.rollout_prob must be in [0, 1], got {rollout_prob}")
    rollout_schedule = schedule.with_steps(int(p["rollout_steps"]))
    snr_gamma = p["min_snr_gamma"]
    predicts_sample = component != "autoencoder" and model.config.prediction == "sample"  # the UNet returns z0
    if predicts_sample and snr_gamma:
        log.info("prediction: sample -> the loss is the z0 MSE; min_snr_gamma is not used")

    # ---- loop -----------------------------------------------------------------
    max_steps = int(p["max_steps"])
    budget_s = float(p["time_budget_min"] or 0) * 60
    t_start, meter, losses = time.time(), Throughput(), []
    fixed = None  # the batch the sample grids show
    bar = tqdm(total=max_steps, initial=step, disable=args.no_progress or not ctx.is_main, dynamic_ncols=True,
               desc=f"phase1 {component}")
    while step < max_steps:
        g = step_generator(seed, step, ctx.rank)
        batch = next_batch(step, g)
        if fixed is None:
            fixed = {k: v[:4].clone() for k, v in batch.items()}
        with autocast(device):
            if component == "autoencoder":
                images = torch.cat([batch["clean"], batch["degraded"], batch["ir"]])
                noise = torch.randn(model.encoder.noise_shape(images), generator=g).to(device)
                recon = ddp_model(images, noise)
                loss = F.l1_loss(recon.float(), images)
            else:
                target = batch["clean"] if component == "ikr" else batch["ir"]
                noise = torch.randn(target.shape, generator=g).to(device)
                if rollout_prob and float(torch.rand((), generator=g)) < rollout_prob:
                    x_t, t = rollout_state(model, batch["cond"], noise, rollout_schedule, g)
                else:
                    t = train_timesteps[torch.randint(len(train_timesteps), (len(target),), generator=g)].to(device)
                    x_t = schedule.add_noise(target, noise, t)
                prediction = ddp_model(torch.cat([batch["cond"], x_t], dim=1), t.float())
                if predicts_sample:  # the clean latent, without the x_t -> eps -> z0 round trip
                    loss = F.mse_loss(prediction.float(), target.float())
                elif snr_gamma:
                    loss = weighted_eps_mse(prediction, noise, t, schedule, snr_gamma)
                else:
                    loss = eps_mse(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = grad_norm_(model.parameters(), p["grad_clip"])
        optimizer.step()
        scheduler.step()
        ema.update(model)
        step += 1
        meter.add(len(images) if component == "autoencoder" else len(target))
        losses.append(float(loss.detach()))
        bar.update(1)

        if step % p["log_every"] == 0 or step == max_steps:
            window = losses[-p["log_every"]:]
            scalars = {"loss": sum(window) / len(window), "grad_norm": gnorm, "lr": scheduler.get_last_lr()[0],
                       **meter.rates()}
            log.scalars(step, scalars)
            bar.set_postfix(loss=f"{scalars['loss']:.4f}", it_s=f"{scalars['steps_per_s']:.2f}")
            log.info(f"step {step} loss {scalars['loss']:.5f} grad {gnorm:.3f} lr {scalars['lr']:.2e} "
                     f"{scalars['steps_per_s']:.2f} it/s {scalars['samples_per_s']:.1f} samples/s")
        if ctx.is_main and p["sample_every"] and step % p["sample_every"] == 0:
            log_samples(log, step, component, ema.copy_to(model).eval(), ae, fixed, schedule, p, seed)
        out_of_time = budget_s and time.time() - t_start > budget_s
        if ctx.enabled:  # every rank stops at the same step
            flag = torch.tensor([float(bool(out_of_time))], device=device if device.type == "cuda" else "cpu")
            torch.distributed.all_reduce(flag)
            out_of_time = flag.item() > 0
        if step % p["ckpt_every"] == 0 or step == max_steps or out_of_time:
            save_checkpoint(run_dir / "last.pt", ctx=ctx, step=step, model=model, optimizer=optimizer,
                            scheduler=scheduler, ema=ema, config=cfg,
                            extra={"component": component, "wall_s": wall_before + time.time() - t_start})
        if out_of_time:
            log.info(f"time budget of {budget_s / 60:.1f} min reached at step {step}")
            break
    bar.close()
    summary = {"component": component, "step": step, "wall_s": time.time() - t_start,
               "final_loss": sum(losses[-50:]) / max(len(losses[-50:]), 1), "losses": losses}
    log.info(f"done: step {step}, {summary['wall_s'] / 60:.1f} min, loss (last 50) {summary['final_loss']:.5f}")
    log.close()
    cleanup_distributed()
    return summary


@torch.no_grad()
def rollout_state(net, cond: torch.Tensor, z_T: torch.Tensor, schedule: DDIMSchedule,
                  g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, t) of a random step of `schedule` as the model's own deterministic DDIM rollout from z_T reaches
    it (what the sampler feeds the denoiser there), without a graph. t: (B,) long."""
    index = int(torch.randint(schedule.num_inference_steps, (1,), generator=g))
    denoiser = EpsilonDenoiser(net, net.config.prediction, schedule.alphas_cumprod)
    x = z_T
    for i in range(index):
        t = torch.full((x.shape[0],), float(schedule.timesteps[i]), device=x.device)
        x, _ = schedule.step(x, denoiser(torch.cat([cond, x], dim=1), t).float(), i)
    return x, torch.full((x.shape[0],), schedule.timesteps[index], dtype=torch.long, device=x.device)


@torch.no_grad()
def log_samples(log: RunLogger, step: int, component: str, net, ae, fixed: dict, schedule, p: dict, seed: int):
    """TensorBoard grid: condition / sample / target (decoded), or input / reconstruction for the autoencoder."""
    g = torch.Generator().manual_seed(seed)
    if component == "autoencoder":
        images = fixed["clean"]
        noise = torch.randn(net.encoder.noise_shape(images), generator=g).to(images.device)
        log.image(step, "samples/input_recon", image_grid([images, net.decode(net.encode(images, noise=noise))]))
        return
    sample_schedule = schedule.with_steps(int(p["sample_steps"]))
    z_T = torch.randn(fixed["cond"].shape, generator=g).to(fixed["cond"].device)
    sample = ddim_sample(EpsilonDenoiser(net, net.config.prediction, schedule.alphas_cumprod), fixed["cond"], z_T,
                         sample_schedule)
    target = fixed["clean"] if component == "ikr" else fixed["ir"]
    rows = [ae.decode_diffusion(z) for z in (fixed["cond"], sample, target)]
    log.image(step, "samples/cond_sample_target", image_grid(rows))


if __name__ == "__main__":
    main()
