"""Seeded synthesis of degraded visible images (low light, haze, noise and their compositions, as the paper trains with).

Ψ learns degraded -> clean visible and Φ degraded visible -> infrared, so both
need degraded inputs made from clean frames. Five kinds of degradation, each a
small pure function on RGB float images:

- ``lowlight``: darker exposure in linear light, then photon (Poisson) and
  read (Gaussian) sensor noise, then back to display gamma;
- ``haze``: atmospheric scattering I = J t + A (1 - t) with a depth-like
  transmission map (far at the top of the frame, near at the bottom);
- ``noise``: additive white Gaussian noise;
- ``blur``: Gaussian (defocus) or linear motion blur;
- ``jpeg``: OpenCV JPEG encode/decode at a low quality.

A `Degradation` records which kinds were applied, in which order and with
which parameters, plus the seed of the noise it draws. `apply(image, spec)` is
a pure function of (image, spec); `random_degradation(rng)` draws a spec.
Ranges of every parameter are in `PARAM_RANGES` and in docs/DEGRADATIONS.md.

Images are (H, W, 3) float32 in [0, 1] (uint8 is accepted and returned as
uint8); outputs stay in [0, 1].
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .color import to_uint8

KINDS: tuple[str, ...] = ("lowlight", "haze", "noise", "blur", "jpeg")
# The kinds the paper names; a random composition contains at least one.
PRIMARY_KINDS: tuple[str, ...] = ("lowlight", "haze", "noise")
# Physical order of a composition: scene (haze) -> optics/motion (blur) ->
# sensor (low light with its shot/read noise, extra noise) -> codec (jpeg).
CANONICAL_ORDER: tuple[str, ...] = ("haze", "blur", "lowlight", "noise", "jpeg")

# (low, high) of every sampled parameter, uniform unless noted in the sampler.
PARAM_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "lowlight": {
        "exposure": (0.05, 0.35),      # gain on linear light (1 = unchanged)
        "gamma": (1.0, 1.5),           # extra power on linear light: >1 crushes shadows more than highlights
        "full_well": (200.0, 2000.0),  # photo-electrons at linear value 1 after exposure (log-uniform)
        "read_sigma": (0.001, 0.01),   # read-noise std in linear units
    },
    "haze": {
        "beta": (0.6, 2.8),            # scattering coefficient times the depth range: t ranges over [exp(-beta), 1]
        "airlight": (0.7, 1.0),        # atmospheric light A (grey level)
        "tint": (-0.03, 0.03),         # per-channel relative tint of A
        "depth_noise": (0.0, 0.3),     # amplitude of the smooth random part of the depth map
        "horizon": (0.3, 0.6),         # row (fraction of height) where depth reaches its maximum
    },
    "noise": {
        "sigma": (0.01, 0.08),         # std of additive Gaussian noise, [0, 1] scale (about 3..20 / 255)
    },
    "blur": {
        "sigma": (0.5, 2.5),           # Gaussian blur std in pixels
        "length": (5.0, 15.0),         # motion blur path length in pixels
        "angle": (0.0, 180.0),         # motion blur direction in degrees
    },
    "jpeg": {
        "quality": (10.0, 60.0),       # OpenCV JPEG quality (integer)
    },
}

# Linear <-> display encoding: a plain 2.2 power, a rough stand-in for sRGB
# that is enough for a noise model and exactly invertible.
DISPLAY_GAMMA = 2.2


@dataclass(frozen=True)
class DegradationStep:
    """One applied degradation: its kind and its parameters (plain JSON-able values)."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown degradation kind {self.kind!r}; known: {', '.join(KINDS)}")


@dataclass(frozen=True)
class Degradation:
    """A composition of degradation steps applied in order.

    `noise_seed` seeds every random field drawn while applying (sensor noise,
    the haze depth texture), so `apply(image, spec)` is deterministic.
    """

    steps: tuple[DegradationStep, ...] = ()
    noise_seed: int = 0

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(step.kind for step in self.steps)

    def describe(self) -> str:
        """Short human-readable form, e.g. 'haze(beta=1.2, ...) + jpeg(quality=30)'."""
        if not self.steps:
            return "none"
        parts = []
        for step in self.steps:
            args = ", ".join(f"{k}={_fmt(v)}" for k, v in step.params.items())
            parts.append(f"{step.kind}({args})")
        return " + ".join(parts)

    def to_dict(self) -> dict:
        return {"noise_seed": self.noise_seed, "steps": [{"kind": s.kind, "params": dict(s.params)} for s in self.steps]}

    @classmethod
    def from_dict(cls, data: dict) -> "Degradation":
        steps = tuple(DegradationStep(s["kind"], dict(s.get("params", {}))) for s in data.get("steps", []))
        return cls(steps=steps, noise_seed=int(data.get("noise_seed", 0)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


# --------------------------------------------------------------------------- #
# The degradation models. Each takes (H, W, 3) float32 in [0, 1] and returns the
# same shape in [0, 1]; the ones that draw noise take a numpy Generator.
# --------------------------------------------------------------------------- #

def to_linear(image: np.ndarray) -> np.ndarray:
    """Display-encoded [0, 1] -> linear light [0, 1] (power 2.2)."""
    return np.power(np.clip(image, 0.0, 1.0), DISPLAY_GAMMA, dtype=np.float32)


def to_display(linear: np.ndarray) -> np.ndarray:
    """Linear light [0, 1] -> display-encoded [0, 1] (power 1/2.2)."""
    return np.power(np.clip(linear, 0.0, 1.0), 1.0 / DISPLAY_GAMMA, dtype=np.float32)


def low_light(image: np.ndarray, rng: np.random.Generator, exposure: float, gamma: float,
              full_well: float, read_sigma: float) -> np.ndarray:
    """Under-exposed capture with signal-dependent sensor noise.

    linear = (image ** 2.2) ** gamma * exposure; electrons ~ Poisson(linear * full_well);
    out = (electrons / full_well + N(0, read_sigma)) ** (1 / 2.2), clipped to [0, 1].
    Noise is drawn per colour channel (a sensor's photosites are independent).
    Ranges: `PARAM_RANGES["lowlight"]`. Lower exposure and full_well -> darker and grainier.
    """
    linear = np.power(to_linear(image), gamma, dtype=np.float32) * np.float32(exposure)
    electrons = rng.poisson(linear.astype(np.float64) * full_well)  # shot noise: variance = mean
    noisy = electrons / full_well + rng.normal(0.0, read_sigma, size=image.shape)
    return to_display(noisy.astype(np.float32))


def smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """Smooth random field (H, W) float32 in [-1, 1]: a coarse random grid upsampled bicubically."""
    height, width = shape
    grid = rng.uniform(-1.0, 1.0, size=(cells, max(2, round(cells * width / max(height, 1))))).astype(np.float32)
    field = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(field, -1.0, 1.0)


def haze_depth(shape: tuple[int, int], rng: np.random.Generator, horizon: float, depth_noise: float) -> np.ndarray:
    """Depth-like map (H, W) float32 in [0, 1]: 1 (far) above `horizon`, falling to 0 at the bottom row.

    Road scenes are far at the top and near at the bottom; a smooth random field
    of amplitude `depth_noise` breaks the perfect gradient (buildings, trees).
    """
    height, width = shape
    rows = (np.arange(height, dtype=np.float32) + 0.5) / height
    ramp = np.clip((1.0 - rows) / max(1.0 - horizon, 1e-3), 0.0, 1.0)
    depth = np.repeat(ramp[:, None], width, axis=1)
    if depth_noise > 0:
        depth = depth + depth_noise * smooth_noise(shape, rng)
    return np.clip(depth, 0.0, 1.0).astype(np.float32)


def haze(image: np.ndarray, rng: np.random.Generator, beta: float, airlight: float,
         tint: tuple[float, float, float] | list[float], depth_noise: float, horizon: float) -> np.ndarray:
    """Atmospheric scattering I = J t + A (1 - t), t = exp(-beta * depth).

    J is the clean image (display values, as common dehazing data do), A the
    airlight colour airlight * (1 + tint) per channel, depth from `haze_depth`.
    Ranges: `PARAM_RANGES["haze"]`. Higher beta -> thicker haze, lower contrast.
    """
    depth = haze_depth(image.shape[:2], rng, horizon, depth_noise)
    transmission = np.exp(-beta * depth)[:, :, None].astype(np.float32)
    air = np.clip(airlight * (1.0 + np.asarray(tint, dtype=np.float32)), 0.0, 1.0).reshape(1, 1, 3)
    return np.clip(image * transmission + air * (1.0 - transmission), 0.0, 1.0).astype(np.float32)


def gaussian_noise(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Additive white Gaussian noise of std `sigma` (independent per pixel and channel), clipped."""
    noisy = image + rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """Normalised linear motion-blur kernel (k, k) float32, k odd >= length, path through the centre.

    The path is sampled densely and splatted bilinearly so that non-integer
    lengths and any angle give a smooth kernel.
    """
    size = int(np.ceil(length)) | 1
    kernel = np.zeros((size, size), dtype=np.float64)
    centre = (size - 1) / 2.0
    theta = np.deg2rad(angle)
    offsets = np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, num=max(2, int(4 * length)))
    xs = centre + offsets * np.cos(theta)
    ys = centre - offsets * np.sin(theta)  # image rows grow downwards
    for x, y in zip(xs, ys):
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            if 0 <= x0 + dx < size and 0 <= y0 + dy < size:
                kernel[y0 + dy, x0 + dx] += w
    return (kernel / kernel.sum()).astype(np.float32)


def blur(image: np.ndarray, blur_type: str, sigma: float | None = None, length: float | None = None,
         angle: float | None = None) -> np.ndarray:
    """Gaussian blur (`blur_type="gaussian"`, std `sigma` px) or motion blur (`"motion"`, `length` px at `angle` deg).

    Borders are reflected so the frame edge does not darken. Ranges: `PARAM_RANGES["blur"]`.
    """
    if blur_type == "gaussian":
        out = cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT101)
    elif blur_type == "motion":
        out = cv2.filter2D(image, -1, motion_kernel(float(length), float(angle)), borderType=cv2.BORDER_REFLECT101)
    else:
        raise ValueError(f"unknown blur type {blur_type!r}; use 'gaussian' or 'motion'")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Round trip through OpenCV's JPEG codec at `quality` (1..100); output is quantised to 1/255 steps."""
    bgr = cv2.cvtColor(to_uint8(image), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to encode JPEG")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


# --------------------------------------------------------------------------- #
# Specs: sampling and applying.
# --------------------------------------------------------------------------- #

# Which end of each range is the mild one ("low" or "high"); parameters not
# listed (airlight, tint, depth shape, blur angle) do not set severity.
MILD_END: dict[str, dict[str, str]] = {
    "lowlight": {"exposure": "high", "gamma": "low", "full_well": "high", "read_sigma": "low"},
    "haze": {"beta": "low"},
    "noise": {"sigma": "low"},
    "blur": {"sigma": "low", "length": "low"},
    "jpeg": {"quality": "high"},
}
# In a composition of several steps each one is drawn from the mildest part of
# its range: stacking, say, the thickest haze on the darkest exposure leaves
# an image with nothing to restore.
COMPOSITION_SEVERITY = 0.6


def param_range(kind: str, name: str, severity: float = 1.0, log: bool = False) -> tuple[float, float]:
    """(low, high) of a parameter restricted to its mildest `severity` fraction (0 < severity <= 1)."""
    low, high = PARAM_RANGES[kind][name]
    mild = MILD_END.get(kind, {}).get(name)
    if mild is None or severity >= 1.0:
        return low, high
    if log:
        low, high = np.log(low), np.log(high)
    if mild == "low":
        high = low + severity * (high - low)
    else:
        low = high - severity * (high - low)
    return (float(np.exp(low)), float(np.exp(high))) if log else (low, high)


def _uniform(rng: np.random.Generator, kind: str, name: str, severity: float) -> float:
    low, high = param_range(kind, name, severity)
    return float(rng.uniform(low, high))


def _log_uniform(rng: np.random.Generator, kind: str, name: str, severity: float) -> float:
    low, high = param_range(kind, name, severity, log=True)
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def sample_step(kind: str, rng: np.random.Generator, severity: float = 1.0) -> DegradationStep:
    """Draw the parameters of one degradation kind from `PARAM_RANGES`.

    severity in (0, 1]: 1 uses the full ranges, smaller values only their mild
    part (see `MILD_END`, `param_range`).
    """
    if not 0.0 < severity <= 1.0:
        raise ValueError(f"severity must be in (0, 1], got {severity}")
    if kind == "lowlight":
        params = {
            "exposure": _uniform(rng, kind, "exposure", severity),
            "gamma": _uniform(rng, kind, "gamma", severity),
            "full_well": _log_uniform(rng, kind, "full_well", severity),  # spans a decade: log-uniform
            "read_sigma": _uniform(rng, kind, "read_sigma", severity),
        }
    elif kind == "haze":
        low, high = PARAM_RANGES[kind]["tint"]
        params = {
            "beta": _uniform(rng, kind, "beta", severity),
            "airlight": _uniform(rng, kind, "airlight", severity),
            "tint": [float(v) for v in rng.uniform(low, high, size=3)],
            "depth_noise": _uniform(rng, kind, "depth_noise", severity),
            "horizon": _uniform(rng, kind, "horizon", severity),
        }
    elif kind == "noise":
        params = {"sigma": _uniform(rng, kind, "sigma", severity)}
    elif kind == "blur":
        if rng.random() < 0.5:
            params = {"type": "gaussian", "sigma": _uniform(rng, kind, "sigma", severity)}
        else:
            params = {"type": "motion", "length": _uniform(rng, kind, "length", severity),
                      "angle": _uniform(rng, kind, "angle", severity)}
    elif kind == "jpeg":
        low, high = param_range(kind, "quality", severity)
        params = {"quality": int(rng.integers(int(round(low)), int(high) + 1))}
    else:
        raise ValueError(f"unknown degradation kind {kind!r}; known: {', '.join(KINDS)}")
    return DegradationStep(kind, params)


def single_degradation(kind: str, rng: np.random.Generator, severity: float = 1.0) -> Degradation:
    """A spec with one step of `kind`, parameters and noise seed drawn from `rng`."""
    step = sample_step(kind, rng, severity)
    return Degradation(steps=(step,), noise_seed=int(rng.integers(2**31)))


def random_degradation(rng: np.random.Generator, primary: tuple[str, ...] = PRIMARY_KINDS,
                       p_extra_primary: float = 0.35, p_blur: float = 0.25, p_jpeg: float = 0.25,
                       composition_severity: float = COMPOSITION_SEVERITY) -> Degradation:
    """Draw a random composition.

    One kind of `primary` is always present; each other primary kind joins with
    probability `p_extra_primary` (so pairs and triples occur, as in the
    paper's "compositions"); blur and JPEG join with `p_blur` / `p_jpeg`. Steps
    are ordered by `CANONICAL_ORDER`. When low light is drawn first, extra
    Gaussian noise is kept only a third of the time: low light already carries
    its own sensor noise. A lone step uses its full ranges; in a composition of
    two or more steps every step uses `composition_severity`.
    """
    if not primary:
        raise ValueError("random_degradation needs at least one primary kind")
    first = primary[int(rng.integers(len(primary)))]
    kinds = {first}
    for kind in primary:
        if kind != first and rng.random() < p_extra_primary:
            kinds.add(kind)
    if "lowlight" in kinds and "noise" in kinds and first != "noise" and rng.random() < 2 / 3:
        kinds.discard("noise")
    if rng.random() < p_blur:
        kinds.add("blur")
    if rng.random() < p_jpeg:
        kinds.add("jpeg")
    ordered = [kind for kind in CANONICAL_ORDER if kind in kinds]
    severity = 1.0 if len(ordered) == 1 else composition_severity
    steps = tuple(sample_step(kind, rng, severity) for kind in ordered)
    return Degradation(steps=steps, noise_seed=int(rng.integers(2**31)))


def apply_step(image: np.ndarray, step: DegradationStep, rng: np.random.Generator) -> np.ndarray:
    """Apply one step to (H, W, 3) float32 [0, 1]; noise drawn from `rng`."""
    p = step.params
    if step.kind == "lowlight":
        return low_light(image, rng, p["exposure"], p["gamma"], p["full_well"], p["read_sigma"])
    if step.kind == "haze":
        return haze(image, rng, p["beta"], p["airlight"], p.get("tint", (0.0, 0.0, 0.0)),
                    p.get("depth_noise", 0.0), p.get("horizon", 0.45))
    if step.kind == "noise":
        return gaussian_noise(image, rng, p["sigma"])
    if step.kind == "blur":
        return blur(image, p["type"], p.get("sigma"), p.get("length"), p.get("angle"))
    if step.kind == "jpeg":
        return jpeg(image, p["quality"])
    raise ValueError(f"unknown degradation kind {step.kind!r}")


def apply(image: np.ndarray, spec: Degradation) -> np.ndarray:
    """Apply a spec: deterministic in (image, spec).

    image: (H, W, 3) float in [0, 1] (returned as float32) or uint8 (returned as uint8).
    """
    as_uint8 = np.asarray(image).dtype == np.uint8
    out = to_float(image)
    rng = np.random.default_rng(spec.noise_seed)
    for step in spec.steps:
        out = apply_step(out, step, rng)
    return to_uint8(out) if as_uint8 else out


def degrade_seeded(image: np.ndarray, seed: int, kind: str = "random", return_spec: bool = False):
    """Reproducible degraded copy of `image`: the spec is drawn from `default_rng(seed)`.

    kind: "random" (a `random_degradation` composition), "none", or one of KINDS.
    image: (H, W, 3) float [0, 1] or uint8; the output has the input's dtype.
    Returns the degraded image, or (image, spec) with `return_spec=True`.
    """
    rng = np.random.default_rng(seed)
    if kind == "random":
        spec = random_degradation(rng)
    elif kind == "none":
        spec = Degradation()
    else:
        spec = single_degradation(kind, rng)
    out = apply(image, spec)
    return (out, spec) if return_spec else out


def degrade_batch(images, specs: list[Degradation]):
    """Torch convenience: (B, 3, H, W) float tensor in [0, 1] -> degraded, same dtype and device.

    Runs the numpy models per image on the CPU (degradations are cheap next to
    the networks); one spec per image.
    """
    import torch

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"degrade_batch expects (B, 3, H, W), got {tuple(images.shape)}")
    if len(specs) != images.shape[0]:
        raise ValueError(f"degrade_batch got {len(specs)} specs for a batch of {images.shape[0]}")
    host = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    out = np.stack([apply(img, spec) for img, spec in zip(host, specs)])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(device=images.device, dtype=images.dtype)


# --------------------------------------------------------------------------- #
# Conversions.
# --------------------------------------------------------------------------- #

def to_float(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 or float -> float32 in [0, 1]; rejects other shapes."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"degradations expect an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


