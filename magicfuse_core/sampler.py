"""The shared-noise fused sampler (SPEC §3-4): a plain function over denoisers.

Three streams start from ONE Gaussian z_T and step in lock-step:
IKR (restored visible), CKG (generated infrared) and the fused stream, whose
noise at every step is the per-pixel mix of the other two chosen by the fusion
network. The segmentation state is carried from step to step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .models.fusion import correct_weight, fuse_noise, radiation_mask, upsample_logits
from .palette import DEFAULT_THERMAL_CLASSES
from .schedule import DDIMSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SampleOutput:
    """Latents are in the [-1, 1] diffusion space, (B, 8, h, w)."""

    z0_fused: torch.Tensor
    z0_ikr: torch.Tensor
    z0_ckg: torch.Tensor
    seg_state: torch.Tensor                    # (B, K, h, w) logits carried across steps
    seg_logits_full: torch.Tensor              # (B, K, 4h, 4w), the final state up-sampled
    steps_run: int
    cut_short: bool
    weights: list[torch.Tensor] = field(default_factory=list)            # w per step (if asked)
    corrected_weights: list[torch.Tensor] = field(default_factory=list)  # w_r per step (if asked)


def fused_sample(
    ikr_denoiser: Denoiser,
    ckg_denoiser: Denoiser,
    fusion_net,
    cond_latent: torch.Tensor,
    z_T: torch.Tensor,
    seg_T: torch.Tensor,
    schedule: DDIMSchedule,
    *,
    tau: float = 0.4,
    thermal_classes=DEFAULT_THERMAL_CLASSES,
    return_weights: bool = False,
    time_budget_s: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    callback: Callable[[int, dict], None] | None = None,
) -> SampleOutput:
    """Run the three streams for `schedule.num_inference_steps` DDIM steps.

    cond_latent: (B, 8, h, w) = 2 E(degraded) - 1; z_T: (B, 8, h, w) shared start;
    seg_T: (B, 9, h, w) initial segmentation state (standard normal).
    `fusion_net(x24, eps_ikr, eps_ckg, t, s)` returns (w, s_next); the radiation
    correction (tau, thermal_classes) and the noise mix happen here, in the loop.

    Deadline: every step yields a clean-latent estimate, so when `time_budget_s`
    would be exceeded by the next step (judged from the mean step time so far) the
    loop stops and the current estimates are returned with `cut_short=True`
    instead of the frame being dropped. At least one step always runs. Pass a
    `clock` that synchronises the device when timing GPU work.
    """
    x_ikr = x_ckg = x_fused = z_T
    s = seg_T
    out_w, out_wr = [], []
    start = clock()
    steps_run, cut_short = 0, False
    for i, t_int in enumerate(schedule.timesteps):
        if time_budget_s is not None and steps_run:
            elapsed = clock() - start
            if elapsed + elapsed / steps_run > time_budget_s:
                cut_short = True
                break
        t = torch.full((z_T.shape[0],), float(t_int), device=z_T.device, dtype=torch.float32)
        eps_ikr = ikr_denoiser(torch.cat([cond_latent, x_ikr], dim=1), t)
        eps_ckg = ckg_denoiser(torch.cat([cond_latent, x_ckg], dim=1), t)
        z0_ikr = schedule.predict_x0(x_ikr, eps_ikr, i)
        z0_ckg = schedule.predict_x0(x_ckg, eps_ckg, i)
        x24 = torch.cat([z0_ikr, z0_ckg, x_fused], dim=1)
        w, s = fusion_net(x24, eps_ikr, eps_ckg, t, s)
        w_r = correct_weight(w, radiation_mask(s, thermal_classes), tau)
        eps_fused = fuse_noise(w_r, eps_ikr, eps_ckg)
        x_ikr = schedule.next_sample(z0_ikr, eps_ikr, i)
        x_ckg = schedule.next_sample(z0_ckg, eps_ckg, i)
        x_fused, z0_fused = schedule.step(x_fused, eps_fused, i)
        steps_run += 1
        if return_weights:
            out_w.append(w)
            out_wr.append(w_r)
        if callback is not None:
            callback(i, {"t": t_int, "x0_fused": z0_fused, "eps_fused": eps_fused, "eps_ikr": eps_ikr,
                         "eps_ckg": eps_ckg, "w": w, "w_r": w_r, "seg_state": s})
    return SampleOutput(z0_fused, z0_ikr, z0_ckg, s, upsample_logits(s), steps_run, cut_short, out_w, out_wr)
