"""A denoiser as the sampler sees it: `(x, t) -> eps`, whatever its body predicts.

The networks know nothing about sampling (STYLE: the scheduler, not the network,
owns the prediction type). A UNet body predicts either the noise ("epsilon",
the paper's Ψ/Φ) or the clean latent ("sample", our small models: a small net
cannot predict eps precisely enough, since at t = 960 an eps error is amplified
~14x in z0_hat). `EpsilonDenoiser` wraps a body with the schedule the model was
trained with and hands the sampler and the fusion network the noise:

    eps = (x_t - sqrt(a_t) z0) / sqrt(1 - a_t)

so the sampler loop, the fusion network and every exported graph stay the same
for both kinds. The conversion always computes in fp32 (a bf16 eps would carry
its rounding into z0_hat amplified ~20x at t = 960), from fp32 tables of
sqrt(a_t) and sqrt(1 - a_t) indexed by the integer timestep.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

PREDICTIONS = ("epsilon", "sample")


class EpsilonDenoiser(nn.Module):
    """`body(x, t)` -> eps (B, 8, h, w) fp32, for x = concat(condition, x_t) (B, 16, h, w), t (B,) float.

    body: a ConditionalUNet, or any callable with its signature (a reduced-precision
    or compiled wrapper of one); prediction: what the body predicts; alphas_cumprod:
    the (T,) alpha_bar table of the schedule the body was trained with.
    """

    def __init__(self, body: Callable, prediction: str, alphas_cumprod: torch.Tensor):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"denoiser prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.body = body
        self.prediction = prediction
        alpha_bar = alphas_cumprod.double()
        # Roots, in fp32: 1 - a_t itself would round to 0 near t = 0 in reduced precision.
        self.register_buffer("sqrt_alpha_bar", alpha_bar.sqrt().float())
        self.register_buffer("sqrt_one_minus_alpha_bar", (1 - alpha_bar).sqrt().float())

    @property
    def config(self):
        """The body's config (fingerprints and exports describe the network they carry)."""
        return getattr(self.body, "config", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.body(x, t)
        if self.prediction == "epsilon":
            return out
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        x_t = x[:, -out.shape[1]:].float()
        index = t.round().long().clamp(0, self.sqrt_alpha_bar.shape[0] - 1)
        s_a = self.sqrt_alpha_bar.float()[index].view(-1, 1, 1, 1)
        s_1ma = self.sqrt_one_minus_alpha_bar.float()[index].view(-1, 1, 1, 1)
        return (x_t - s_a * out.float()) / s_1ma
