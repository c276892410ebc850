"""Sinusoidal timestep embeddings.

Two variants exist in MagicFuse because its networks come from two lineages:
the latent-diffusion UNet orders [cos, sin] with frequencies exp(-ln(10000) k / half),
the fusion network uses the DDPM variant [sin, cos] with spacing ln(10000) / (half - 1).
"""
from __future__ import annotations

import math

import torch


def unet_timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) float timesteps -> (B, dim) as [cos, sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def ddpm_timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) float timesteps -> (B, dim) as [sin, cos] (DDPM spacing)."""
    half = dim // 2
    scale = math.log(10000.0) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -scale)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
