"""The shared-noise fused sampler of MagicFuse: plain functions over denoisers.

Three streams start from ONE Gaussian z_T and step in lock-step:
IKR (restored visible), CKG (generated infrared) and the fused stream, whose
noise at every step is the per-pixel mix of the other two chosen by the fusion
network. The segmentation state is carried from step to step.

`fused_step` is the one step, used by inference (`fused_sample`), by phase-2
training's rollout (training/phase2.py) and by the reference-import API
(`official.fused_sample`), so training rolls out exactly the trajectory that
inference samples.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .models.fusion import DEFAULT_RADIATION_MAP, correct_weight, fuse_noise, radiation_mask, upsample_logits
from .palette import DEFAULT_TAU, DEFAULT_THERMAL_CLASSES
from .schedule import DDIMSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SamplingStopped(RuntimeError):
    """`should_stop()` asked the sampler to stop between two steps (e.g. a node shutting down)."""


@dataclass
class StreamState:
    """The three streams' samples x_t (B, 8, h, w) in [-1, 1] space and the segmentation state (B, K, h, w)."""

    x_ikr: torch.Tensor
    x_ckg: torch.Tensor
    x_fused: torch.Tensor
    seg_state: torch.Tensor

    @classmethod
    def start(cls, z_T: torch.Tensor, seg_T: torch.Tensor) -> "StreamState":
        """One shared Gaussian start for the three streams."""
        return cls(z_T, z_T, z_T, seg_T)


@dataclass
class StepOutput:
    """Everything one fused step computes; `next` is the state for the following step."""

    next: StreamState
    z0_ikr: torch.Tensor
    z0_ckg: torch.Tensor
    z0_fused: torch.Tensor
    eps_ikr: torch.Tensor
    eps_ckg: torch.Tensor
    eps_fused: torch.Tensor
    w: torch.Tensor          # the fusion network's weight (B, 8, h, w)
    w_r: torch.Tensor        # after the radiation-map correction


def stream_estimate(denoiser: Denoiser, cond_latent: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                    schedule: DDIMSchedule, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One stream's (eps, z0 estimate) at step `index`. The IKR and CKG streams step on their own (F and S
    never feed back into them), so their rollouts can be computed once and stored (training/seg_head.py)."""
    eps = denoiser(torch.cat([cond_latent, x], dim=1), t).float()
    return eps, schedule.predict_x0(x, eps, index)


def fused_step(ikr_denoiser: Denoiser, ckg_denoiser: Denoiser, fusion_net, cond_latent: torch.Tensor,
               state: StreamState, schedule: DDIMSchedule, index: int, *, tau: float = DEFAULT_TAU,
               thermal_classes=DEFAULT_THERMAL_CLASSES, radiation_map: str = DEFAULT_RADIATION_MAP,
               radiation_shift: float = 0.0) -> StepOutput:
    """Step `index` of `schedule.timesteps`: three estimates, one weight, the radiation
    correction, one fused DDIM step (the paper's multi-domain knowledge fusion).

    cond_latent: (B, 8, h, w) = 2 E(degraded) - 1. `fusion_net(x24, eps_ikr, eps_ckg, t, s)`
    returns (w, s_next). Gradients flow wherever the callables let them (phase 2 runs
    the step with gradients through the fusion network only).
    """
    t = torch.full((cond_latent.shape[0],), float(schedule.timesteps[index]), device=cond_latent.device,
                   dtype=torch.float32)
    eps_ikr, z0_ikr = stream_estimate(ikr_denoiser, cond_latent, state.x_ikr, t, schedule, index)
    eps_ckg, z0_ckg = stream_estimate(ckg_denoiser, cond_latent, state.x_ckg, t, schedule, index)
    w, seg_next = fusion_net(torch.cat([z0_ikr, z0_ckg, state.x_fused], dim=1), eps_ikr, eps_ckg, t, state.seg_state)
    w_r = correct_weight(w.float(), radiation_mask(seg_next.detach(), thermal_classes, radiation_map,
                                                  radiation_shift).float(), tau)
    eps_fused = fuse_noise(w_r, eps_ikr, eps_ckg)
    x_fused, z0_fused = schedule.step(state.x_fused, eps_fused, index)
    nxt = StreamState(schedule.next_sample(z0_ikr, eps_ikr, index), schedule.next_sample(z0_ckg, eps_ckg, index),
                      x_fused, seg_next)
    return StepOutput(nxt, z0_ikr, z0_ckg, z0_fused, eps_ikr, eps_ckg, eps_fused, w, w_r)


@torch.no_grad()
def ddim_sample(denoiser: Denoiser, cond_latent: torch.Tensor, z_T: torch.Tensor, schedule: DDIMSchedule) -> torch.Tensor:
    """One stream alone (deterministic DDIM, eta = 0): (B, 8, h, w) condition -> z0 estimate.
    What phase 1 previews while Ψ or Φ trains; the fused sampler runs three of these in lock-step."""
    x = z0 = z_T
    for i, t in enumerate(schedule.timesteps):
        eps = denoiser(torch.cat([cond_latent, x], dim=1), torch.full((x.shape[0],), float(t), device=x.device))
        x, z0 = schedule.step(x, eps.float(), i)
    return z0


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
    tau: float = DEFAULT_TAU,
    thermal_classes=DEFAULT_THERMAL_CLASSES,
    radiation_map: str = DEFAULT_RADIATION_MAP,
    radiation_shift: float = 0.0,
    return_weights: bool = False,
    time_budget_s: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    callback: Callable[[int, StepOutput], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SampleOutput:
    """Run the three streams for `schedule.num_inference_steps` DDIM steps.

    cond_latent: (B, 8, h, w) = 2 E(degraded) - 1; z_T: (B, 8, h, w) shared start;
    seg_T: (B, 9, h, w) initial segmentation state (standard normal).

    Deadline: every step yields a clean-latent estimate, so when `time_budget_s`
    would be exceeded by the next step (judged from the mean step time so far) the
    loop stops and the current estimates are returned with `cut_short=True`
    instead of the frame being dropped. At least one step always runs. Pass a
    `clock` that synchronises the device when timing GPU work.
    `should_stop()` is asked before every step; True raises SamplingStopped.
    `callback(index, step_output)` sees every step.
    """
    state = StreamState.start(z_T, seg_T)
    out_w, out_wr = [], []
    start = clock()
    steps_run, cut_short, step = 0, False, None
    for i in range(schedule.num_inference_steps):
        if should_stop is not None and should_stop():
            raise SamplingStopped(f"stopped before step {i + 1} of {schedule.num_inference_steps}")
        if time_budget_s is not None and steps_run:
            elapsed = clock() - start
            if elapsed + elapsed / steps_run > time_budget_s:
                cut_short = True
                break
        step = fused_step(ikr_denoiser, ckg_denoiser, fusion_net, cond_latent, state, schedule, i, tau=tau,
                          thermal_classes=thermal_classes, radiation_map=radiation_map,
                          radiation_shift=radiation_shift)
        state = step.next
        steps_run += 1
        if return_weights:
            out_w.append(step.w)
            out_wr.append(step.w_r)
        if callback is not None:
            callback(i, step)
    return SampleOutput(step.z0_fused, step.z0_ikr, step.z0_ckg, state.seg_state, upsample_logits(state.seg_state),
                        steps_run, cut_short, out_w, out_wr)
