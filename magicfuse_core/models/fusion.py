"""Multi-domain knowledge fusion network F with its segmentation head S (the paper's MKF).

At every DDIM step F sees the two streams' clean-latent estimates, the fused
stream's current sample and both predicted noises, and returns a per-pixel
weight w that mixes the noises. S folds F's attention features (or, with
seg_head "streams", reads the two streams' clean estimates; with seg_head "frame", reads the
degraded frame once before the first step) into a 9-class segmentation state s that is
carried from step to step; where s says "thermal
class" (radiation_mask), w is capped at tau so the generated-infrared stream
dominates there (weight correction w_r).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..palette import DEFAULT_TAU, DEFAULT_THERMAL_CLASSES
from .embeddings import ddpm_timestep_embedding
from .norm import GroupNorm32


@dataclass
class FusionConfig:
    latent_channels: int = 8
    channels: int = 96
    num_blocks: int = 5
    num_classes: int = 9
    groups: int = 32
    # Keys/values of the spatial self-attention average-pooled by this factor (queries stay at
    # full latent resolution). 1 = the paper's full attention, whose cost grows with the square
    # of the latent size (2.8 s per step for the tiny net at 480x640 on a CPU); 4 cuts it 16x.
    attention_pool: int = 1
    # What S reads (SEG_HEADS): "fold", the paper's, folds F's features into the state; "streams" reads the
    # two streams' clean-latent estimates through its own small network (StreamSegHead), so S sees the
    # generated infrared directly and never shares weights with the fusion weight w; "frame" reads the degraded
    # frame's pixels once per frame (FrameSegHead) and the state then stays fixed over the steps.
    seg_head: str = "fold"
    seg_channels: int = 32     # StreamSegHead's / FrameSegHead's width (unused by "fold")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FusionConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fusion config keys: {sorted(unknown)}")
        cfg = cls(**d)
        if int(cfg.attention_pool) < 1:
            raise ValueError(f"fusion attention_pool must be >= 1, got {cfg.attention_pool}")
        if cfg.seg_head not in SEG_HEADS:
            raise ValueError(f"fusion seg_head must be one of {', '.join(SEG_HEADS)}, got {cfg.seg_head!r}")
        if int(cfg.seg_channels) < 8:
            raise ValueError(f"fusion seg_channels must be >= 8, got {cfg.seg_channels}")
        return cfg


SEG_HEADS = ("fold", "streams", "frame")

PROFILES: dict[str, FusionConfig] = {
    "paper": FusionConfig(),
    "tiny": FusionConfig(channels=32, num_blocks=2, groups=8),
}


# How the segmentation state becomes the radiation map: "hard" (the paper's: 1 where the argmax is a
# thermal class) or "soft" (the probability S gives the thermal classes together), which lets a person
# S is unsure of still pull the weight towards tau in proportion, instead of not at all.
RADIATION_MAPS = ("hard", "soft")
DEFAULT_RADIATION_MAP = "hard"


def class_labels(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) class scores -> (B, H, W) argmax class ids. Computed channels-last: on a CPU torch's
    argmax over the strided class dimension is ~9x slower (53 against 6 ms at 9x480x640)."""
    return logits.permute(0, 2, 3, 1).contiguous().argmax(dim=-1)


def radiation_mask(seg_state: torch.Tensor, thermal_classes=DEFAULT_THERMAL_CLASSES,
                   kind: str = DEFAULT_RADIATION_MAP, shift: float = 0.0) -> torch.Tensor:
    """(B, K, h, w) segmentation state -> (B, 1, h, w) float mask in [0, 1] (see RADIATION_MAPS).

    shift: added to the thermal classes' scores for this mask only. The published map wants precision (a false
    person misleads a detector); the fusion wants coverage (a person the mask misses stays as dark as the
    visible frame), so a model may widen its radiation map without touching the map it publishes."""
    if shift:
        offset = torch.zeros(seg_state.shape[1], device=seg_state.device, dtype=seg_state.dtype)
        offset[list(thermal_classes)] = float(shift)
        seg_state = seg_state + offset.view(1, -1, 1, 1)
    if kind == "soft":
        probs = torch.softmax(seg_state.float(), dim=1)
        return probs[:, list(thermal_classes)].sum(dim=1, keepdim=True).to(seg_state.dtype)
    if kind != "hard":
        raise ValueError(f"radiation map must be one of {', '.join(RADIATION_MAPS)}, got {kind!r}")
    labels = class_labels(seg_state).unsqueeze(1)
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for c in thermal_classes:
        mask |= labels == c
    return mask.to(seg_state.dtype)


def correct_weight(w: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """w_r = M * min(w, tau) + (1 - M) * w: never let the visible stream dominate a hot target.
    A hard mask selects; a soft mask in [0, 1] interpolates between the two."""
    if mask.dtype == torch.bool:
        return torch.where(mask, w.clamp(max=tau), w)
    # M = 1 selects min(w, tau) exactly, M = 0 leaves w; no data-dependent branch (meta tensors, graphs)
    return torch.where(mask >= 1, w.clamp(max=tau), w - mask * (w - tau).clamp(min=0))


def fuse_noise(w: torch.Tensor, eps_ikr: torch.Tensor, eps_ckg: torch.Tensor) -> torch.Tensor:
    """eps_f = w * eps_ikr + (1 - w) * eps_ckg."""
    return w * eps_ikr + (1.0 - w) * eps_ckg


class TimeResBlock(nn.Module):
    """GroupNorm -> swish -> conv, + time projection, GroupNorm -> swish -> conv, identity skip."""

    def __init__(self, channels: int, temb_dim: int, groups: int):
        super().__init__()
        self.norm1 = GroupNorm32(groups, channels, eps=1e-6)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, channels)
        self.norm2 = GroupNorm32(groups, channels, eps=1e-6)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb)).to(h.dtype)[..., None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all h*w latent positions, 1x1 conv projections, residual.

    pool > 1: every position attends to the average-pooled (pool x pool) map instead of to
    every position (spatial-reduction attention), the same parameters at a fraction of the cost.
    """

    def __init__(self, channels: int, groups: int, pool: int = 1):
        super().__init__()
        self.pool = int(pool)
        self.norm = GroupNorm32(groups, channels, eps=1e-6)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        kv = n if self.pool == 1 else F.avg_pool2d(n, self.pool, ceil_mode=True)
        q, k, v = (proj(src).flatten(2).transpose(1, 2)[:, None] for proj, src in ((self.q, n), (self.k, kv), (self.v, kv)))
        # (B, 1, N, C): SDPA never materialises the N x N score matrix on GPU kernels that fuse it.
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class FusionBlock(nn.Module):
    def __init__(self, channels: int, latent_channels: int, temb_dim: int, groups: int, attention_pool: int = 1):
        super().__init__()
        self.res1 = TimeResBlock(channels, temb_dim, groups)
        self.res2 = TimeResBlock(channels, temb_dim, groups)
        self.mlp = nn.Sequential(nn.Conv2d(channels + 2 * latent_channels, 2 * channels, 1), nn.SiLU(),
                                 nn.Conv2d(2 * channels, channels, 1))
        self.att = SpatialSelfAttention(channels, groups, attention_pool)

    def forward(self, h, temb, eps_ikr, eps_ckg):
        """Returns (h, [feature after the residual pair, feature after attention])."""
        h = self.res2(self.res1(h, temb), temb)
        after_res = h
        h = self.mlp(torch.cat([h, eps_ikr, eps_ckg], dim=1))
        h = self.att(h)
        return h, (after_res, h)


class StreamSegHead(nn.Module):
    """S read from the streams (seg_head "streams"): (z0_ikr, z0_ckg, s, temb) -> next state s.

    The generated infrared's clean estimate is the evidence a thermal target is there, the restored
    visible one says what it looks like. Neither depends on F or S (the IKR and CKG streams step on
    their own), so this head can be trained on stored stream rollouts (training/seg_head.py) and
    changes MagImg only through the radiation map. Context runs at half the latent resolution with
    dilated convolutions (about 60 latent pixels, 240 image pixels, of view); the result is merged
    with the full-resolution inputs so small people keep their outline.
    """

    def __init__(self, latent_channels: int, num_classes: int, channels: int, temb_dim: int,
                 dilations=(1, 2, 4, 8)):
        super().__init__()
        c_in = 2 * latent_channels + num_classes
        groups = max(g for g in (8, 4, 2, 1) if channels % g == 0)
        self.stem = nn.Conv2d(c_in, channels, 3, stride=2, padding=1)
        self.temb_proj = nn.Linear(temb_dim, channels)
        self.context = nn.ModuleList(nn.Sequential(GroupNorm32(groups, channels, eps=1e-6), nn.SiLU(),
                                                   nn.Conv2d(channels, channels, 3, padding=d, dilation=d))
                                     for d in dilations)
        self.merge = nn.Conv2d(channels + c_in, channels // 2, 1)
        self.out = nn.Conv2d(channels // 2, num_classes, 3, padding=1)

    def forward(self, z0_ikr, z0_ckg, seg_state, temb):
        x = torch.cat([z0_ikr, z0_ckg, seg_state], dim=1)
        h = F.silu(self.stem(x)) + self.temb_proj(F.silu(temb)).to(x.dtype)[..., None, None]
        for block in self.context:
            h = h + block(h)
        h = F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(F.silu(self.merge(torch.cat([h, x], dim=1))))


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class FrameSegHead(nn.Module):
    """S read from the degraded frame (seg_head "frame"): (B, 3, H, W) in [0, 1] -> (B, K, H/4, W/4) logits.

    Why pixels and not the streams: on MSRS the streams' clean estimates carry almost no evidence of people
    at night (the CKG stream's person contrast is +4.7 grey levels there against the real infrared's +41;
    docs/TRAINING.md), and the latent-level heads plateaued at person IoU 0.11 on val. A small U-Net on the
    frame at half resolution sees every pixel the camera saw, costs one pass per frame instead of one per
    step, and trains on frames in minutes (training/frame_seg.py). Its output lands on the latent grid
    (1/4 of the frame), where the radiation map gates the fusion weight.
    H and W must be multiples of 32 (the pipeline pads to that).
    """

    # The frame's mean and spread over MSRS training frames after the degradations, roughly: a fixed
    # normalisation (no per-frame statistics), so exposure differences stay visible to the net.
    MEAN, STD = 0.3, 0.25

    def __init__(self, num_classes: int, channels: int):
        super().__init__()
        c = channels
        self.enc1 = nn.Sequential(_conv_bn_relu(3, c, 2), _conv_bn_relu(c, c))
        self.enc2 = nn.Sequential(_conv_bn_relu(c, 2 * c, 2), _conv_bn_relu(2 * c, 2 * c))
        self.enc3 = nn.Sequential(_conv_bn_relu(2 * c, 4 * c, 2), _conv_bn_relu(4 * c, 4 * c))
        # context at 1/32 of the frame: dilations reach about 300 frame pixels, a whole car up close
        self.context = nn.Sequential(_conv_bn_relu(4 * c, 4 * c, 2), _conv_bn_relu(4 * c, 4 * c, dilation=2),
                                     _conv_bn_relu(4 * c, 4 * c, dilation=4), _conv_bn_relu(4 * c, 4 * c, dilation=8))
        self.dec3 = _conv_bn_relu(8 * c, 4 * c)
        self.dec2 = _conv_bn_relu(6 * c, 2 * c)
        self.dec1 = _conv_bn_relu(3 * c, c)
        self.out = nn.Conv2d(c, num_classes, 1)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return self.segment_half(F.avg_pool2d(frame, 2))

    def segment_half(self, half: torch.Tensor) -> torch.Tensor:
        """The frame already at half resolution (what training stores) -> logits at half of that."""
        return self.out(self.features_half(half))

    def features_half(self, half: torch.Tensor) -> torch.Tensor:
        """The last decoder features (B, channels, H/4, W/4) that `out` reads: training can read them too
        (training/frame_seg.py's infrared readout)."""
        x = (half - self.MEAN) / self.STD
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        h = self.context(e3)
        for dec, skip in ((self.dec3, e3), (self.dec2, e2), (self.dec1, e1)):
            h = dec(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return h


class FusionNet(nn.Module):
    """(x24, eps_ikr, eps_ckg, t, seg_state) -> (w, seg_state_next).

    x24 = concat(z0_ikr, z0_ckg, z_t_fused): (B, 24, h, w); eps_*: (B, 8, h, w);
    t: (B,) float timesteps; seg_state: (B, 9, h, w). w: (B, 8, h, w), unbounded
    (the reference applies no sigmoid); seg_state_next: (B, 9, h, w) logits.
    """

    def __init__(self, cfg: FusionConfig | None = None):
        super().__init__()
        cfg = cfg or FusionConfig()
        self.config = cfg
        c, lc, k = cfg.channels, cfg.latent_channels, cfg.num_classes
        temb_dim = 4 * c
        self.time_embed = nn.Sequential(nn.Linear(c, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.inconv = nn.Sequential(nn.Conv2d(3 * lc, c, 3, padding=1), nn.SiLU())
        self.blocks = nn.ModuleList([FusionBlock(c, lc, temb_dim, cfg.groups, cfg.attention_pool) for _ in range(cfg.num_blocks)])
        self.normout = nn.Conv2d(c, lc, 1)
        self.estimate = nn.Sequential(nn.Conv2d(3 * lc, c, 3, padding=1), nn.Conv2d(c, lc, 3, padding=1))
        if cfg.seg_head == "streams":
            self.stream_seg = StreamSegHead(lc, k, int(cfg.seg_channels), temb_dim)
        elif cfg.seg_head == "frame":
            self.frame_seg = FrameSegHead(k, int(cfg.seg_channels))
        else:
            self.segproj = nn.ModuleList([nn.Conv2d(c + k, k, 3, padding=1) for _ in range(2 * cfg.num_blocks)])

    def seg_head(self) -> nn.Module:
        """The segmentation head S's own layers (the fold's projections, the stream head or the frame head)."""
        if self.config.seg_head == "streams":
            return self.stream_seg
        return self.frame_seg if self.config.seg_head == "frame" else self.segproj

    def frame_state(self, frame: torch.Tensor) -> torch.Tensor:
        """seg_head "frame": the segmentation state of a (B, 3, H, W) frame in [0, 1], for every step."""
        if self.config.seg_head != "frame":
            raise ValueError(f"frame_state needs seg_head 'frame', this S is {self.config.seg_head!r}")
        return self.frame_seg(frame)

    def time_embedding(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.time_embed(ddpm_timestep_embedding(t, self.config.channels).to(dtype))

    def forward(self, x24, eps_ikr, eps_ckg, t, seg_state):
        if t.dim() == 0:
            t = t.expand(x24.shape[0])
        temb = self.time_embedding(t, x24.dtype)
        h = self.inconv(x24)
        s = seg_state
        fold = iter(self.segproj) if self.config.seg_head == "fold" else None
        for block in self.blocks:
            h, features = block(h, temb, eps_ikr, eps_ckg)
            for feature in features if fold is not None else ():
                s = next(fold)(torch.cat([feature, s], dim=1))
        if self.config.seg_head == "frame":  # the state came from the frame before the first step
            s = seg_state
        elif fold is None:  # the stream head reads the two clean estimates, not F's features
            lc = self.config.latent_channels
            s = self.stream_seg(x24[:, :lc], x24[:, lc:2 * lc], seg_state, temb)
        w = self.estimate(torch.cat([self.normout(h), eps_ikr, eps_ckg], dim=1))
        return w, s


class FusionModule(nn.Module):
    """FusionNet plus the radiation-map weight correction and the noise mix: the
    reference's fusion call, `net(x24, eps_ikr, eps_ckg, t, seg_state)` ->
    `(eps_fused, seg_logits_full, seg_state_next)`, where seg_logits_full is the
    state bilinearly up-sampled x4 to image size.
    """

    def __init__(self, net: FusionNet, tau: float = DEFAULT_TAU, thermal_classes=DEFAULT_THERMAL_CLASSES):
        super().__init__()
        self.net = net
        self.tau = float(tau)
        self.thermal_classes = tuple(thermal_classes)

    def forward(self, x24, eps_ikr, eps_ckg, t, seg_state):
        w, s = self.net(x24, eps_ikr, eps_ckg, t, seg_state)
        w_r = correct_weight(w, radiation_mask(s, self.thermal_classes), self.tau)
        return fuse_noise(w_r, eps_ikr, eps_ckg), upsample_logits(s), s


def upsample_logits(seg_state: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) latent-size logits -> (B, K, 4h, 4w), bilinear (image size)."""
    return F.interpolate(seg_state, scale_factor=4.0, mode="bilinear", align_corners=False)
