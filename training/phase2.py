"""Phase 2 (the paper's Algorithm 1): train the fusion network F and its segmentation head S.

    python -m training.phase2 --config training/configs/cpu_smoke.yaml
    torchrun --nproc_per_node 8 -m training.phase2 --config training/configs/gpu_20min.yaml

Ψ (IKR), Φ (CKG) and the autoencoder are frozen. For every batch:
  1. one shared start z_T for the three streams and a random segmentation state s_T;
  2. a random stop step i among the DDIM steps;
  3. steps 0 .. i-1 of the fused sampler run under torch.no_grad() (no graph);
  4. at step i, F and S run WITH gradients; the three clean-latent estimates
     (fused, IKR, CKG) are decoded by the frozen decoder;
  5. loss = visual_loss(fused, ikr, ckg) + seg_weight * segmentation_loss(S logits, weak masks).
SGD (lr 1e-3, momentum 0.9, weight decay 1e-4) with StepLR, as in the reference.
One stop step per batch (all images of a batch share t, so each network runs once per step).
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from magicfuse_core.checkpoint import load_state_dict_strict
from magicfuse_core.denoiser import EpsilonDenoiser
from magicfuse_core.losses import MFNET_CLASS_WEIGHTS, segmentation_loss, visual_loss
from magicfuse_core.models.fusion import DEFAULT_RADIATION_MAP, upsample_logits
from magicfuse_core.palette import DEFAULT_TAU, DEFAULT_THERMAL_CLASSES, class_ids, colorize
from magicfuse_core.sampler import StreamState, fused_step
from magicfuse_core.schedule import DDIMSchedule
from training.builders import build_autoencoder, build_fusion, build_unet, sampling_schedule
from training.checkpoints import load_trained_module, resume_if_any, save_checkpoint
from training.config import DATA_DEFAULTS, RUN_DEFAULTS, load_config, repo_path, with_defaults
from training.data import encode, image_batches, make_dataset, resize_images, resize_mask
from training.distributed import autocast, cleanup_distributed, setup_distributed
from training.ema import EMA
from training.latent_cache import get_latent_cache, object_crop_prob
from training.optim import grad_norm_
from training.rng import step_generator
from training.run_log import RunLogger, Throughput, image_grid


# ---- defaults: every phase2 setting a config may leave out, and its value then (batch_size, lr, max_steps,
# log_every and ckpt_every are required).
PHASE2_DEFAULTS = {
    "ikr_checkpoint": None,        # Ψ / Φ: a phase-1 last.pt or an exported *.safetensors; None: random (plumbing)
    "ckg_checkpoint": None,
    "init_fusion": None,           # fine-tune a trained F/S (a last.pt or an exported fusion.safetensors)
    "init_weight": None,           # start F from w = this everywhere (1: the IKR stream)
    "sampling_steps": 25,          # DDIM steps of the rollouts, recorded in the exported model
    "sampling_timesteps": None,    # or their timesteps, listed (e.g. [800, 400]; sampling_steps then follows)
    "tau": DEFAULT_TAU,
    "radiation_map": DEFAULT_RADIATION_MAP,  # "hard" (the paper's argmax) | "soft" (S's thermal probability)
    "magimg_tone": "own",          # decode the fused image alone ("own") or in the IKR image's tone ("ikr")
    "thermal_classes": DEFAULT_THERMAL_CLASSES,
    "optimizer": "sgd",            # the paper's; or adamw
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "lr_step": 10,                 # StepLR(lr_step, lr_gamma), in optimizer steps
    "lr_gamma": 0.5,
    "seg_lr_scale": 1.0,           # the segmentation head's lr factor
    "weight_lr_scale": 1.0,        # the weight head's lr factor; 0 freezes it
    "grad_clip": None,             # per path: the weight head, and the trunk + S
    "ema_decay": 0.0,
    "seg_weight": 1.0,
    "seg_class_weights": "mfnet",  # the reference's per-class weights (unlabelled 0.4, car 0.8, ...) or "uniform"
    "visual_weight": 1.0,          # 0: no decoding and no visual loss (retrain S alone: no decoder pass at all)
    "anchor_weight": 0.0,          # > 0: pull F's w towards the anchor's w on the same inputs (S learns, MagImg stays)
    "anchor_fusion": None,         # the anchor: a trained F of any size (default: init_fusion)
    "latent_crop": "data",         # "data": data.latent_crop
    "time_budget_min": 0,          # 0: no time budget
    "sample_every": 0,             # 0: no sample grids
}


def seg_class_weights(setting) -> tuple[float, ...]:
    """phase2.seg_class_weights: "mfnet" (the reference's), "uniform", or one weight per class.
    With the reference's weights an unsure pixel is cheaper to call car (0.8) than unlabelled (0.4),
    and the weak masks are mostly unlabelled: S then paints cars on roads and walls."""
    k = len(MFNET_CLASS_WEIGHTS)
    if setting == "mfnet":
        return MFNET_CLASS_WEIGHTS
    if setting == "uniform":
        return (1.0,) * k
    if isinstance(setting, (list, tuple)) and len(setting) == k and all(
            isinstance(v, (int, float)) and v > 0 for v in setting):
        return tuple(float(v) for v in setting)
    raise ValueError(f"phase2.seg_class_weights must be mfnet, uniform or {k} positive numbers, got {setting!r}")


def frozen(denoiser):
    """A frozen denoiser as a callable that never builds a graph, even if its parameters were left
    trainable: in Algorithm 1 only F and S learn."""
    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return denoiser(x, t)
    return call


def algorithm1_loss(fusion, ikr, ckg, ae, cond: torch.Tensor, mask: torch.Tensor, schedule: DDIMSchedule,
                    stop_index: int, g: torch.Generator, *, tau: float = DEFAULT_TAU,
                    thermal_classes=DEFAULT_THERMAL_CLASSES, radiation_map: str = DEFAULT_RADIATION_MAP,
                    magimg_tone: str = "own", seg_weight: float = 1.0, seg_class_weights=MFNET_CLASS_WEIGHTS,
                    fusion_no_grad=None, visual_weight: float = 1.0, anchor=None,
                    anchor_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The phase-2 loss of one batch (the paper's Algorithm 1).

    ikr, ckg: the frozen denoisers as the sampler calls them, `(x, t) -> eps`.
    cond: (B, 8, h, w) condition latent in [-1, 1]; mask: (B, 4h, 4w) class ids (255 = ignore).
    The rollout is `fused_step`, the step inference samples with: steps 0 .. stop_index - 1
    run without a graph, `fusion` runs with gradients at `stop_index` only; `fusion_no_grad`
    (default: the same net, e.g. the module inside DDP) runs the steps before it. Returns
    (loss, details) where details holds the loss parts, the stream state x_t at the stop
    step and the decoded images (None with visual_weight 0: nothing is decoded).
    anchor: a frozen FusionNet whose weight w on the same inputs the trained one is pulled to
    (anchor_weight * MSE): w depends only on F's trunk, so S can learn while MagImg stays put.
    """
    fusion_no_grad = fusion_no_grad or fusion
    b = cond.shape[0]
    z_T = torch.randn(cond.shape, generator=g).to(cond.device)
    seg_T = torch.randn((b, fusion_no_grad.config.num_classes, *cond.shape[-2:]), generator=g).to(cond.device)
    state = StreamState.start(z_T, seg_T)
    ikr, ckg = frozen(ikr), frozen(ckg)
    with torch.no_grad():  # steps before the stop step: no graph at all
        for i in range(stop_index):
            state = fused_step(ikr, ckg, fusion_no_grad, cond, state, schedule, i, tau=tau,
                               thermal_classes=thermal_classes, radiation_map=radiation_map).next
    # The stop step: F and S with gradients (the frozen denoisers still build no graph).
    step = fused_step(ikr, ckg, fusion, cond, state, schedule, stop_index, tau=tau, thermal_classes=thermal_classes,
                      radiation_map=radiation_map)
    seg_next = step.next.seg_state
    seg = segmentation_loss(upsample_logits(seg_next.float()), mask, class_weights=seg_class_weights)
    loss = seg_weight * seg
    details = {"seg": seg.detach(), "x_fused": state.x_fused, "x_ikr": state.x_ikr, "x_ckg": state.x_ckg,
               "stop_index": stop_index, "images": None, "seg_logits": seg_next.detach(), "w_r": step.w_r.detach()}
    if visual_weight:
        with torch.no_grad():
            ikr_image, ckg_image = ae.decode_diffusion(torch.cat([step.z0_ikr, step.z0_ckg])).float().chunk(2)
        # the frozen decoder passes gradients to z0_fused; F learns with the decoding inference uses
        style = ae.from_diffusion(step.z0_ikr) if magimg_tone == "ikr" else None
        fused_image = ae.decoder(ae.from_diffusion(step.z0_fused), style_latent=style).float()
        vis_total, parts = visual_loss(fused_image, ikr_image, ckg_image)
        loss = loss + visual_weight * vis_total
        details.update({"visual": vis_total.detach(), **{k: v.detach() for k, v in parts.items()},
                        "images": (fused_image.detach(), ikr_image, ckg_image)})
    if anchor is not None and anchor_weight:
        t = torch.full((b,), float(schedule.timesteps[stop_index]), device=cond.device)
        with torch.no_grad():  # the anchor's w for the very inputs the trained F saw at the stop step
            w_anchor, _ = anchor(torch.cat([step.z0_ikr, step.z0_ckg, state.x_fused], dim=1), step.eps_ikr,
                                 step.eps_ckg, t, state.seg_state)
        drift = torch.nn.functional.mse_loss(step.w.float(), w_anchor.float())
        loss = loss + anchor_weight * drift
        details["anchor"] = drift.detach()
    return loss, details


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="MagicFuse phase 2: fusion network F + segmentation head S")
    parser.add_argument("--config", required=True, help="training/configs/*.yaml")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    parser.add_argument("--fresh", action="store_true", help="ignore RUN_DIR/fusion/last.pt and start over")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return parser.parse_args(argv)


def frozen_denoiser(checkpoint: str | None, spec: dict, seed: int, schedule: DDIMSchedule) -> EpsilonDenoiser:
    """Ψ or Φ from its phase-1 checkpoint (EMA weights), as the sampler calls it (`(x, t) -> eps` with
    the training schedule); random weights of `spec` without one (plumbing only)."""
    if checkpoint:
        net = load_trained_module(repo_path(checkpoint))
    else:
        torch.manual_seed(seed)
        net = build_unet(spec)
    net.eval().requires_grad_(False)
    return EpsilonDenoiser(net, net.config.prediction, schedule.alphas_cumprod)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    run, data = with_defaults(cfg, RUN_DEFAULTS), with_defaults(cfg["data"], DATA_DEFAULTS)
    p = with_defaults(cfg["phase2"], PHASE2_DEFAULTS)
    p["lr"] = float(p["lr"])  # YAML reads `--set phase2.lr=1e-3` as a string (1.0e-3 is a float)
    seed = int(run["seed"])
    if run["threads"]:  # small convs on a shared CPU run faster on fewer threads
        torch.set_num_threads(int(run["threads"]))
    ctx = setup_distributed(run["device"], run["ddp_timeout_min"])
    device = ctx.device
    run_dir = repo_path(cfg["run_dir"]) / "fusion"
    log = RunLogger(run_dir, ctx, tensorboard=run["tensorboard"])
    log.info(f"phase 2: world size {ctx.world_size}, device {device}, config {args.config}")
    tau = float(p["tau"])
    class_weights = seg_class_weights(p["seg_class_weights"])
    visual_weight, anchor_weight = float(p["visual_weight"]), float(p["anchor_weight"])
    if visual_weight < 0 or anchor_weight < 0:
        raise ValueError(f"phase2.visual_weight and anchor_weight must be >= 0, got {visual_weight}, {anchor_weight}")
    anchor_path = p["anchor_fusion"] or p["init_fusion"]
    if anchor_weight and not anchor_path:
        raise ValueError("phase2.anchor_weight pulls F's weight towards a trained F's: set anchor_fusion or init_fusion")
    thermal_classes = class_ids(p["thermal_classes"])  # names or MFNet ids

    # ---- frozen networks, data -------------------------------------------------
    ae = build_autoencoder(cfg["autoencoder"]).to(device)
    schedule = sampling_schedule(p)
    ikr = frozen_denoiser(p["ikr_checkpoint"], cfg["ikr"]["unet"], seed + 1, schedule).to(device)
    ckg = frozen_denoiser(p["ckg_checkpoint"], cfg["ckg"]["unet"], seed + 2, schedule).to(device)
    cache = None
    if data["latent_cache"]:
        cache = get_latent_cache(cfg, ae, ctx, log.info)
    else:
        dataset = make_dataset(cfg["data"], seed)
        sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=seed, drop_last=True)
        loader = DataLoader(dataset, batch_size=p["batch_size"], sampler=sampler, drop_last=True,
                            num_workers=int(data["num_workers"]), persistent_workers=False)
    latent_crop = data["latent_crop"] if p["latent_crop"] == "data" else p["latent_crop"]
    focus = object_crop_prob(p, cache)  # crops centred on labelled objects (people: ~2 % of the pixels)

    # ---- model, optimizer ------------------------------------------------------
    torch.manual_seed(seed)
    fusion = build_fusion(cfg["fusion"]["net"]).to(device).train()
    anchor = None
    if p["init_fusion"]:
        # Fine-tune a trained F/S (a phase-2 checkpoint or an exported fusion.safetensors), e.g. with new
        # masks, instead of starting over; a resumed run's own checkpoint still takes precedence below.
        trained = load_trained_module(repo_path(p["init_fusion"]))
        load_state_dict_strict(fusion, trained.state_dict(), f"phase2.init_fusion {p['init_fusion']}")
    elif p["init_weight"] is not None:
        # Start the fused stream from w = init_weight everywhere (1: the visible/IKR stream) instead of
        # w ~ 0 (the CKG stream): F then only has to learn where to depart from it.
        with torch.no_grad():
            fusion.estimate[-1].weight.mul_(0.1)
            fusion.estimate[-1].bias.fill_(float(p["init_weight"]))
    if anchor_weight:  # a frozen F whose w the trained one keeps: S (and a new trunk) learn, MagImg stays put
        anchor = load_trained_module(repo_path(anchor_path)).to(device).eval().requires_grad_(False)
        log.info(f"anchoring F's weight to {anchor_path} (anchor_weight {anchor_weight:g})")
    log.info(f"FusionNet: {sum(q.numel() for q in fusion.parameters()) / 1e6:.2f} M parameters, "
             f"config {fusion.config.to_dict()}")
    # seg_lr_scale: the segmentation head's own learning-rate factor (1 = one lr for F and S, as the paper).
    seg_lr_scale = float(p["seg_lr_scale"])
    if seg_lr_scale <= 0:
        raise ValueError(f"phase2.seg_lr_scale must be > 0, got {seg_lr_scale}")
    # weight_lr_scale: the weight head's factor; 0 freezes it (train S on top of a trained F's weights).
    weight_lr_scale = float(p["weight_lr_scale"])
    if weight_lr_scale < 0:
        raise ValueError(f"phase2.weight_lr_scale must be >= 0, got {weight_lr_scale}")
    # Gradient clipping is per path: the weight head (F's w) and the trunk + segmentation head. The
    # segmentation loss's gradients are 10-40x the weight head's visual-loss gradients, so one global norm
    # clipped at grad_clip scaled the weight head's updates to almost nothing (w stayed 0.99-1.0).
    weight_params = list(fusion.estimate.parameters())
    seg_params = list(fusion.seg_head().parameters())
    own = {id(q) for q in weight_params + seg_params}
    trunk_params = [q for q in fusion.parameters() if id(q) not in own]
    groups = [{"params": weight_params, "lr": p["lr"] * weight_lr_scale}, {"params": trunk_params, "lr": p["lr"]},
              {"params": seg_params, "lr": p["lr"] * seg_lr_scale}]
    # SGD is the paper's; AdamW scales each parameter's step by its own gradient history, which a short
    # budget needs: the weight head's visual-loss gradients are ~0.1-0.5, too small for SGD at lr 1e-3.
    kind = p["optimizer"]
    if kind == "sgd":
        optimizer = torch.optim.SGD(groups, lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"])
    elif kind == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=p["lr"], weight_decay=p["weight_decay"])
    else:
        raise ValueError(f"phase2.optimizer must be sgd (the paper's) or adamw, got {kind!r}")
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(p["lr_step"]), gamma=float(p["lr_gamma"]))
    ema = EMA(fusion, p["ema_decay"])
    # wall_before: wall time of the runs this one resumes
    step, wall_before = resume_if_any(run_dir, args.fresh, log, ctx=ctx, seed=seed, model=fusion, optimizer=optimizer,
                                      scheduler=scheduler, ema=ema)
    ddp_fusion = DistributedDataParallel(fusion) if ctx.enabled else fusion
    if cache is None:
        batches = image_batches(loader, sampler, dataset, step)

    def next_batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if cache is not None:
            batch = cache.batch(p["batch_size"], latent_crop, g, focus=focus)
            return batch["cond"].to(device), batch["mask"].to(device)
        batch = next(batches)
        degraded = resize_images(batch["degraded"].to(device), data["scale"])
        return encode(ae, degraded, g), resize_mask(batch["mask"].to(device), degraded.shape[-2:])

    # ---- loop -------------------------------------------------------------------
    max_steps = int(p["max_steps"])
    budget_s = float(p["time_budget_min"] or 0) * 60
    t_start, meter, losses = time.time(), Throughput(), []
    bar = tqdm(total=max_steps, initial=step, disable=args.no_progress or not ctx.is_main, dynamic_ncols=True,
               desc="phase2 fusion")
    while step < max_steps:
        g = step_generator(seed, step, ctx.rank)
        cond, mask = next_batch(g)
        stop_index = int(torch.randint(schedule.num_inference_steps, (1,), generator=step_generator(seed, step, 0)))
        with autocast(device):
            loss, details = algorithm1_loss(ddp_fusion, ikr, ckg, ae, cond, mask, schedule, stop_index, g, tau=tau,
                                            thermal_classes=thermal_classes, radiation_map=p["radiation_map"],
                                            magimg_tone=p["magimg_tone"], seg_class_weights=class_weights,
                                            seg_weight=float(p["seg_weight"]), fusion_no_grad=fusion,
                                            visual_weight=visual_weight, anchor=anchor, anchor_weight=anchor_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm_w = grad_norm_(weight_params, p["grad_clip"])
        gnorm = grad_norm_(trunk_params + seg_params, p["grad_clip"])
        optimizer.step()
        scheduler.step()
        ema.update(fusion)
        step += 1
        meter.add(cond.shape[0])
        losses.append(float(loss.detach()))
        bar.update(1)

        if step % p["log_every"] == 0 or step == max_steps:
            window = losses[-p["log_every"]:]
            parts = {k: float(details[k]) for k in ("visual", "seg", "anchor") if k in details}
            scalars = {"loss": sum(window) / len(window), **parts, "grad_norm": gnorm, "grad_norm_weight_head": gnorm_w,
                       "w_r_mean": float(details["w_r"].mean()),
                       "lr": scheduler.get_last_lr()[1],  # the trunk's: the weight head's may be scaled
                       **meter.rates()}
            log.scalars(step, scalars)
            bar.set_postfix(loss=f"{scalars['loss']:.4f}", it_s=f"{scalars['steps_per_s']:.2f}")
            log.info(f"step {step} loss {scalars['loss']:.4f} ("
                     + " ".join(f"{k} {v:.4f}" for k, v in parts.items())
                     + f", stop step {stop_index}) grad {gnorm:.3f} (w head {gnorm_w:.3f}) "
                     f"w_r {scalars['w_r_mean']:.3f} lr {scalars['lr']:.2e} "
                     f"{scalars['steps_per_s']:.2f} it/s")
        if ctx.is_main and p["sample_every"] and step % p["sample_every"] == 0 and details["images"] is not None:
            fused, ikr_img, ckg_img = (x[:4] for x in details["images"])
            seg = torch.from_numpy(colorize(upsample_logits(details["seg_logits"][:4]).argmax(1).cpu().numpy()))
            seg = seg.permute(0, 3, 1, 2).float() / 255.0
            log.image(step, "samples/fused_ikr_ckg_seg", image_grid([fused, ikr_img, ckg_img, seg]))
        out_of_time = budget_s and time.time() - t_start > budget_s
        if ctx.enabled:
            flag = torch.tensor([float(bool(out_of_time))], device=device if device.type == "cuda" else "cpu")
            torch.distributed.all_reduce(flag)
            out_of_time = flag.item() > 0
        if step % p["ckpt_every"] == 0 or step == max_steps or out_of_time:
            save_checkpoint(run_dir / "last.pt", ctx=ctx, step=step, model=fusion, optimizer=optimizer,
                            scheduler=scheduler, ema=ema, config=cfg,
                            extra={"component": "fusion", "wall_s": wall_before + time.time() - t_start})
        if out_of_time:
            log.info(f"time budget of {budget_s / 60:.1f} min reached at step {step}")
            break
    bar.close()
    summary = {"component": "fusion", "step": step, "wall_s": time.time() - t_start,
               "final_loss": sum(losses[-20:]) / max(len(losses[-20:]), 1), "losses": losses}
    log.info(f"done: step {step}, {summary['wall_s'] / 60:.1f} min, loss (last 20) {summary['final_loss']:.4f}")
    log.close()
    cleanup_distributed()
    return summary


if __name__ == "__main__":
    main()
