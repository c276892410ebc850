"""Paired folder dataset and image I/O: pairing, errors, weak masks, augmentation, reproducibility."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from magicfuse_core import degrade, imageio
from magicfuse_core.data import (IGNORE_INDEX, Box, PairedFolderDataset, boxes_to_mask, holdout_frames,
                                 otsu_threshold, read_names, read_yolo_boxes)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
MSRS = SHARED / "data" / "msrs"

HEIGHT, WIDTH = 48, 64


def make_pair(root: Path, name: str, seed: int, size: tuple[int, int] = (HEIGHT, WIDTH)) -> None:
    """Write vis/NAME.png (random RGB) and ir/NAME.png (random grey) of `size` (H, W)."""
    rng = np.random.default_rng(seed)
    imageio.write_png(root / "vis" / f"{name}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    imageio.write_png(root / "ir" / f"{name}.png", rng.integers(0, 256, size, dtype=np.uint8))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three registered pairs a, b, c with a train.txt of a and b and YOLO boxes for a."""
    for i, name in enumerate("abc"):
        make_pair(tmp_path, name, i)
    (tmp_path / "train.txt").write_text("a\nb\n")
    boxes = tmp_path / "det" / "infrared"
    boxes.mkdir(parents=True)
    # person on the left half, car in the lower right quarter, an unknown class 7 on the top right.
    (boxes / "a.txt").write_text("0 0.25 0.5 0.5 1.0\n2 0.75 0.75 0.5 0.5\n7 0.75 0.25 0.5 0.5\n")
    (boxes / "b.txt").write_text("")
    return tmp_path


def test_paired_samples_have_the_documented_shapes_and_ranges(folder):
    data = PairedFolderDataset(folder, split="train", degradation="lowlight", augment=False)
    assert len(data) == 2 and data.names == ["a", "b"]
    sample = data[0]
    assert set(sample) == {"degraded", "clean", "ir", "mask"}
    for key in ("degraded", "clean", "ir"):
        assert sample[key].shape == (3, HEIGHT, WIDTH) and sample[key].dtype == torch.float32
        assert 0.0 <= float(sample[key].min()) and float(sample[key].max()) <= 1.0
    assert sample["mask"].shape == (HEIGHT, WIDTH) and sample["mask"].dtype == torch.int64
    clean = imageio.read_rgb(folder / "vis" / "a.png")
    np.testing.assert_allclose(sample["clean"].permute(1, 2, 0).numpy(), clean / 255.0, atol=1e-6)
    ir = imageio.read_gray(folder / "ir" / "a.png") / 255.0
    for channel in range(3):
        np.testing.assert_allclose(sample["ir"][channel].numpy(), ir, atol=1e-6)
    assert sample["degraded"].mean() < sample["clean"].mean()


def test_no_split_uses_every_visible_image(folder):
    assert PairedFolderDataset(folder, split=None).names == ["a", "b", "c"]


def test_boxes_become_mfnet_ids(folder):
    mask = PairedFolderDataset(folder, split="train", augment=False)[0]["mask"].numpy()
    assert (mask[:, : WIDTH // 2] == 2).all()                      # person -> 2
    assert (mask[HEIGHT // 2:, WIDTH // 2:] == 1).all()            # car -> 1
    assert (mask[: HEIGHT // 2, WIDTH // 2:] == 0).all()           # unknown class and background -> 0
    ignored = PairedFolderDataset(folder, split="train", augment=False, outside_box_label=IGNORE_INDEX)[0]["mask"]
    assert (ignored.numpy()[: HEIGHT // 2, WIDTH // 2:] == IGNORE_INDEX).all()


def test_yolo_classes_map_to_person_bike_car_and_small_boxes_win():
    boxes = [Box(2, 0.5, 0.5, 1.0, 1.0), Box(1, 0.5, 0.5, 0.5, 0.5), Box(0, 0.5, 0.5, 0.1, 0.1)]
    mask = boxes_to_mask(boxes, 20, 20)
    assert mask[0, 0] == 1 and mask[6, 6] == 3 and mask[10, 10] == 2
    tiny = boxes_to_mask([Box(0, 0.5, 0.5, 0.001, 0.001)], 20, 20)
    assert (tiny == 2).sum() == 1  # a box always covers at least one pixel


def test_silhouette_masks_keep_the_warm_body_and_ignore_the_cold_rest_of_the_box():
    ir = np.full((20, 20), 40, np.uint8)
    ir[4:16, 8:12] = 200                                   # a warm body in the middle of the person box
    ir[0:10, 16:20] = 250                                  # a hot object inside the car box
    boxes = [Box(0, 0.5, 0.5, 0.6, 0.8), Box(2, 0.9, 0.25, 0.2, 0.5)]
    mask = boxes_to_mask(boxes, 20, 20, ir=ir, silhouette_classes=(2,))
    assert (mask[4:16, 8:12] == 2).all()                                 # warm pixels of the person box: person
    assert (mask[2:18, 4:8] == IGNORE_INDEX).all() and (mask[2:18, 12:16] == IGNORE_INDEX).all()
    assert (mask[0:5, 18:20] == 1).all()                                 # cars stay whole boxes (not asked)
    assert (mask[19, :] == 0).all()                                      # outside every box: unchanged
    flat = boxes_to_mask([Box(0, 0.5, 0.5, 0.5, 0.5)], 20, 20, ir=np.full((20, 20), 90, np.uint8),
                         silhouette_classes=(2,))
    np.testing.assert_array_equal(flat, boxes_to_mask([Box(0, 0.5, 0.5, 0.5, 0.5)], 20, 20))  # no heat: whole box
    with pytest.raises(ValueError, match="IR frame"):
        boxes_to_mask(boxes, 20, 20, silhouette_classes=(2,))


def test_otsu_threshold_splits_two_levels_between_them():
    values = np.array([30] * 70 + [180] * 30, np.uint8)
    assert 30 <= otsu_threshold(values) < 180


def test_dataset_silhouettes_by_class_name(folder):
    ir = np.full((HEIGHT, WIDTH), 20, np.uint8)
    ir[10:30, 8:16] = 220
    imageio.write_png(folder / "ir" / "a.png", ir)
    mask = PairedFolderDataset(folder, split="train", augment=False, silhouette_classes=["person"])[0]["mask"].numpy()
    assert (mask[10:30, 8:16] == 2).all() and (mask[:, 20:WIDTH // 2] == IGNORE_INDEX).all()
    assert (mask[HEIGHT // 2:, WIDTH // 2:] == 1).all()
    with pytest.raises(ValueError, match="with_ir"):
        PairedFolderDataset(folder, split="train", with_ir=False, silhouette_classes=["person"])
    with pytest.raises(ValueError, match="unknown MFNet class"):
        PairedFolderDataset(folder, split="train", silhouette_classes=["persn"])


def test_labels_take_priority_over_boxes(folder):
    label = np.zeros((HEIGHT, WIDTH), np.uint8)
    label[:10] = 4
    label[-5:] = IGNORE_INDEX
    for name in "ab":
        imageio.write_png(folder / "label" / f"{name}.png", label)
    mask = PairedFolderDataset(folder, split="train", augment=False)[0]["mask"].numpy()
    np.testing.assert_array_equal(mask, label)


def test_bad_label_ids_are_rejected(folder):
    for name in "ab":
        imageio.write_png(folder / "label" / f"{name}.png", np.full((HEIGHT, WIDTH), 12, np.uint8))
    with pytest.raises(ValueError, match="outside 0..8"):
        PairedFolderDataset(folder, split="train")[0]


def test_without_labels_or_boxes_the_mask_is_ignored(tmp_path):
    make_pair(tmp_path, "a", 0)
    data = PairedFolderDataset(tmp_path, split=None)
    assert not data.has_mask
    assert (data[0]["mask"] == IGNORE_INDEX).all()


def test_unpaired_names_are_reported(folder):
    (folder / "ir" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"unpaired.*1 name.*ir.*: b"):
        PairedFolderDataset(folder, split="train")
    (folder / "train.txt").write_text("a\nzzz\n")
    with pytest.raises(FileNotFoundError, match=r"vis.*zzz"):
        PairedFolderDataset(folder, split="train")


def test_missing_names_list_and_box_folder_are_reported(folder):
    with pytest.raises(FileNotFoundError, match="val.txt"):
        PairedFolderDataset(folder, split="val")
    with pytest.raises(FileNotFoundError, match="det/fusion.*infrared"):
        PairedFolderDataset(folder, split="train", det_subdir="fusion")


def test_unreadable_image_is_reported_with_its_path(folder):
    (folder / "ir" / "a.png").write_bytes(b"not a png at all")
    data = PairedFolderDataset(folder, split="train")
    with pytest.raises(ValueError, match=r"cannot read image .*a\.png"):
        data[0]


def test_size_mismatch_between_vis_and_ir_is_reported(folder):
    imageio.write_png(folder / "ir" / "a.png", np.zeros((HEIGHT // 2, WIDTH), np.uint8))
    with pytest.raises(ValueError, match=r"size mismatch for 'a'.*64x48.*64x24"):
        PairedFolderDataset(folder, split="train")[0]


def test_crop_sizes_must_be_multiples_of_16(folder):
    with pytest.raises(ValueError, match="multiples of 16"):
        PairedFolderDataset(folder, crop_size=30)
    with pytest.raises(ValueError, match="larger than the image"):
        PairedFolderDataset(folder, crop_size=64)[0]


def test_frames_without_crop_are_trimmed_to_multiples_of_16(tmp_path):
    make_pair(tmp_path, "odd", 0, size=(50, 70))
    sample = PairedFolderDataset(tmp_path, split=None, augment=False)[0]
    assert sample["clean"].shape == (3, 48, 64)


def test_crops_and_flips_are_identical_for_vis_ir_and_mask(tmp_path):
    # Encode the source column in vis (red) and ir, the source row in vis (green)
    # and col % 9 in the label, so any misalignment between them shows.
    rows, cols = np.indices((HEIGHT, WIDTH))
    column_code = (cols * 4).astype(np.uint8)
    vis = np.stack([column_code, (rows * 5).astype(np.uint8), np.zeros_like(column_code)], axis=-1)
    imageio.write_png(tmp_path / "vis" / "p.png", vis)
    imageio.write_png(tmp_path / "ir" / "p.png", column_code)
    imageio.write_png(tmp_path / "label" / "p.png", (cols % 9).astype(np.uint8))
    data = PairedFolderDataset(tmp_path, split=None, crop_size=(32, 16), degradation="none", augment=True)
    flips, origins = set(), set()
    for epoch in range(8):
        data.set_epoch(epoch)
        sample = data[0]
        source_cols = np.round(sample["clean"][0].numpy() * 255).astype(int) // 4
        source_rows = np.round(sample["clean"][1].numpy() * 255).astype(int) // 5
        np.testing.assert_array_equal(np.round(sample["ir"][0].numpy() * 255).astype(int) // 4, source_cols)
        np.testing.assert_array_equal(sample["mask"].numpy(), source_cols % 9)
        np.testing.assert_array_equal(sample["degraded"].numpy(), sample["clean"].numpy())
        # A crop is a contiguous window: rows step by +1, columns by +1 or -1 (flipped).
        assert (np.diff(source_rows, axis=0) == 1).all()
        step = np.unique(np.diff(source_cols, axis=1))
        assert step.size == 1 and abs(int(step[0])) == 1
        flips.add(int(step[0]))
        origins.add((int(source_rows[0, 0]), int(source_cols[0].min())))
    assert flips == {1, -1}, "both flipped and unflipped crops should occur over 8 epochs"
    assert len(origins) > 1, "crop positions should vary between epochs"


def test_samples_are_reproducible_per_epoch_and_index(folder):
    first = PairedFolderDataset(folder, split="train", crop_size=32, seed=5)
    second = PairedFolderDataset(folder, split="train", crop_size=32, seed=5)
    for index in range(2):
        for key in ("degraded", "clean", "mask"):
            assert torch.equal(first[index][key], second[index][key])
    before = first[0]["degraded"]
    spec = first.degradation_of(0)
    assert spec.steps  # "random" always applies at least one step
    first.set_epoch(1)
    assert not torch.equal(first[0]["degraded"], before)


def test_logged_spec_replays_the_degraded_input(folder):
    data = PairedFolderDataset(folder, split="train", augment=False, seed=3)
    sample = data[1]
    clean = imageio.read_rgb(folder / "vis" / "b.png").astype(np.float32) / 255.0
    replay = degrade.apply(clean, data.degradation_of(1))
    np.testing.assert_array_equal(sample["degraded"].permute(1, 2, 0).numpy(), replay)


def test_visible_only_data_has_no_ir(tmp_path):
    imageio.write_png(tmp_path / "vis" / "a.png", np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    sample = PairedFolderDataset(tmp_path, split=None, with_ir=False)[0]
    assert set(sample) == {"degraded", "clean", "mask"}
    with pytest.raises(FileNotFoundError, match="ir"):
        PairedFolderDataset(tmp_path, split=None)


def test_read_names_skips_comments_and_extensions(tmp_path):
    (tmp_path / "list.txt").write_text("# split\na.png\n\nb  # note\n")
    assert read_names(tmp_path / "list.txt") == ["a", "b"]


def test_malformed_box_line_names_file_and_line(tmp_path):
    (tmp_path / "x.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.5 oops\n")
    with pytest.raises(ValueError, match=r"x\.txt:2"):
        read_yolo_boxes(tmp_path / "x.txt")


def test_imageio_round_trip_and_listing(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    imageio.write_png(tmp_path / "sub" / "b.png", rgb)
    imageio.write_png(tmp_path / "sub" / "a.png", rgb[:, :, 0])
    (tmp_path / "sub" / "notes.txt").write_text("x")
    np.testing.assert_array_equal(imageio.read_rgb(tmp_path / "sub" / "b.png"), rgb)
    assert imageio.read_rgb(tmp_path / "sub" / "a.png").shape == (5, 7, 3)
    np.testing.assert_array_equal(imageio.read_gray(tmp_path / "sub" / "a.png"), rgb[:, :, 0])
    listed = imageio.list_images([tmp_path / "sub", tmp_path / "sub" / "a.png"])
    assert [p.name for p in listed] == ["a.png", "b.png"]
    with pytest.raises(FileNotFoundError):
        imageio.list_images([tmp_path / "missing"])
    with pytest.raises(FileNotFoundError):
        imageio.read_rgb(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="uint8"):
        imageio.write_png(tmp_path / "f.png", rgb.astype(np.float32))


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "t.png")
    np.testing.assert_array_equal(imageio.read_gray(tmp_path / "t.png"), [[0, 128, 255]])


def test_two_real_msrs_frames():
    if not (MSRS / "train.txt").is_file():
        pytest.skip(f"MSRS data not found at {MSRS} (the shared data folder sits next to the repository)")
    names = read_names(MSRS / "train.txt")[:2]
    data = PairedFolderDataset(MSRS, names=names, crop_size=(256, 320), seed=1)
    for index in range(2):
        sample = data[index]
        assert sample["degraded"].shape == sample["clean"].shape == sample["ir"].shape == (3, 256, 320)
        assert sample["mask"].shape == (256, 320)
    full = PairedFolderDataset(MSRS, names=names, augment=False)
    masks = [full[i]["mask"].numpy() for i in range(2)]
    assert masks[0].shape == (480, 640)
    boxes = [read_yolo_boxes(MSRS / "det" / "infrared" / f"{n}.txt") for n in names]
    for mask, frame_boxes in zip(masks, boxes):
        assert set(np.unique(mask)) <= {0, 1, 2, 3}
        if any(b.cls == 0 for b in frame_boxes):
            assert (mask == 2).any()


def test_holdout_frames_hold_out_frames_from_every_part_of_the_training_list():
    # MSRS lists its night and day sequences in blocks: a spread holdout samples each block
    spread = holdout_frames(300, 30)
    assert len(set(spread)) == 30 and spread == sorted(spread) and 0 <= spread[0] and spread[-1] < 300
    assert max(b - a for a, b in zip(spread, spread[1:])) == 10
    assert sum(i < 150 for i in spread) == 15  # half of the held-out frames from each half of the list
    assert holdout_frames(300, 30, "last") == list(range(270, 300))
    assert holdout_frames(2, 1) == [1] and holdout_frames(3, 2) == [0, 2]
    with pytest.raises(ValueError, match="holdout_spacing"):
        holdout_frames(300, 30, "random")
    with pytest.raises(ValueError, match="between 1 and 299"):
        holdout_frames(300, 300)
