"""The model card's measures on small synthetic frames whose right answer is known by construction:
thermal-target contrasts, CLAHE, image-level fusion, segmentation vs weak masks, box drawing, card means."""
from __future__ import annotations

import math

import numpy as np
import pytest

from magicfuse_core.evaluation import baselines, card, figures, targets

from card_frames import HEIGHT, WIDTH, scored_card_frame
from card_frames import box as make_box

PERSON, BICYCLE, CAR = 0, 1, 2  # YOLO classes of MSRS det/classes.txt


def _grey_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


# --------------------------------------------------------------------------- thermal-target contrast


def test_bright_square_on_the_hottest_tenth_gives_its_luma_step_as_contrast():
    ir = np.arange(400, dtype=np.float64).reshape(20, 20) % 100  # 0..99, each level 4 times
    ir = ir.astype(np.uint8)
    ir[:4, :10] = 250  # 40 pixels = the hottest tenth exactly
    image = np.full((20, 20), 50, np.uint8)
    image[:4, :10] = 200
    assert targets.hottest_mask(ir).sum() == 40
    assert targets.hottest_contrast(image, ir) == pytest.approx(150.0)
    assert targets.hottest_contrast(_grey_rgb(image), ir) == pytest.approx(150.0)  # RGB: BT.601 luma
    assert targets.hottest_contrast(255 - image, ir) == pytest.approx(-150.0)  # dark where hot: negative


def test_hottest_mask_keeps_every_pixel_tied_at_the_threshold():
    ir = np.zeros((10, 10), np.uint8)
    ir[:3] = 255  # 30 % saturated: all of it is "hottest", never an arbitrary 10 % of it
    assert targets.hottest_mask(ir).sum() == 30


def test_hottest_contrast_is_undefined_on_a_constant_infrared_frame():
    assert math.isnan(targets.hottest_contrast(np.zeros((8, 8), np.uint8), np.full((8, 8), 90, np.uint8)))


def test_person_contrast_is_inside_the_boxes_minus_the_ring_around_them():
    h, w = 40, 40
    box = make_box(PERSON, (10, 20), (10, 20), h, w)
    image = np.zeros((h, w), np.uint8)
    image[5:25, 5:25] = 40    # the ring: the box grown by half its size on every side
    image[10:20, 10:20] = 100
    inside, ring = targets.person_regions([box], h, w)
    assert inside.sum() == 100 and ring.sum() == 400 - 100
    assert targets.person_contrast(image, [box]) == pytest.approx(60.0)


def test_person_contrast_needs_a_person_box():
    car = make_box(CAR, (10, 20), (10, 20), 40, 40)
    assert math.isnan(targets.person_contrast(np.zeros((40, 40), np.uint8), [car]))


# --------------------------------------------------------------------------- CLAHE and image-level fusion


def test_clahe_raises_the_contrast_of_a_low_contrast_ramp_and_keeps_grey_grey():
    ramp = np.tile(np.linspace(100, 130, 64).round().astype(np.uint8), (64, 1))
    out = baselines.clahe(_grey_rgb(ramp))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    y_out = baselines.luma_u8(out)
    # Clip limit 2 keeps the gain modest on a smooth ramp: 30 grey levels spread to 39.
    assert y_out.std() > ramp.std()
    assert np.ptp(y_out) >= 1.25 * np.ptp(ramp)
    # Still a ramp (CLAHE is not monotone from tile to tile, but the trend stays).
    assert np.corrcoef(y_out.mean(axis=0), np.arange(64))[0, 1] > 0.95
    assert np.abs(out.astype(int) - out[..., :1]).max() <= 1  # no colour appears on a grey frame


def test_clahe_multiplies_the_local_contrast_of_a_faint_texture():
    faint = np.random.default_rng(0).integers(100, 111, (64, 64)).astype(np.uint8)
    assert baselines.luma_u8(baselines.clahe(_grey_rgb(faint))).std() > 3 * faint.std()


def test_clahe_rejects_non_rgb_input():
    with pytest.raises(ValueError, match="uint8"):
        baselines.clahe(np.zeros((16, 16), np.uint8))


def test_image_level_fusion_takes_the_brighter_luma_and_keeps_the_ikr_chroma():
    rng = np.random.default_rng(0)
    # Mildly coloured, so that a bright luma with IKR's chroma still fits in RGB (no clipping).
    ikr = (100 + rng.integers(-15, 16, (16, 16, 3))).astype(np.uint8)
    ckg = np.zeros((16, 16, 3), np.uint8)
    ckg[4:8, 4:8] = 240  # a hot target brighter than anything in IKR
    fused = baselines.image_level_fusion(ikr, ckg)
    y_ikr, cb_ikr, cr_ikr = baselines.rgb_to_ycbcr(ikr)
    y, cb, cr = baselines.rgb_to_ycbcr(fused)
    hot = np.zeros((16, 16), bool)
    hot[4:8, 4:8] = True
    # One uint8 rounding per channel moves Y, Cb, Cr by a few 1/255 at most.
    assert np.abs(y[hot] - 240 / 255).max() < 2 / 255
    assert np.abs(y[~hot] - y_ikr[~hot]).max() < 2 / 255
    assert np.abs(cb - cb_ikr).max() < 3 / 255 and np.abs(cr - cr_ikr).max() < 3 / 255


def test_image_level_fusion_of_a_grey_ikr_is_the_pixel_maximum():
    rng = np.random.default_rng(1)
    ikr, ckg = (rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(2))
    fused = baselines.image_level_fusion(_grey_rgb(ikr), _grey_rgb(ckg))
    assert np.array_equal(fused, _grey_rgb(np.maximum(ikr, ckg)))


# --------------------------------------------------------------------------- segmentation vs weak masks


def test_segmentation_counts_against_silhouettes_boxes_and_the_outside():
    h, w = 40, 60
    ir = np.full((h, w), 20, np.uint8)
    ir[10:30, 12:16] = 200  # the warm body: 4 columns of the 10-column person box
    person = make_box(PERSON, (10, 30), (10, 20), h, w)
    car = make_box(CAR, (5, 15), (30, 50), h, w)   # 10 x 20 = 200 px
    bike = make_box(BICYCLE, (30, 40), (0, 10), h, w)  # 10 x 10 = 100 px
    seg = np.zeros((h, w), np.uint8)
    seg[10:30, 10:20] = 2   # the whole person box: its cold columns are ignored, not false positives
    seg[5:15, 30:40] = 1    # half the car box
    seg[0:2, 0:10] = 2      # 20 px of "person" outside every box
    counts = targets.segmentation_counts(seg, [person, car, bike], ir)
    scores = targets.segmentation_scores(counts)
    assert counts["person_tp"] == 80 and counts["person_fp"] == 20 and counts["person_fn"] == 0
    assert scores["person_recall"] == 1.0
    assert scores["person_precision"] == pytest.approx(0.8)
    assert scores["person_IoU"] == pytest.approx(0.8)
    assert scores["car_IoU"] == pytest.approx(0.5)
    assert scores["bike_IoU"] == 0.0
    outside = h * w - 200 - 200 - 100
    assert counts["outside_px"] == outside
    assert scores["outside_object_fraction"] == pytest.approx(20 / outside)


def test_segmentation_scores_are_nan_without_targets_or_predictions():
    counts = targets.segmentation_counts(np.zeros((12, 12), np.uint8), [], np.zeros((12, 12), np.uint8))
    scores = targets.segmentation_scores(counts)
    for key in ("person_IoU", "person_precision", "person_recall", "car_IoU", "bike_IoU"):
        assert math.isnan(scores[key]), key
    assert scores["outside_object_fraction"] == 0.0


# --------------------------------------------------------------------------- figures


def test_draw_boxes_colours_the_box_border_pixels_only():
    h, w = 20, 30
    image = np.zeros((h, w), np.uint8)
    box = make_box(PERSON, (4, 12), (5, 20), h, w)
    for thickness in (1, 2):
        out = figures.draw_boxes(image, [box], colour=(255, 0, 0), thickness=thickness)
        assert out.shape == (h, w, 3)
        changed = out.any(axis=2)
        border = np.zeros((h, w), bool)
        border[4:12, 5:20] = True
        border[4 + thickness:12 - thickness, 5 + thickness:20 - thickness] = False
        assert np.array_equal(changed, border)
        assert (out[border] == (255, 0, 0)).all()


def test_image_grid_tiles_every_panel_and_draws_the_boxes_on_each():
    rows = [[np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40), np.uint8)] for _ in range(2)]
    boxes = [[make_box(PERSON, (10, 30), (10, 30), 40, 40)], []]
    grid = figures.image_grid(rows, tile=(20, 20), boxes=boxes, gap=2)
    assert grid.shape == (2 * 20 + 2, 2 * 20 + 2, 3)
    assert (grid[20:22] == 255).all() and (grid[:, 20:22] == 255).all()  # white gaps
    yellow = (grid == figures.BOX_COLOUR).all(axis=2)
    assert yellow[:20, :20].any() and yellow[:20, 22:].any()  # both panels of the first row
    assert not yellow[22:].any()  # the second row has no box


# --------------------------------------------------------------------------- card scores and means


def _card_frame(seed: int) -> dict:
    return scored_card_frame(seed, weight=np.ones((HEIGHT, WIDTH), np.float32))


def test_card_scores_every_candidate_and_magimg_equal_to_ikr_has_ratio_one():
    frames = [_card_frame(0), _card_frame(1)]
    assert list(frames[0]["fusion"]) == [*card.CANDIDATES, card.CLEAN]
    assert set(frames[0]["contrast"]) == {*card.CANDIDATES, card.CKG, card.REAL_IR, card.CLEAN}
    summary = card.summarise(frames)
    assert summary["ratios"] == {"MI": pytest.approx(1.0), "Qabf": pytest.approx(1.0), "VIF": pytest.approx(1.0)}
    assert summary["person_frames"] == 2
    # The real IR is brighter where it is hot, by construction; the generated IR is the real one here.
    assert summary["contrast"]["hottest"][card.REAL_IR] > 100
    assert summary["contrast"]["person"][card.CKG] == summary["contrast"]["person"][card.REAL_IR]
    # Counts are summed over frames, not averaged.
    assert summary["segmentation"]["counts"]["outside_px"] == sum(f["seg_counts"]["outside_px"] for f in frames)
    assert summary["radiation"]["mean w_r inside person boxes"] == pytest.approx(1.0)
