"""Fusion metrics vs the reference toolboxes' values, hand-made cases, input errors and mIoU."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from magicfuse_core.evaluation import metrics
from magicfuse_core.imageio import read_gray

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REFERENCE_ROOT = SHARED / "metrics"
# README of the reference set: relative 1e-6, but 1e-5 for the metrics with exact-equality branches.
TOLERANCE = {"Qabf": 1e-5, "Nabf": 1e-5}
DEFAULT_TOLERANCE = 1e-6


def _reference_cases() -> list:
    """(triple, metric) pairs of the shared reference set, or one skipping placeholder."""
    if not REFERENCE_ROOT.is_dir():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"reference metrics not found at {REFERENCE_ROOT}"))]
    cases = []
    for folder in sorted(p for p in REFERENCE_ROOT.iterdir() if (p / "expected.json").is_file()):
        for metric in json.loads((folder / "expected.json").read_text())["expected"]:
            cases.append(pytest.param(folder.name, metric, id=f"{folder.name}-{metric}"))
    return cases


@functools.lru_cache(maxsize=None)
def _computed(triple: str) -> dict[str, float]:
    folder = REFERENCE_ROOT / triple
    f, a, b = (read_gray(folder / n) for n in ("F_fused.png", "A_vis.png", "B_ir.png"))
    return metrics.compute_all(f, a, b)


@pytest.mark.parametrize("triple, metric", _reference_cases())
def test_metric_matches_reference_toolbox(triple, metric):
    expected = json.loads((REFERENCE_ROOT / triple / "expected.json").read_text())["expected"][metric]
    got = _computed(triple)[metric]
    if expected == "NaN":
        assert math.isnan(got)
    else:
        tol = TOLERANCE.get(metric, DEFAULT_TOLERANCE)
        assert got == pytest.approx(expected, rel=tol, abs=1e-12), f"{triple} {metric}"


# --------------------------------------------------------------------------- hand-made cases


def _smooth_random(seed: int, shape=(48, 64), low=0, high=240) -> np.ndarray:
    """Reproducible textured uint8 image with values in [low, high]."""
    rng = np.random.default_rng(seed)
    x = rng.random((shape[0] // 4 + 1, shape[1] // 4 + 1))
    x = np.kron(x, np.ones((4, 4)))[: shape[0], : shape[1]] + 0.3 * rng.random(shape)
    x = (x - x.min()) / (x.max() - x.min())
    return np.round(low + x * (high - low)).astype(np.uint8)


def test_compute_all_returns_the_thirteen_metrics_in_order():
    a, b, f = _smooth_random(1), _smooth_random(2), _smooth_random(3)
    assert tuple(metrics.compute_all(f, a, b)) == metrics.METRIC_NAMES


def test_identical_images_give_perfect_similarity_scores():
    a = _smooth_random(4)
    m = metrics.compute_all(a, a, a)
    assert m["MSE"] == 0.0
    assert m["PSNR"] == math.inf
    assert m["CC"] == pytest.approx(1.0)
    assert m["SSIM"] == pytest.approx(1.0)
    assert m["VIF"] == pytest.approx(2.0, rel=1e-6)  # VIFP(X, X) = 1, summed over two sources
    assert m["Nabf"] == 0.0  # F never has a stronger edge than both sources
    assert m["MI"] == pytest.approx(2 * m["EN"])  # values < 254: no merged bins
    assert math.isnan(m["SCD"])  # F - A is constant


def test_scd_is_nan_when_fused_equals_visible():
    a, b = _smooth_random(5), _smooth_random(6)
    assert math.isnan(metrics.compute_all(a, a, b)["SCD"])


def test_mi_merges_grey_levels_254_and_255_in_the_joint_histogram():
    # Half 254, half 255: H = 1 bit, but the (merged) joint histogram has one bin,
    # so MI(X, F) = 1 + 1 - 0 = 2 bits per source, as in Tang's Hab.m.
    img = np.full((16, 16), 254, np.uint8)
    img[:, 8:] = 255
    m = metrics.compute_all(img, img, img)
    assert m["EN"] == pytest.approx(1.0)
    assert m["MI"] == pytest.approx(4.0)


def test_two_level_image_entropy_and_sd():
    img = np.zeros((20, 20), np.uint8)
    img[:10] = 255
    m = metrics.compute_all(img, _smooth_random(7, (20, 20)), _smooth_random(8, (20, 20)))
    assert m["EN"] == pytest.approx(1.0)
    assert m["SD"] == pytest.approx(127.5)
    # Only vertical differences: 20 columns x one 255 step over (H - 1) W differences.
    assert m["SF"] == pytest.approx(math.sqrt(20 * 255.0 ** 2 / (19 * 20)))


def test_constant_images_have_no_information_and_undefined_correlations():
    c = np.full((32, 32), 100, np.uint8)
    m = metrics.compute_all(c, c, c)
    for name in ("EN", "SD", "SF", "AG", "Nabf", "MSE"):
        assert m[name] == 0.0, name
    assert m["SSIM"] == pytest.approx(1.0)
    for name in ("CC", "SCD", "VIF"):  # 0/0 in the reference code
        assert math.isnan(m[name]), name
    # Qabf's Sobel uses zero padding, so a constant non-zero image still has edges
    # on its border; only an all-black triple leaves Qabf undefined.
    assert math.isfinite(m["Qabf"])
    black = np.zeros((32, 32), np.uint8)
    assert math.isnan(metrics.compute_all(black, black, black)["Qabf"])


def test_swapping_the_sources_changes_no_metric():
    a, b, f = _smooth_random(9), _smooth_random(10), _smooth_random(11)
    ab, ba = metrics.compute_all(f, a, b), metrics.compute_all(f, b, a)
    for name in metrics.METRIC_NAMES:
        assert ba[name] == pytest.approx(ab[name], rel=1e-12, abs=1e-15), name


def test_rgb_input_uses_matlab_rgb2gray_weights():
    rgb = np.zeros((1, 4, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[0, 3] = (77, 77, 77)
    assert metrics.to_gray(rgb).tolist() == [[76.0, 150.0, 29.0, 77.0]]


def test_rgb_triple_scores_like_its_grey_conversion():
    rng = np.random.default_rng(12)
    rgb = [rng.integers(0, 256, (24, 30, 3), dtype=np.uint8) for _ in range(3)]
    grey = [metrics.to_gray(x).astype(np.uint8) for x in rgb]
    got, ref = metrics.compute_all(*rgb), metrics.compute_all(*grey)
    for name in metrics.METRIC_NAMES:
        assert got[name] == pytest.approx(ref[name], rel=1e-12), name


def test_fusion_scorer_matches_compute_all():
    a, b = _smooth_random(13), _smooth_random(14)
    scorer = metrics.FusionScorer(a, b)
    for seed in (15, 16):
        f = _smooth_random(seed)
        assert scorer.score(f) == pytest.approx(metrics.compute_all(f, a, b), nan_ok=True)


# --------------------------------------------------------------------------- bad input


GOOD = np.zeros((16, 16), np.uint8)


@pytest.mark.parametrize(
    "fused, vis, ir, message",
    [
        (np.zeros((16, 17), np.uint8), GOOD, GOOD, "sizes differ"),
        (GOOD, GOOD, np.zeros((17, 16), np.uint8), "sizes differ"),
        (np.zeros((0, 0), np.uint8), GOOD, GOOD, "empty"),
        (np.zeros((16, 16), np.uint16), GOOD, GOOD, "uint8"),
        (GOOD, np.zeros((16, 16), np.float32), GOOD, "uint8"),
        (GOOD, GOOD, np.zeros((16, 16), bool), "uint8"),
        (np.zeros(16, np.uint8), GOOD, GOOD, "shape"),
        (np.zeros((16, 16, 4), np.uint8), GOOD, GOOD, "shape"),
        (np.zeros((2, 16, 16, 3), np.uint8), GOOD, GOOD, "shape"),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), "at least"),
    ],
    ids=["fused-size", "ir-size", "empty", "uint16", "float", "bool", "1d", "4-channel", "4d", "too-small"],
)
def test_bad_input_raises_value_error(fused, vis, ir, message):
    with pytest.raises(ValueError, match=message):
        metrics.compute_all(fused, vis, ir)


def test_bad_input_error_names_the_image():
    with pytest.raises(ValueError, match="infrared"):
        metrics.compute_all(GOOD, GOOD, np.zeros((16, 16), np.uint16))


# --------------------------------------------------------------------------- generated IR


def test_ir_similarity_of_identical_images():
    x = _smooth_random(17)
    s = metrics.ir_similarity(x, x)
    assert s == {"PSNR": math.inf, "SSIM": pytest.approx(1.0), "CC": pytest.approx(1.0)}


def test_ir_similarity_uses_standard_psnr():
    real = _smooth_random(18, high=200)
    generated = real + np.uint8(10)  # MSE = 100 exactly
    s = metrics.ir_similarity(generated, real)
    assert s["PSNR"] == pytest.approx(10 * math.log10(255.0 ** 2 / 100.0))  # 28.13 dB, no +48.13
    assert s["CC"] == pytest.approx(1.0)  # a constant offset keeps the correlation


# --------------------------------------------------------------------------- segmentation


def test_confusion_matrix_and_iou_on_a_hand_made_case():
    label = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = metrics.confusion_matrix(pred, label, num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]  # rows: label, columns: prediction
    per_class, miou = metrics.iou_from_confusion(cm)
    assert per_class.tolist() == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert miou == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)


def test_class_absent_from_label_and_prediction_is_left_out_of_the_mean():
    label = np.array([[0, 1], [1, 0]])
    cm = metrics.confusion_matrix(label, label, num_classes=4)
    per_class, miou = metrics.iou_from_confusion(cm)
    assert per_class[:2].tolist() == [1.0, 1.0]
    assert np.isnan(per_class[2:]).all()
    assert miou == 1.0


@pytest.mark.parametrize(
    "pred, label, message",
    [
        (np.zeros((2, 2), int), np.zeros((2, 3), int), "shape"),
        (np.full((2, 2), 3), np.zeros((2, 2), int), "prediction ids"),
        (np.zeros((2, 2), int), np.full((2, 2), 7), "label ids"),
        (np.zeros((2, 2), float), np.zeros((2, 2), int), "integer"),
    ],
)
def test_confusion_matrix_rejects_bad_maps(pred, label, message):
    with pytest.raises(ValueError, match=message):
        metrics.confusion_matrix(pred, label, num_classes=3)
