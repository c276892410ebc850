"""The shared latent autoencoder (the layout of the authors' released ae.pth).

RGB in [0, 1] -> 8-channel latent at H/4 x W/4 in [0, 1] (sigmoid) -> RGB in [0, 1].
Diffusion works on 2z - 1; `to_diffusion` / `from_diffusion` do that mapping.

The encoder concatenates 32 channels of standard-normal noise half way through,
so encoding is stochastic.

Two decoders read the same latent space: the released layout (`decoder="released"`,
InstanceNorm after every conv, most of its work at full resolution) and ours
(`decoder="local"`, no normalisation, most of its work at H/4, one global tone
code): an output pixel depends on the latents around it and on the frame's tone,
so a latent mixed from two streams decodes to the two images mixed in about the
same places (the released decoder's per-layer statistics shift the whole frame
instead), and it costs about 2.4x fewer multiply-adds. Callers pass that noise explicitly (`noise=`) or a
`torch.Generator` (`generator=`) to make results reproducible.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


DECODERS = ("released", "local")


@dataclass
class AutoencoderConfig:
    channels: int = 32
    latent_channels: int = 8
    noise_channels: int = 32
    num_res_blocks: int = 3
    decoder: str = "released"  # "released" | "local"
    decoder_channels: int = 64  # local decoder: width at H/4 (halved at each x2 upsampling)
    decoder_blocks: int = 4  # local decoder: residual blocks at H/4

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class _ConvBlock(nn.Sequential):
    """conv3x3 -> [InstanceNorm] -> activation; the conv is index 0 (checkpoint layout)."""

    def __init__(self, cin: int, cout: int, act: nn.Module, norm: bool = True, kernel: int = 3, stride: int = 1):
        layers = [nn.Conv2d(cin, cout, kernel, stride, padding=1)]
        if norm:
            layers.append(nn.InstanceNorm2d(cout, affine=False))
        layers.append(act)
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Two [conv3x3, InstanceNorm, act] with an identity skip."""

    def __init__(self, channels: int, act: type[nn.Module], **act_kwargs):
        super().__init__()
        self.blocks = nn.Sequential(
            _ConvBlock(channels, channels, act(**act_kwargs)),
            _ConvBlock(channels, channels, act(**act_kwargs)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.blocks(x)


def _res_stack(channels: int, n: int, act: type[nn.Module], **act_kwargs) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(channels, act, **act_kwargs) for _ in range(n)])


class Encoder(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, 8, H/4, W/4) in [0, 1]. H and W must be multiples of 4."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        c, lrelu = cfg.channels, dict(negative_slope=0.2)
        self.noise_channels = cfg.noise_channels
        self.imgconv = _ConvBlock(3, c, nn.LeakyReLU(**lrelu))
        self.resnet1 = _res_stack(c, cfg.num_res_blocks, nn.LeakyReLU, **lrelu)
        self.downsample1 = _ConvBlock(c, c, nn.LeakyReLU(**lrelu), kernel=4, stride=2)
        self.resnet2 = _res_stack(c, cfg.num_res_blocks, nn.LeakyReLU, **lrelu)
        self.downsample2 = _ConvBlock(c, c, nn.LeakyReLU(**lrelu), kernel=4, stride=2)
        self.noiseconv = _ConvBlock(c + cfg.noise_channels, c, nn.LeakyReLU(**lrelu))
        self.resnet3 = _res_stack(c, cfg.num_res_blocks, nn.LeakyReLU, **lrelu)
        self.out = nn.Sequential(nn.Conv2d(c, cfg.latent_channels, 3, padding=1), nn.Sigmoid())

    def noise_shape(self, image: torch.Tensor) -> tuple[int, ...]:
        b, _, h, w = image.shape
        return (b, self.noise_channels, h // 4, w // 4)

    def forward(self, image: torch.Tensor, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if image.shape[-2] % 4 or image.shape[-1] % 4:
            raise ValueError(f"encoder input H and W must be multiples of 4, got {tuple(image.shape[-2:])}")
        h = self.resnet1(self.imgconv(image))
        h = self.resnet2(self.downsample1(h))
        h = self.downsample2(h)
        if noise is None:
            noise = torch.randn(self.noise_shape(image), generator=generator, device=image.device, dtype=h.dtype)
        elif tuple(noise.shape) != tuple(h.shape[:1]) + (self.noise_channels,) + tuple(h.shape[2:]):
            raise ValueError(f"encoder noise must be {(h.shape[0], self.noise_channels, *h.shape[2:])}, got {tuple(noise.shape)}")
        h = self.noiseconv(torch.cat([h, noise.to(h)], dim=1))
        return self.out(self.resnet3(h))


class _Upsample(nn.Sequential):
    """Bilinear x2, conv3x3, ReLU; the conv is index 1 (checkpoint layout)."""

    def __init__(self, c: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                         nn.Conv2d(c, c, 3, padding=1), nn.ReLU())


class Decoder(nn.Module):
    """(B, 8, h, w) in [0, 1] -> (B, 3, 4h, 4w) in [0, 1]."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        c = cfg.channels
        self.input = nn.Sequential(nn.Conv2d(cfg.latent_channels, c, 3, padding=1), nn.ReLU())
        self.resnet1 = _res_stack(c, cfg.num_res_blocks, nn.ReLU)
        self.upsample1 = _Upsample(c)
        self.resnet2 = _res_stack(c, cfg.num_res_blocks, nn.ReLU)
        self.upsample2 = _Upsample(c)
        self.resnet3 = _res_stack(c, cfg.num_res_blocks, nn.ReLU)
        self.deconv = nn.Sequential(nn.Conv2d(c, 3, 3, padding=1), nn.Sigmoid())

    def forward(self, latent: torch.Tensor, style_latent: torch.Tensor | None = None) -> torch.Tensor:
        """`style_latent`: normalise every layer with the statistics of decoding that latent instead of
        `latent`'s own, which makes the decoder a fixed local filter for this frame: a region mixed into
        `latent` changes only the pixels around it, in the frame's own tone (see _paired)."""
        if style_latent is not None:
            check_style_latent(latent, style_latent)
            return _paired(self, style_latent, latent)[1]
        h = self.resnet1(self.input(latent))
        h = self.resnet2(self.upsample1(h))
        h = self.resnet3(self.upsample2(h))
        return self.deconv(h)


def check_style_latent(latent: torch.Tensor, style_latent: torch.Tensor) -> None:
    """A style latent gives each frame its tone: one per frame, with the latent's channels (its size may
    differ: a crop takes its whole frame's tone). Anything else would broadcast one frame's tone silently."""
    if style_latent.dim() != 4 or style_latent.shape[:2] != latent.shape[:2]:
        raise ValueError(f"style_latent must be (B, C, h', w') with the latent's B and C {tuple(latent.shape[:2])}, "
                         f"got {tuple(style_latent.shape)}")


def _paired(module: nn.Module, style: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `module` on `style` and on `x` side by side; every InstanceNorm normalises both with the
    style's per-image statistics (the released layout: Sequential, ResidualBlock, conv, norm, activations)."""
    if isinstance(module, nn.InstanceNorm2d):
        mean = style.mean(dim=(2, 3), keepdim=True)
        var = style.var(dim=(2, 3), keepdim=True, unbiased=False)
        scale = torch.rsqrt(var + module.eps)
        return (style - mean) * scale, (x - mean) * scale
    if isinstance(module, ResidualBlock):
        s, h = _paired(module.blocks, style, x)
        return style + s, x + h
    if isinstance(module, (nn.Sequential, Decoder)):
        children = (list(module.children()) if isinstance(module, nn.Sequential) else
                    [module.input, module.resnet1, module.upsample1, module.resnet2, module.upsample2,
                     module.resnet3, module.deconv])
        for child in children:
            style, x = _paired(child, style, x)
        return style, x
    return module(style), module(x)  # convolutions, activations, upsampling: per pixel neighbourhood


class _PlainResidual(nn.Module):
    """conv3x3 -> SiLU -> conv3x3 with an identity skip, no normalisation (keeps the decoder local).
    The second conv starts at zero, so every block starts as the identity: without normalisation a
    deep stack of random residuals blows up and the sigmoid output saturates."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class LocalDecoder(nn.Module):
    """(B, 8, h, w) in [0, 1] -> (B, 3, 4h, 4w) in [0, 1], without normalisation layers.

    Residual blocks at the latent resolution, then two pixel-shuffle x2 stages
    (sub-pixel convolution). Everything is local (receptive field ~20 latent
    pixels) except one global code: the released encoder normalises every image
    (InstanceNorm after its first conv), so its latent of a frame and of the same
    frame at half the brightness are equal, and a frame's brightness can only be
    read from the whole latent. The code (mean and standard deviation over the
    frame of a small strided "tone" branch, through an MLP) scales and shifts the
    features once. A region mixed into the latent moves it by about its share of
    the frame, instead of renormalising every layer as InstanceNorm does; with
    `style_latent=` (the frame the tone comes from) decoding is exactly local.
    """

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        c = cfg.decoder_channels
        self.input = nn.Sequential(nn.Conv2d(cfg.latent_channels, c, 3, padding=1), nn.SiLU())
        self.tone = nn.Sequential(nn.Conv2d(cfg.latent_channels, c // 2, 3, 2, 1), nn.SiLU(),
                                  nn.Conv2d(c // 2, c, 3, 2, 1), nn.SiLU(), nn.Conv2d(c, c, 3, 2, 1), nn.SiLU())
        self.style = nn.Sequential(nn.Linear(2 * c, c), nn.SiLU(), nn.Linear(c, 2 * c))
        nn.init.zeros_(self.style[-1].weight)  # starts as no modulation
        nn.init.zeros_(self.style[-1].bias)
        self.blocks = nn.Sequential(*[_PlainResidual(c) for _ in range(cfg.decoder_blocks)])
        self.up1 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), nn.PixelShuffle(2), nn.SiLU())  # c/2 at h*2
        self.mid = _PlainResidual(c // 2)
        self.up2 = nn.Sequential(nn.Conv2d(c // 2, c, 3, padding=1), nn.PixelShuffle(2), nn.SiLU())  # c/4 at h*4
        self.out = nn.Sequential(nn.Conv2d(c // 4, c // 4, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(c // 4, 3, 3, padding=1))

    def global_code(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.tone(latent)
        stats = torch.cat([features.mean(dim=(2, 3)), features.std(dim=(2, 3))], dim=1)
        scale, shift = self.style(stats)[:, :, None, None].chunk(2, dim=1)
        return scale, shift

    def forward(self, latent: torch.Tensor, style_latent: torch.Tensor | None = None) -> torch.Tensor:
        if style_latent is not None:
            check_style_latent(latent, style_latent)
        scale, shift = self.global_code(latent if style_latent is None else style_latent)
        h = self.blocks(self.input(latent) * (1 + scale) + shift)
        image = self.out(self.up2(self.mid(self.up1(h))))
        # Clamped, not a sigmoid: MSRS frames are dark (mean 0.08), and a sigmoid pushed towards 0
        # saturates and stops learning. Training sees the raw values so an overshoot keeps its gradient.
        return image if self.training else image.clamp(0.0, 1.0)


class Autoencoder(nn.Module):
    """Encoder + decoder sharing one latent space for all three diffusion streams."""

    def __init__(self, cfg: AutoencoderConfig | None = None):
        super().__init__()
        self.config = cfg or AutoencoderConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config) if self.config.decoder == "released" else LocalDecoder(self.config)

    def encode(self, image: torch.Tensor, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B,8,H/4,W/4) in [0,1]."""
        return self.encoder(image, noise=noise, generator=generator)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B,8,h,w) in [0,1] -> (B,3,4h,4w) in [0,1]."""
        return self.decoder(latent)

    @staticmethod
    def to_diffusion(latent: torch.Tensor) -> torch.Tensor:
        """[0, 1] latent -> [-1, 1] diffusion space."""
        return latent * 2.0 - 1.0

    @staticmethod
    def from_diffusion(z: torch.Tensor) -> torch.Tensor:
        """[-1, 1] diffusion space -> [0, 1] latent, clamped as the decoder expects."""
        return ((z + 1.0) / 2.0).clamp(0.0, 1.0)

    def decode_diffusion(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(self.from_diffusion(z))
