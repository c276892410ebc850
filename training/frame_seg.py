"""Train the frame segmentation head S (fusion seg_head: frame) on degraded training frames.

    python -m training.frame_seg --config training/configs/cpu_demo.yaml --set run_dir=runs/frame_seg \\
        frame_seg.init_fusion=models/demo/fusion.safetensors

S with `seg_head: frame` reads the degraded visible frame once, before the first DDIM step, and its
logits are the segmentation state of every step (the radiation map and the published map). It needs
no denoiser and no decoder: each training frame is degraded `variants` times (seeded like the
phase-1/2 data: variant v is the dataset's epoch v), reduced to the head's half resolution and kept in
a frame cache; S then trains as a plain segmentation net on random crops of it, with flips and an
exposure jitter (cameras differ in gain). F's trunk and weight head are copied from `init_fusion`
and stay frozen, so MagImg changes only where the radiation map sends pixels to the CKG stream.

With `ir_readout` > 0 the head's last features must also carry the registered infrared frame: a 1x1
readout (training only, never exported) predicts the frame's relative warmth and its L1 error joins the
loss. Why: the person masks label 0.7 % of the pixels, the infrared labels every pixel with what makes a
person a thermal target.

As in training/seg_head.py, `holdout` training frames never train S (`holdout_frames`, spread over
day and night by default); they score the checkpoints and calibrate the object classes' scores
(`pick_object_shifts`: the highest person IoU with at most `max_outside` of the outside-box pixels
called objects). The run resumes from RUN_DIR/fusion/last.pt; `training.export_model` exports it.
Validation frames are never read.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from magicfuse_core.checkpoint import load_state_dict_strict
from magicfuse_core.data import holdout_frames
from magicfuse_core.evaluation.targets import PERSON_ID, segmentation_scores
from magicfuse_core.losses import segmentation_loss
from magicfuse_core.models.fusion import FusionNet, class_labels, upsample_logits
from magicfuse_core.palette import IGNORE_INDEX
from training.builders import build_fusion
from training.checkpoints import load_checkpoint, load_trained_module, save_checkpoint
from training.config import DATA_DEFAULTS, RUN_DEFAULTS, load_config, repo_path, with_defaults
from training.data import make_dataset, variant_samples
from training.distributed import setup_distributed
from training.ema import EMA
from training.latent_cache import load_cache_file, object_centred_window, save_cache_file
from training.phase2 import seg_class_weights
from training.rng import step_generator
from training.run_log import RunLogger, Throughput
from training.seg_head import mask_counts, pick_object_shifts

FRAME_SEG_DEFAULTS = {
    "init_fusion": None,          # required: the trained F whose trunk and weight head are kept
    "seg_channels": 24,           # FrameSegHead's width: 0.74 M parameters at 24
    "keep_head": False,           # true: start from init_fusion's own frame head (fine-tuning: more steps, your frames)
    "variants": 8,                # seeded degradations per training frame in the frame cache
    "frame_cache": None,          # default: RUN_DIR/frames.pt
    "holdout": 30,                # training frames that only score and calibrate (holdout_frames)
    "holdout_spacing": "spread",  # day and night: MSRS lists its night frames in blocks
    "max_outside": 0.05,          # calibration: at most this share of outside-box pixels labelled as objects
    "crop": [128, 192],           # at the head's half resolution (256x384 frame pixels)
    "person_crop_prob": 0.5,      # crops centred on a person pixel: people are 0.7 % of MSRS's pixels
    "exposure_jitter": [0.7, 1.4],
    "zoom": [1.0, 1.0],           # crops resized by a factor in this range (log-uniform): people nearer, farther
    "paste_prob": 0.0,            # share of crops that get another frame's person pixels pasted in (copy-paste)
    "ir_readout": 0.0,            # weight of the infrared readout's loss (0: none); dense thermal supervision
    "ema": 0.0,                   # decay of an average of the head's weights that is scored and kept (0: none)
    "teachers": [],               # trained frame heads (last.pt or fusion.safetensors) whose averaged scores S learns
    "distill": 0.0,               # weight of that loss (KL to the teachers' mean log-probabilities; 0: none)
    "lr": 2.0e-3,
    "weight_decay": 1.0e-4,
    "class_weights": [1, 2, 4, 3, 1, 1, 1, 1, 1],  # unlabelled, car, person, bike, ...; calibration moves it back
    "person_dice": 1.0,           # weight of a soft-IoU (Dice) loss on the person class, the measured target
    "batch_size": 12,
    "max_steps": 4000,
    "time_budget_min": 0,
    "log_every": 100,
    "eval_every": 500,
}


class FrameCache:
    """Degraded training frames at the head's half resolution and their full-resolution weak masks.

    frames: (N, V, 3, H/2, W/2) uint8, V degradations per frame; masks: (N, H, W) uint8 MFNet ids
    (IR-silhouette people, filled car/bike boxes, 0 outside every box, ignore on a person box's colder rest);
    ir: (N, 1, H/2, W/2) uint8, the registered infrared frame at the frames' resolution, or None.
    """

    def __init__(self, frames: torch.Tensor, masks: torch.Tensor, meta: dict, ir: torch.Tensor | None = None):
        self.frames, self.masks, self.meta, self.ir = frames, masks, meta, ir

    @classmethod
    def build(cls, dataset, variants: int, log=print, progress: bool = True, workers: int = 0) -> "FrameCache":
        """Degrade every frame `variants` times (`variant_samples`: `workers` processes share the work)."""
        n = len(dataset)
        halves: list[list[torch.Tensor]] = [[] for _ in range(n)]
        masks, ir = [None] * n, [None] * n
        bar = tqdm(total=n * variants, desc="frame cache", dynamic_ncols=True, disable=not progress)
        for v in range(variants):
            for i, sample in variant_samples(dataset, v, workers):
                half = F.avg_pool2d(sample["degraded"][None], 2)[0]  # what FrameSegHead.forward pools to
                halves[i].append((half * 255).round().clamp(0, 255).to(torch.uint8))
                if v == 0:  # the mask and the IR are the same for every degradation
                    masks[i] = sample["mask"].to(torch.uint8)
                    grey_ir = F.avg_pool2d(sample["ir"][:1][None], 2)[0]
                    ir[i] = (grey_ir * 255).round().clamp(0, 255).to(torch.uint8)
                bar.update(1)
        bar.close()
        log(f"frame cache: {n} frames x {variants} degradations")
        return cls(torch.stack([torch.stack(h) for h in halves]), torch.stack(masks),
                   {"names": list(dataset.names), "variants": variants, "seed": dataset.seed, "ir": True},
                   torch.stack(ir))

    def save(self, path: Path) -> None:
        save_cache_file(path, {"frames": self.frames, "masks": self.masks, "meta": self.meta, "ir": self.ir})

    @classmethod
    def load(cls, path: Path) -> "FrameCache":
        return cls(*load_cache_file(path, "frame cache", ("frames", "masks", "meta"), ("ir",)).values())

    def window(self, i: int, v: int, top: int, left: int, height: int, width: int) -> torch.Tensor:
        """Degradation v of frame i in a window of the half-resolution grid, float in [0, 1]: 3 planes, and
        a 4th, the infrared, when the cache holds it (crops, zooms, pastes and flips move both alike)."""
        planes = self.frames[i, v, :, top:top + height, left:left + width]
        if self.ir is not None:
            planes = torch.cat([planes, self.ir[i, :, top:top + height, left:left + width]])
        return planes.float() / 255


def half_res_logits(net: FusionNet, half: torch.Tensor) -> torch.Tensor:
    """FrameSegHead on frames already at its half resolution, uint8 or float in [0, 1]: the head's own
    forward without its pooling (the cache stores the pooled frames)."""
    head = net.frame_seg
    x = half.float() / 255 if half.dtype == torch.uint8 else half
    return head.segment_half(x)


def crop_batch(cache: FrameCache, samples: list[int], batch_size: int, crop: tuple[int, int],
               jitter: tuple[float, float], person_prob: float, g: torch.Generator,
               zoom: tuple[float, float] = (1.0, 1.0), paste_prob: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops (+ flips, exposure jitter, zoom) of random degradations of random frames among `samples`,
    centred on a person with probability `person_prob`: ((B, 3, ch, cw) float in [0, 1] at half
    resolution, with the infrared as a 4th plane when the cache holds it; (B, ch, cw) class ids at half
    resolution). A zoom z from `zoom` (log-uniform, only drawn when the range is not (1, 1)) takes a
    window of crop / z and resizes it to the crop: the same person nearer or farther away. With probability `paste_prob` the person pixels around a person of another
    training frame are pasted into the crop (copy-paste: people are 0.7 % of MSRS's pixels)."""
    _, variants, _, h, w = cache.frames.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    x, target = [], []
    for _ in range(batch_size):
        i = samples[int(torch.randint(len(samples), (1,), generator=g))]
        v = int(torch.randint(variants, (1,), generator=g))
        sh, sw = ch, cw
        if zoom != (1.0, 1.0):
            z = zoom[0] * (zoom[1] / zoom[0]) ** float(torch.rand(1, generator=g))
            sh, sw = min(max(round(ch / z), 1), h), min(max(round(cw / z), 1), w)
        top, left = int(torch.randint(h - sh + 1, (1,), generator=g)), int(torch.randint(w - sw + 1, (1,), generator=g))
        if float(torch.rand(1, generator=g)) < person_prob:
            window = object_centred_window(cache.masks[i], (sh, sw), (h, w), g, scale=2, ids=(PERSON_ID,))
            if window is not None:
                top, left = window
        frame = cache.window(i, v, top, left, sh, sw)
        if (sh, sw) == (ch, cw):  # nearest reduction of the full-resolution mask onto the half-resolution grid
            mask = cache.masks[i, 2 * top:2 * (top + ch):2, 2 * left:2 * (left + cw):2].long()
        else:
            frame = F.interpolate(frame[None], size=(ch, cw), mode="bilinear", align_corners=False,
                                  antialias=sh > ch)[0]
            window_mask = cache.masks[i, 2 * top:2 * (top + sh), 2 * left:2 * (left + sw)]
            mask = F.interpolate(window_mask[None, None].float(), size=(ch, cw), mode="nearest-exact")[0, 0].long()
        if paste_prob and float(torch.rand(1, generator=g)) < paste_prob:
            frame, mask = paste_person(cache, samples, frame, mask, g)
        gain = jitter[0] + (jitter[1] - jitter[0]) * float(torch.rand(1, generator=g))
        frame = torch.cat([(frame[:3] * gain).clamp(0, 1), frame[3:]])  # the camera's gain, not the IR's
        if float(torch.rand(1, generator=g)) < 0.5:
            frame, mask = frame.flip(-1), mask.flip(-1)
        x.append(frame)
        target.append(mask)
    return torch.stack(x), torch.stack(target)


def paste_person(cache: FrameCache, samples: list[int], frame: torch.Tensor, mask: torch.Tensor,
                 g: torch.Generator, window: tuple[int, int] = (64, 40)) -> tuple[torch.Tensor, torch.Tensor]:
    """The crop (frame (3, ch, cw) in [0, 1], mask (ch, cw)) with the person pixels of a window around a
    random person pixel of a random degradation of a random frame among `samples` pasted at a random place.
    Unchanged when the drawn frame has no person."""
    _, variants, _, h, w = cache.frames.shape
    donor = samples[int(torch.randint(len(samples), (1,), generator=g))]
    v = int(torch.randint(variants, (1,), generator=g))
    wh, ww = min(window[0], h, mask.shape[0]), min(window[1], w, mask.shape[1])
    place = object_centred_window(cache.masks[donor], (wh, ww), (h, w), g, scale=2, ids=(PERSON_ID,))
    if place is None:
        return frame, mask
    top, left = place
    person = cache.masks[donor, 2 * top:2 * (top + wh):2, 2 * left:2 * (left + ww):2] == PERSON_ID
    pixels = cache.window(donor, v, top, left, wh, ww)
    y = int(torch.randint(mask.shape[0] - wh + 1, (1,), generator=g))
    x = int(torch.randint(mask.shape[1] - ww + 1, (1,), generator=g))
    frame, mask = frame.clone(), mask.clone()
    frame[:, y:y + wh, x:x + ww] = torch.where(person, pixels, frame[:, y:y + wh, x:x + ww])
    mask[y:y + wh, x:x + ww][person] = PERSON_ID
    return frame, mask


def person_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of the person class over the batch's labelled pixels: a differentiable stand-in for the
    person IoU that the targets measure (cross-entropy alone lets the few person pixels drown)."""
    prob = torch.softmax(logits, dim=1)[:, PERSON_ID]
    labelled = (target != IGNORE_INDEX).float()
    person = (target == PERSON_ID).float()
    inter = (prob * person * labelled).sum()
    return 1 - (2 * inter + 1) / ((prob * labelled).sum() + person.sum() + 1)


def infrared_readout_loss(predicted: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """L1 between the readout (B, 1, h, w) and the infrared (B, 1, 2h, 2w) in [0, 1], each less its own
    mean per crop: what counts is which pixels are warmer than the rest (IR cameras differ in offset)."""
    target = F.avg_pool2d(ir, 2)
    centred = lambda t: t - t.mean(dim=(-2, -1), keepdim=True)  # noqa: E731
    return (centred(predicted) - centred(target)).abs().mean()


def distillation_loss(logits: torch.Tensor, teacher_logits: list[torch.Tensor]) -> torch.Tensor:
    """Per-pixel KL from the teachers' averaged distribution (the mean of their log-probabilities, renormalised:
    how an average of heads was scored, docs/TRAINING.md) to the student's."""
    target = torch.stack([t.float().log_softmax(1) for t in teacher_logits]).mean(0).log_softmax(1)
    return (target.exp() * (target - logits.float().log_softmax(1))).sum(1).mean()


@torch.no_grad()
def holdout_logits(net: FusionNet, cache: FrameCache, frames: list[int]) -> torch.Tensor:
    """(len(frames), V, K, h, w): the head's scores for every cached degradation of the held-out frames, less
    its output bias (calibration moves only that bias, so the head runs once for all the shifts it tries)."""
    head = net.frame_seg
    device = head.out.bias.device
    logits = [half_res_logits(net, cache.frames[i].to(device)) for i in frames]  # the V degradations as one batch
    return torch.stack(logits) - head.out.bias[:, None, None]


@torch.no_grad()
def holdout_scores(net: FusionNet, cache: FrameCache, frames: list[int],
                   unbiased_logits: torch.Tensor | None = None) -> dict[str, float]:
    """Whole held-out frames scored at full resolution as the model card does, over every cached degradation:
    one degradation per frame left the pick to chance (run D: held-out person IoU 0.233 on the first, 0.188
    on all 8). `unbiased_logits` from `holdout_logits` skip the head; the head's present bias is added."""
    if unbiased_logits is None:
        unbiased_logits = holdout_logits(net, cache, frames)
    bias = net.frame_seg.out.bias.detach()[:, None, None]
    total: dict[str, int] = {}
    for n, i in enumerate(frames):
        labels = class_labels(upsample_logits(unbiased_logits[n] + bias))
        for k, v in mask_counts(labels, cache.masks[i].to(labels.device).long().expand_as(labels)).items():
            total[k] = total.get(k, 0) + v
    return segmentation_scores(total)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="ignore RUN_DIR/fusion/last.pt and start again")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    run, data = with_defaults(cfg, RUN_DEFAULTS), with_defaults(cfg["data"], DATA_DEFAULTS)
    p = with_defaults(cfg.get("frame_seg") or {}, FRAME_SEG_DEFAULTS)
    if not p["init_fusion"]:
        raise ValueError("frame_seg.init_fusion: name the trained F (a phase-2 last.pt or a fusion.safetensors) "
                         "whose weight head the new S goes with")
    try:
        zoom = tuple(float(z) for z in p["zoom"])
    except (TypeError, ValueError):
        zoom = ()
    if len(zoom) != 2 or not 0 < zoom[0] <= zoom[1]:
        raise ValueError(f"frame_seg.zoom: a range [low, high] with 0 < low <= high, got {p['zoom']!r}")
    try:
        paste_prob = float(p["paste_prob"])
    except (TypeError, ValueError):
        paste_prob = -1.0
    if not 0.0 <= paste_prob <= 1.0:
        raise ValueError(f"frame_seg.paste_prob: a probability in [0, 1], got {p['paste_prob']!r}")
    try:
        ir_weight = float(p["ir_readout"])
    except (TypeError, ValueError):
        ir_weight = -1.0
    if not 0.0 <= ir_weight < float("inf"):
        raise ValueError(f"frame_seg.ir_readout: a loss weight >= 0, got {p['ir_readout']!r}")
    try:
        ema_decay = float(p["ema"] or 0)
    except (TypeError, ValueError):
        ema_decay = -1.0
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"frame_seg.ema: a decay in [0, 1) (0: no average), got {p['ema']!r}")
    if data["scale"] not in (None, 1, 1.0):
        # the head would learn people at the training frames' size and meet them at the export's
        # inference_size, data.scale times smaller
        raise ValueError(f"frame_seg trains S on the training frames at their own size; data.scale is "
                         f"{data['scale']!r}: set data.scale=1 (and export.inference_size: null) for a frame head")
    try:
        distill = float(p["distill"] or 0)
    except (TypeError, ValueError):
        distill = -1.0
    if not 0.0 <= distill < float("inf") or (distill > 0) != bool(p["teachers"]):
        raise ValueError(f"frame_seg.distill: a loss weight > 0 with frame_seg.teachers named (0 without), got "
                         f"{p['distill']!r} with teachers {p['teachers']!r}")
    seed = int(run["seed"])
    if run["threads"]:
        torch.set_num_threads(int(run["threads"]))
    ctx = setup_distributed(run["device"])  # one process: a small net (on a GPU when there is one)
    device = ctx.device
    run_root = repo_path(cfg["run_dir"])
    run_dir = run_root / "fusion"
    log = RunLogger(run_dir, ctx, tensorboard=run["tensorboard"])

    # ---- F from init_fusion, with a new frame head ---------------------------------------------
    trained = load_trained_module(repo_path(p["init_fusion"]))
    spec = {"config": {**trained.config.to_dict(), "seg_head": "frame", "seg_channels": int(p["seg_channels"])}}
    torch.manual_seed(seed)  # the new head's initial weights: a run is reproducible from its config
    net = build_fusion(spec)
    kept = {k: v for k, v in trained.state_dict().items() if not k.startswith(("segproj.", "stream_seg.", "frame_seg."))}
    trunk_params = sum(v.numel() for v in kept.values())
    if p["keep_head"]:
        if trained.config.seg_head != "frame" or int(trained.config.seg_channels) != int(p["seg_channels"]):
            raise ValueError(f"frame_seg.keep_head: {p['init_fusion']} has S {trained.config.seg_head!r} of width "
                             f"{trained.config.seg_channels}, not a frame head of width {p['seg_channels']} "
                             "(set seg_channels to its width, or keep_head: false for a new head)")
        kept.update({k: v for k, v in trained.state_dict().items() if k.startswith("frame_seg.")})
    load_state_dict_strict(net, {**net.state_dict(), **kept}, f"frame_seg.init_fusion {p['init_fusion']}")
    net.requires_grad_(False)
    net.frame_seg.requires_grad_(True)
    net.to(device)
    start = "started from its own" if p["keep_head"] else "new"
    log.info(f"S (frame, {start}) on {p['init_fusion']}: {sum(q.numel() for q in net.frame_seg.parameters()) / 1e3:.0f} k "
             f"trainable parameters, F's {trunk_params / 1e3:.0f} k frozen")

    teachers = [load_trained_module(repo_path(t)).to(device) for t in p["teachers"] or []]
    for t, name in zip(teachers, p["teachers"] or []):
        if t.config.seg_head != "frame":
            raise ValueError(f"frame_seg.teachers: {name} has S {t.config.seg_head!r}, not a frame head")
        t.requires_grad_(False)

    # ---- frames ----------------------------------------------------------------------------------
    dataset = make_dataset(data, seed, augment=False)
    n_frames = len(dataset)
    held_out = holdout_frames(n_frames, int(p["holdout"]), p["holdout_spacing"])  # checked before the cache is built
    path = repo_path(p["frame_cache"]) if p["frame_cache"] else run_root / "frames.pt"
    want = {"names": list(dataset.names), "variants": int(p["variants"]), "seed": seed, "ir": True}
    cache = FrameCache.load(path) if path.is_file() else None
    if cache is None or cache.meta != want:
        log.info(f"building frame cache {path}")
        cache = FrameCache.build(dataset, int(p["variants"]), log.info, progress=not args.no_progress,
                                 workers=int(data["num_workers"] or 0))
        cache.save(path)
    train_frames = sorted(set(range(n_frames)) - set(held_out))
    log.info(f"{len(train_frames)} training frames x {cache.meta['variants']} degradations; {len(held_out)} held-out "
             f"frames ({p['holdout_spacing']}) score and calibrate")

    # ---- train -----------------------------------------------------------------------------------
    weights = seg_class_weights(p["class_weights"])
    # the infrared readout trains with the head and is kept in the checkpoint (to resume), never exported
    ir_readout = torch.nn.Conv2d(net.frame_seg.out.in_channels, 1, 1).to(device) if ir_weight else None
    trained_params = list(net.frame_seg.parameters()) + (list(ir_readout.parameters()) if ir_readout else [])
    optimizer = torch.optim.AdamW(trained_params, lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
    max_steps = int(p["max_steps"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max_steps)
    # the held-out person IoU of one run swung by +-0.03 from one checkpoint to the next: an average of the
    # weights is what is scored, calibrated and kept when `ema` is set
    ema = EMA(net, ema_decay, prefix="frame_seg.") if ema_decay else None
    step, wall_before, history, calibrated = 0, 0.0, [], False
    if not args.fresh and (run_dir / "last.pt").is_file():
        earlier = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["extra"]
        if (ir_readout is None) != ("ir_readout" not in earlier):  # before the optimizer's groups disagree
            raise ValueError(f"{run_dir / 'last.pt'} was trained with frame_seg.ir_readout "
                             f"{'> 0' if ir_readout is None else '0'}; set it as the run had it, or use another run_dir")
        state = load_checkpoint(run_dir / "last.pt", ctx=ctx, seed=seed, model=net, optimizer=optimizer,
                                scheduler=scheduler, ema=ema)
        if state["extra"].get("stage") != "frame_seg":
            raise ValueError(f"{run_dir / 'last.pt'} is not a frame_seg run (stage {state['extra'].get('stage')!r}); "
                             "use another run_dir or --fresh")
        step, wall_before = int(state["step"]), float(state["extra"].get("wall_s", 0.0))
        if state["extra"].get("calibrated") and step < max_steps:
            # its learning-rate schedule has ended and its scores are shifted: training on would mix both up
            raise ValueError(f"{run_dir / 'last.pt'} is a finished, calibrated run of {step} steps; to train "
                             f"{max_steps} steps use another run_dir or --fresh")
        history = list(state["extra"].get("history", []))
        if ir_readout is not None:
            ir_readout.load_state_dict(state["extra"]["ir_readout"])
        calibrated = bool(state["extra"].get("calibrated"))  # a finished run started again
        log.info(f"resumed from {run_dir / 'last.pt'} at step {step}")
    budget_s = float(p["time_budget_min"] or 0) * 60
    crop, jitter = tuple(int(c) for c in p["crop"]), tuple(float(j) for j in p["exposure_jitter"])
    meter, losses, rates = Throughput(), [], {"steps_per_s": float("nan")}
    t_start = time.time()
    extra = {"component": "fusion", "stage": "frame_seg", "init_fusion": str(p["init_fusion"])}
    if ir_readout is not None:  # the same tensors, so every checkpoint holds the readout as trained so far
        extra["ir_readout"] = ir_readout.state_dict()
    net.train()
    bar = tqdm(total=max_steps, initial=step, disable=args.no_progress, dynamic_ncols=True, desc="S (frame)")
    while step < max_steps:
        step += 1
        x, target = crop_batch(cache, train_frames, int(p["batch_size"]), crop, jitter, float(p["person_crop_prob"]),
                               step_generator(seed, step, 0), zoom, paste_prob)
        x, target = x.to(device, non_blocking=True), target.to(device, non_blocking=True)
        x, ir = x[:, :3], x[:, 3:]
        features = net.frame_seg.features_half(x)
        logits = net.frame_seg.out(features)
        loss = segmentation_loss(logits, target, class_weights=weights)
        if ir_readout is not None:
            loss = loss + ir_weight * infrared_readout_loss(ir_readout(features), ir)
        if teachers:  # the same crop through every teacher: their average is the soft target
            with torch.no_grad():
                taught = [half_res_logits(t, x) for t in teachers]
            loss = loss + distill * distillation_loss(logits, taught)
        if float(p["person_dice"]):
            up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
            loss = loss + float(p["person_dice"]) * person_dice_loss(up, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(net)
        losses.append(float(loss.detach()))
        meter.add(x.shape[0])
        bar.update(1)
        out_of_time = budget_s and time.time() - t_start > budget_s
        if step % int(p["log_every"]) == 0:
            window = losses[-int(p["log_every"]):]
            rates = meter.rates()
            log.scalars(step, {"loss": sum(window) / len(window), "lr": scheduler.get_last_lr()[0], **rates})
            bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
            if args.no_progress:  # no bar: the log says how far it is and how fast it goes
                log.info(f"step {step}/{max_steps}: loss {sum(window) / len(window):.4f}, "
                         f"{rates['steps_per_s']:.2f} it/s")
        if step % int(p["eval_every"]) == 0 or step == max_steps or out_of_time:
            scored = ema.copy_to(net) if ema is not None else net
            scored.eval()
            scores = holdout_scores(scored, cache, held_out)
            net.train()
            history.append({"step": step, **scores})
            log.info(f"step {step}: held-out person IoU {scores['person_IoU']:.3f} (P {scores['person_precision']:.3f} "
                     f"R {scores['person_recall']:.3f}), car IoU {scores['car_IoU']:.3f}, outside-box objects "
                     f"{100 * scores['outside_object_fraction']:.1f} % (uncalibrated), loss "
                     f"{sum(losses[-50:]) / len(losses[-50:]):.4f}, {rates['steps_per_s']:.2f} it/s")
            save_checkpoint(run_dir / "last.pt", ctx=ctx, step=step, model=net, optimizer=optimizer, scheduler=scheduler,
                            ema=ema, config=cfg, extra={**extra, "wall_s": wall_before + time.time() - t_start,
                                               "history": history, "calibrated": False})
        if out_of_time:
            log.info(f"time budget of {budget_s / 60:.1f} min reached at step {step}")
            break
    bar.close()
    net.eval()
    if calibrated:  # shifting its scores a second time would move them twice
        log.info("the checkpoint is already calibrated: nothing to do")
        log.close()
        return {"step": step, "history": history}
    if ema is not None:  # the average is what is calibrated and kept
        net.load_state_dict(ema.copy_to(net).state_dict())
    unbiased = holdout_logits(net, cache, held_out)
    picked, tried = pick_object_shifts(net.frame_seg.out.bias.data, lambda: holdout_scores(net, cache, held_out, unbiased),
                                       float(p["max_outside"]))
    if ema is not None:  # export reads a checkpoint's average: it must carry the calibrated scores too
        ema.shadow = {k: v.detach().clone().float() for k, v in net.state_dict().items() if k in ema.shadow}
    log.info(f"object scores shifted by {picked['person_shift']:+g} (person), {picked['vehicle_shift']:+g} (car, bike): "
             f"held-out person IoU {picked['person_IoU']:.3f} (P {picked['person_precision']:.3f} "
             f"R {picked['person_recall']:.3f}), car IoU {picked['car_IoU']:.3f}, outside-box objects "
             f"{100 * picked['outside_object_fraction']:.1f} % (at most {100 * float(p['max_outside']):g} % asked)")
    wall = wall_before + time.time() - t_start
    save_checkpoint(run_dir / "last.pt", ctx=ctx, step=step, model=net, optimizer=optimizer, scheduler=scheduler,
                    ema=ema, config=cfg, extra={**extra, "wall_s": wall, "history": history, "calibrated": True,
                                       "holdout": picked, "calibration": tried})
    log.info(f"done: step {step}, {wall / 60:.1f} min, written to {run_dir / 'last.pt'}")
    log.close()
    return {"step": step, "history": history, "holdout": picked, "calibration": tried, "wall_s": wall}


if __name__ == "__main__":
    main()
