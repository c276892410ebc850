"""The networks' I/O contract: names, shapes and padding every runtime agrees on.

A leaf module (it imports nothing of ours): the pipeline, the ONNX export, the
backends and the benchmark all read the same table, so a renamed input or a new
padding rule changes in one place.

Components (h, w = latent size = padded image size / 4):

    ikr, ckg   x (B, 16, h, w), t (B,) float                -> eps (B, 8, h, w)
    fusion     x24 (B, 24, h, w), eps_ikr, eps_ckg (B, 8, h, w),
               t (B,), seg_state (B, 9, h, w)               -> w (B, 8, h, w), seg_state_next (B, 9, h, w)
    decoder    latent (B, 8, h, w) in [0, 1]                -> image (B, 3, 4h, 4w) in [0, 1]
    styled_decoder  latent, style_latent (B, 8, h, w) in [0, 1] -> image (B, 3, 4h, 4w): `latent` decoded
               in `style_latent`'s tone (MagImg in the IKR stream's, see MagicFuseModel.magimg_tone)
    encoder    image (B, 3, 4h, 4w) in [0, 1], noise (B, 32, h, w) -> latent (B, 8, h, w) in [0, 1]

ikr/ckg always return the noise eps, whatever their body predicts (see
`magicfuse_core.denoiser`), so every runtime of them is interchangeable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# The autoencoder works at 1/4 resolution and the UNet halves the latent three
# times: frames are padded on the right and bottom to a multiple of 32 pixels.
PAD_MULTIPLE = 32
LATENT_SCALE = 4


@dataclass(frozen=True)
class NetIO:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


NET_IO: dict[str, NetIO] = {
    "ikr": NetIO(("x", "t"), ("eps",)),
    "ckg": NetIO(("x", "t"), ("eps",)),
    "fusion": NetIO(("x24", "eps_ikr", "eps_ckg", "t", "seg_state"), ("w", "seg_state_next")),
    "decoder": NetIO(("latent",), ("image",)),
    "styled_decoder": NetIO(("latent", "style_latent"), ("image",)),
    "encoder": NetIO(("image", "noise"), ("latent",)),
}
SAMPLER_COMPONENTS = ("ikr", "ckg", "fusion")          # run at every step
AUTOENCODER_COMPONENTS = ("encoder", "decoder", "styled_decoder")  # once (encode) and per decoded output
DEFAULT_COMPONENTS = SAMPLER_COMPONENTS + AUTOENCODER_COMPONENTS


def padded_size(height: int, width: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int]:
    """Image size -> the size the networks see after padding."""
    if height < 4 or width < 4:
        raise ValueError(f"image size must be at least 4x4, got {height}x{width}")
    return math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple


def latent_size(height: int, width: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int]:
    """Image size -> latent size the pipeline will use (padding to `multiple`, then / 4)."""
    ph, pw = padded_size(height, width, multiple)
    return ph // LATENT_SCALE, pw // LATENT_SCALE


@dataclass(frozen=True)
class Channels:
    """The channel counts a model's components exchange."""

    latent: int = 8          # autoencoder latent channels
    classes: int = 9         # segmentation classes
    noise: int = 32          # encoder noise channels

    @classmethod
    def of(cls, model) -> "Channels":
        """From a MagicFuseModel (duck-typed: this module imports nothing of ours)."""
        ae = model.autoencoder.config
        return cls(ae.latent_channels, model.fusion.config.num_classes, ae.noise_channels)


def input_shapes(channels: Channels, component: str, batch: int, h: int, w: int) -> dict[str, tuple[int, ...]]:
    """Input shapes of a component at latent size (h, w)."""
    lc, k = channels.latent, channels.classes
    denoiser = {"x": (batch, 2 * lc, h, w), "t": (batch,)}
    shapes = {
        "ikr": denoiser,
        "ckg": denoiser,
        "fusion": {"x24": (batch, 3 * lc, h, w), "eps_ikr": (batch, lc, h, w), "eps_ckg": (batch, lc, h, w),
                   "t": (batch,), "seg_state": (batch, k, h, w)},
        "decoder": {"latent": (batch, lc, h, w)},
        "styled_decoder": {"latent": (batch, lc, h, w), "style_latent": (batch, lc, h, w)},
        "encoder": {"image": (batch, 3, LATENT_SCALE * h, LATENT_SCALE * w), "noise": (batch, channels.noise, h, w)},
    }
    if component not in shapes:
        raise ValueError(f"unknown component {component!r}; known: {', '.join(NET_IO)}")
    return shapes[component]


def output_shapes(channels: Channels, component: str, batch: int, h: int, w: int) -> dict[str, tuple[int, ...]]:
    """Output shapes of a component at latent size (h, w)."""
    lc, k = channels.latent, channels.classes
    shapes = {
        "ikr": {"eps": (batch, lc, h, w)},
        "ckg": {"eps": (batch, lc, h, w)},
        "fusion": {"w": (batch, lc, h, w), "seg_state_next": (batch, k, h, w)},
        "decoder": {"image": (batch, 3, LATENT_SCALE * h, LATENT_SCALE * w)},
        "styled_decoder": {"image": (batch, 3, LATENT_SCALE * h, LATENT_SCALE * w)},
        "encoder": {"latent": (batch, lc, h, w)},
    }
    if component not in shapes:
        raise ValueError(f"unknown component {component!r}; known: {', '.join(NET_IO)}")
    return shapes[component]
