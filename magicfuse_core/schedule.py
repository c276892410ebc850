"""Noise schedule and deterministic DDIM coefficients (the paper's: linear betas, T = 1000, 25 DDIM steps).

A tiny pure object in the spirit of a diffusers scheduler: it holds the
alpha_bar table, turns "N steps" into a timestep list once, and its `step`
returns both the next sample and the clean-latent estimate. It owns no model
and no device: tensors in, tensors out.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class DDIMSchedule:
    """Linear-beta schedule with a strided deterministic (eta = 0) DDIM sampler.

    `beta_schedule="linear"` spaces the betas linearly in beta, as the MagicFuse paper states
    ("linear betas from 0.00085 to 0.012"); "scaled_linear" spaces them linearly
    in sqrt(beta) (the latent-diffusion convention) and is kept for users who
    train with it. The reference fixtures decide which one the released code used
    (see tests/core/test_schedule.py).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "linear"
    num_inference_steps: int = 25
    # Explicit descending timesteps instead of the leading spacing (e.g. (800, 400, 0): few steps that
    # all lie on the 25-step grid the denoisers were trained on); num_inference_steps follows its length.
    custom_timesteps: tuple[int, ...] | None = None
    alphas_cumprod: torch.Tensor = field(init=False, repr=False, compare=False)
    timesteps: tuple[int, ...] = field(init=False, compare=False)

    def __post_init__(self):
        if self.custom_timesteps is not None:
            listed = self.custom_timesteps
            integral = not isinstance(listed, str) and all(
                isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in listed)
            ts = tuple(int(t) for t in listed) if integral else ()
            if not ts or any(not 0 <= t < self.num_train_timesteps for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
                raise ValueError(f"custom_timesteps must be strictly descending integers in [0, {self.num_train_timesteps - 1}], "
                                 f"got {self.custom_timesteps!r}")
            object.__setattr__(self, "custom_timesteps", ts)
            object.__setattr__(self, "num_inference_steps", len(ts))
        if self.num_inference_steps < 1 or self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {self.num_train_timesteps}], got {self.num_inference_steps}"
            )
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=torch.float64)
        elif self.beta_schedule == "scaled_linear":
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, self.num_train_timesteps, dtype=torch.float64) ** 2
        else:
            raise ValueError(f"unknown beta_schedule {self.beta_schedule!r} (linear | scaled_linear)")
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1.0 - betas, dim=0))
        # "Leading" spacing: t = (N-1)*s, ..., s, 0 with stride s = T // N
        # (960, 920, ..., 40, 0 for T=1000, N=25).
        stride = self.num_train_timesteps // self.num_inference_steps
        object.__setattr__(self, "timesteps", self.custom_timesteps or
                           tuple(range((self.num_inference_steps - 1) * stride, -1, -stride)))

    def with_steps(self, num_inference_steps: int) -> "DDIMSchedule":
        """This schedule at another step count (leading spacing); the same count keeps custom timesteps."""
        if num_inference_steps == self.num_inference_steps:
            return self
        return DDIMSchedule(self.num_train_timesteps, self.beta_start, self.beta_end, self.beta_schedule, num_inference_steps)

    def with_timesteps(self, timesteps) -> "DDIMSchedule":
        return DDIMSchedule(self.num_train_timesteps, self.beta_start, self.beta_end, self.beta_schedule,
                            custom_timesteps=tuple(timesteps))

    def alpha_bar(self, t: int) -> float:
        """alpha_bar_t; alpha_bar_{-1} := 1 (the step after t = 0 lands on clean data)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def coefficients(self, index: int) -> tuple[float, float]:
        """(alpha_bar_t, alpha_bar_next) for the index-th step of `timesteps`."""
        t = self.timesteps[index]
        t_next = self.timesteps[index + 1] if index + 1 < len(self.timesteps) else -1
        return self.alpha_bar(t), self.alpha_bar(t_next)

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, index: int) -> torch.Tensor:
        """z0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)."""
        a_t, _ = self.coefficients(index)
        return (x_t - (1.0 - a_t) ** 0.5 * eps) / a_t**0.5

    def next_sample(self, x0: torch.Tensor, eps: torch.Tensor, index: int) -> torch.Tensor:
        """z_next = sqrt(a_next) z0_hat + sqrt(1 - a_next) eps (eta = 0)."""
        _, a_next = self.coefficients(index)
        return a_next**0.5 * x0 + (1.0 - a_next) ** 0.5 * eps

    def step(self, x_t: torch.Tensor, eps: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One deterministic DDIM step. Returns (x_next, x0_hat)."""
        x0 = self.predict_x0(x_t, eps, index)
        return self.next_sample(x0, eps, index), x0

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x0) for training; t is a (B,) integer tensor."""
        a = self.alphas_cumprod.to(device=x0.device, dtype=torch.float32)[t].view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise
