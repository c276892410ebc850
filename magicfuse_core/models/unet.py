"""Conditional latent-diffusion UNet: the IKR denoiser Psi and the CKG denoiser Phi (latent-diffusion UNet).

Input: concat(condition latent, x_t) -> (B, 16, h, w) in the [-1, 1] diffusion space,
float timesteps t (B,); output (B, 8, h, w): what the network was trained to predict,
recorded in `config.prediction` — the noise ("epsilon", the paper) or the clean
latent ("sample", our small models). The network only records it: the conversion to the
noise the sampler expects belongs to the sampling side (`magicfuse_core.denoiser`), with
the schedule the model was trained with.

The module tree mirrors the Stable Diffusion v1 "openaimodel" parameter layout
(input_blocks / middle_block / output_blocks / out / time_embed) so that the
authors' checkpoints load without renaming. Attention goes through
scaled_dot_product_attention, so it uses flash / memory-efficient kernels on GPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..denoiser import PREDICTIONS
from .embeddings import unet_timestep_embedding
from .norm import GroupNorm32




@dataclass
class UNetConfig:
    in_channels: int = 16
    out_channels: int = 8
    model_channels: int = 64
    num_heads: int = 4
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 8)
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    groups: int = 32
    prediction: str = "epsilon"  # what the trained net predicts: "epsilon" (the paper) or "sample" (z0)

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"UNet prediction must be one of {PREDICTIONS}, got {self.prediction!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attention_resolutions"] = list(self.attention_resolutions)
        d["channel_mult"] = list(self.channel_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown UNet config keys: {sorted(unknown)}")
        for k in ("attention_resolutions", "channel_mult"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# Named profiles. "ikr_paper"/"ckg_paper" are the paper's Psi (39.65 M) and Phi
# (517.67 M); the small ones keep the layer layout for tests and CPU runs.
PROFILES: dict[str, UNetConfig] = {
    "ikr_paper": UNetConfig(model_channels=64, num_heads=4, attention_resolutions=(4, 8)),
    "ckg_paper": UNetConfig(model_channels=256, num_heads=8, attention_resolutions=(4,)),
    "ikr_like": UNetConfig(model_channels=32, num_heads=4, attention_resolutions=(4, 8), channel_mult=(1, 1, 2, 2)),
    "ckg_like": UNetConfig(model_channels=32, num_heads=8, attention_resolutions=(4,), channel_mult=(1, 1, 2, 2)),
    "tiny": UNetConfig(model_channels=32, num_heads=2, num_res_blocks=1, attention_resolutions=(4,),
                       channel_mult=(1, 2, 2), groups=8),
}


def unet_config(profile: str) -> UNetConfig:
    if profile not in PROFILES:
        raise ValueError(f"unknown UNet profile {profile!r}; known: {', '.join(PROFILES)}")
    return PROFILES[profile]


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(groups, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))
        self.out_layers = nn.Sequential(GroupNorm32(groups, cout), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb).to(x.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens (B, N, C); q, k, v without bias."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (proj(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim)
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """[LN -> self-attn] x2 (no text context: the 'cross' attention is self-attention too), LN -> GEGLU FF."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn1 = SelfAttention(dim, heads)
        self.attn2 = SelfAttention(dim, heads)
        self.ff = FeedForward(dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x))
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.norm = GroupNorm32(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest interpolation to the next skip connection's size, then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="nearest") if size is not None else F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class Stage(nn.ModuleList):
    """A list of layers applied in order; each gets what it needs (emb, or target size)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, size=None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, (Upsample, Downsample)):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


class ConditionalUNet(nn.Module):
    """eps = net(concat(cond, x_t), t). Shapes: (B, 16, h, w), (B,) -> (B, 8, h, w)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        c, g = cfg.model_channels, cfg.groups
        emb_dim = 4 * c
        self.time_embed = nn.Sequential(nn.Linear(c, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.input_blocks = nn.ModuleList([Stage([nn.Conv2d(cfg.in_channels, c, 3, padding=1)])])
        skip_channels, ch, ds = [c], c, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, c * mult, emb_dim, g)]
                ch = c * mult
                if ds in cfg.attention_resolutions:
                    layers.append(SpatialTransformer(ch, cfg.num_heads, g))
                self.input_blocks.append(Stage(layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(Stage([Downsample(ch)]))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = Stage([ResBlock(ch, ch, emb_dim, g), SpatialTransformer(ch, cfg.num_heads, g),
                                   ResBlock(ch, ch, emb_dim, g)])

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), c * mult, emb_dim, g)]
                ch = c * mult
                if ds in cfg.attention_resolutions:
                    layers.append(SpatialTransformer(ch, cfg.num_heads, g))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Stage(layers))

        self.out = nn.Sequential(GroupNorm32(g, ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(unet_timestep_embedding(t, self.config.model_channels).to(x.dtype))
        skips, h = [], x
        for stage in self.input_blocks:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for stage in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            h = stage(h, emb, size=skips[-1].shape[-2:] if skips else None)
        return self.out(h)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
