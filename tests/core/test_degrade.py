"""Degradation synthesis: seeded, in range, and each model does what its name says."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from magicfuse_core import degrade


def textured_image(seed: int = 0, size: tuple[int, int] = (64, 96)) -> np.ndarray:
    """(H, W, 3) float32: mid-grey checkerboard with colour variation, full of edges."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(size)
    checker = ((rows // 8 + cols // 8) % 2).astype(np.float32)
    base = 0.25 + 0.5 * checker[:, :, None]
    return np.clip(base + rng.uniform(-0.15, 0.15, size=(*size, 3)), 0, 1).astype(np.float32)


def gradient_energy(image: np.ndarray) -> float:
    """Mean absolute horizontal + vertical difference of the grey image (local contrast)."""
    grey = image.mean(axis=2)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


@pytest.mark.parametrize("kind", ["random", "none", *degrade.KINDS])
def test_same_seed_same_output_and_other_seed_differs(kind):
    image = textured_image()
    first, spec = degrade.degrade_seeded(image, 7, kind, return_spec=True)
    again = degrade.degrade_seeded(image, 7, kind)
    np.testing.assert_array_equal(first, again)
    if kind != "none":
        other = degrade.degrade_seeded(image, 8, kind)
        assert not np.array_equal(first, other)
    # The spec alone reproduces the result, also after a JSON round trip.
    restored = degrade.Degradation.from_dict(json.loads(spec.to_json()))
    np.testing.assert_array_equal(degrade.apply(image, restored), first)


@pytest.mark.parametrize("seed", range(12))
def test_random_compositions_stay_in_unit_range(seed):
    image = textured_image(seed)
    out, spec = degrade.degrade_seeded(image, seed, return_spec=True)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert set(spec.kinds) & set(degrade.PRIMARY_KINDS)
    assert list(spec.kinds) == [k for k in degrade.CANONICAL_ORDER if k in spec.kinds]


def test_extreme_inputs_stay_in_unit_range():
    for value in (0.0, 1.0):
        image = np.full((32, 48, 3), value, np.float32)
        for kind in degrade.KINDS:
            out = degrade.degrade_seeded(image, 1, kind)
            assert out.min() >= 0.0 and out.max() <= 1.0, kind


def test_low_light_lowers_mean_brightness():
    image = textured_image()
    for seed in range(5):
        out = degrade.degrade_seeded(image, seed, "lowlight")
        assert out.mean() < 0.8 * image.mean()


def test_low_light_noise_grows_with_signal():
    # Photon noise is signal dependent: a brighter flat patch is noisier in linear light.
    rng = np.random.default_rng(0)
    dark = degrade.low_light(np.full((64, 64, 3), 0.3, np.float32), rng, 0.3, 1.0, 500.0, 0.0)
    bright = degrade.low_light(np.full((64, 64, 3), 0.9, np.float32), rng, 0.3, 1.0, 500.0, 0.0)
    assert degrade.to_linear(bright).std() > 1.5 * degrade.to_linear(dark).std()


def test_haze_lowers_contrast_and_brightens_the_far_top():
    image = textured_image()
    for seed in range(5):
        out = degrade.degrade_seeded(image, seed, "haze")
        assert gradient_energy(out) < 0.8 * gradient_energy(image)
    hazy = degrade.haze(image, np.random.default_rng(0), beta=2.0, airlight=0.95, tint=(0, 0, 0),
                        depth_noise=0.0, horizon=0.4)
    top, bottom = hazy[:8], hazy[-8:]
    assert gradient_energy(top) < gradient_energy(bottom)  # far rows are hazier


def test_haze_with_zero_beta_is_identity():
    image = textured_image()
    out = degrade.haze(image, np.random.default_rng(0), beta=0.0, airlight=0.9, tint=(0, 0, 0),
                       depth_noise=0.2, horizon=0.5)
    np.testing.assert_allclose(out, image, atol=1e-6)


def test_gaussian_noise_has_the_requested_std():
    image = np.full((128, 128, 3), 0.5, np.float32)
    out = degrade.gaussian_noise(image, np.random.default_rng(0), sigma=0.05)
    assert abs(float((out - image).std()) - 0.05) < 0.003


def test_blur_keeps_flat_images_and_smooths_edges():
    flat = np.full((32, 32, 3), 0.4, np.float32)
    image = textured_image()
    for params in ({"blur_type": "gaussian", "sigma": 2.0}, {"blur_type": "motion", "length": 9.0, "angle": 30.0}):
        np.testing.assert_allclose(degrade.blur(flat, **params), flat, atol=1e-6)
        assert gradient_energy(degrade.blur(image, **params)) < gradient_energy(image)


def test_motion_kernel_is_normalised_and_follows_the_angle():
    horizontal = degrade.motion_kernel(9.0, 0.0)
    assert horizontal.shape == (9, 9)
    assert abs(float(horizontal.sum()) - 1.0) < 1e-6
    assert horizontal[4].sum() > 0.99  # all weight on the centre row
    vertical = degrade.motion_kernel(9.0, 90.0)
    assert vertical[:, 4].sum() > 0.99


def test_jpeg_is_lossy_and_quantised():
    image = textured_image()
    out = degrade.jpeg(image, quality=10)
    assert not np.allclose(out, image, atol=1 / 255)
    np.testing.assert_allclose(out * 255, np.round(out * 255), atol=1e-4)


def test_uint8_input_gives_uint8_output():
    image = (textured_image() * 255).astype(np.uint8)
    out = degrade.degrade_seeded(image, 3, "lowlight")
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out.mean() < image.mean()


def test_rejects_non_rgb_images():
    with pytest.raises(ValueError, match="RGB"):
        degrade.degrade_seeded(np.zeros((8, 8), np.float32), 0)
    with pytest.raises(ValueError, match="unknown degradation kind"):
        degrade.DegradationStep("fog")


def test_degrade_batch_matches_numpy_per_image():
    images = np.stack([textured_image(0), textured_image(1)])
    specs = [degrade.random_degradation(np.random.default_rng(s)) for s in (0, 1)]
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    out = degrade.degrade_batch(batch, specs)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    for i in range(2):
        np.testing.assert_allclose(out[i].permute(1, 2, 0).numpy(), degrade.apply(images[i], specs[i]), atol=1e-6)


def test_describe_names_every_step():
    spec = degrade.random_degradation(np.random.default_rng(3))
    text = spec.describe()
    assert all(kind in text for kind in spec.kinds)
    assert degrade.Degradation().describe() == "none"


def test_compositions_draw_from_the_mild_part_of_each_range():
    assert degrade.param_range("lowlight", "exposure", 0.5) == pytest.approx((0.2, 0.35))
    assert degrade.param_range("haze", "beta", 0.5) == pytest.approx((0.6, 1.7))
    assert degrade.param_range("haze", "airlight", 0.5) == degrade.PARAM_RANGES["haze"]["airlight"]
    for seed in range(40):
        spec = degrade.random_degradation(np.random.default_rng(seed))
        if len(spec.steps) > 1:
            for step in spec.steps:
                for name, value in step.params.items():
                    if name in degrade.MILD_END.get(step.kind, {}):
                        low, high = degrade.param_range(step.kind, name, degrade.COMPOSITION_SEVERITY,
                                                        log=name == "full_well")
                        assert low - 1e-9 <= value <= high + 1e-9, (step.kind, name, value)
