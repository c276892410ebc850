"""Paired visible/infrared training data from a folder.

Folder layout (NAME is a file stem; any extension of `IMAGE_EXTENSIONS`):

    root/
      vis/NAME.png        RGB visible frame (clean)
      ir/NAME.png         registered thermal frame (8-bit grey; colour is converted to grey)
      label/NAME.png      optional: MFNet 9-class ids (0..8, 255 = ignore)
      det/<sub>/NAME.txt  optional: YOLO boxes "class cx cy w h" (normalised), used when label/ is absent
      train.txt, val.txt  optional: one NAME per line (the split)

MSRS (../shared/data/msrs) has det/{visible,infrared,fusion}; the infrared boxes
list the most people, so `det_subdir` defaults to "infrared".

Segmentation targets: `label/` when present. Otherwise a WEAK mask is made by
filling the boxes (person -> 2, bicycle -> bike 3, car -> 1, see `YOLO_TO_MFNET`):
every pixel in a box gets its class, even background inside the box, and
classes that boxes never cover (curve, guardrail, ...) are absent. Pixels
outside every box get `outside_box_label` (0 unlabelled by default, or 255
to ignore them in the loss). Without labels or boxes the mask is all 255.
With `silhouette_classes` (e.g. person), the boxes of those classes keep their
label only on the pixels the registered IR frame shows warmer than the box's
Otsu threshold, and the colder rest of the box is ignored: a box is half
background, and the warm body is the thermal target the radiation mask needs.

Each sample is a dict of tensors:
    degraded (3, H, W) float32 in [0, 1]: the clean frame after a seeded random degradation,
    clean    (3, H, W) float32 in [0, 1],
    ir       (3, H, W) float32 in [0, 1]: grey IR replicated to 3 channels (the autoencoder is RGB),
    mask     (H, W) int64 class ids (0..8, or 255 = ignore).
H and W are multiples of 16 (what the networks need).

Reproducibility: the crop, the flip and the degradation of sample `index` are
drawn from `numpy.random.default_rng([seed, epoch, index])`; call `set_epoch`
at the start of every epoch (like DistributedSampler.set_epoch). DataLoader
workers hold copies of the dataset, so use `persistent_workers=False` or the
new epoch will not reach them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import degrade
from .imageio import IMAGE_EXTENSIONS, read_gray, read_label, read_rgb
from .palette import IGNORE_INDEX, MFNET_CLASSES, NUM_CLASSES, class_ids
# YOLO classes of MSRS det/classes.txt (0 person, 1 bicycle, 2 car) -> MFNet ids.
YOLO_TO_MFNET: dict[int, int] = {
    0: MFNET_CLASSES.index("person"),
    1: MFNET_CLASSES.index("bike"),
    2: MFNET_CLASSES.index("car"),
}
# The networks down-sample by 4 (autoencoder) and then by 4 more (UNet levels).
SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class Box:
    """A YOLO box: class id and normalised centre/size, all in [0, 1]."""

    cls: int
    cx: float
    cy: float
    w: float
    h: float


def read_yolo_boxes(path: str | Path) -> list[Box]:
    """Parse a YOLO txt file ("class cx cy w h" per line). A missing file means no boxes."""
    path = Path(path)
    if not path.is_file():
        return []
    boxes = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) < 5:
                raise ValueError("expected 5 fields")
            boxes.append(Box(int(fields[0]), *(float(v) for v in fields[1:5])))
        except ValueError as exc:
            raise ValueError(f"bad YOLO box at {path}:{number}: {line.strip()!r} ({exc})") from exc
    return boxes


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values: the level that best splits them into two classes
    (maximum between-class variance); values above it form the brighter class."""
    hist = np.bincount(np.asarray(values, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    p = hist / max(hist.sum(), 1.0)
    omega, mu = np.cumsum(p), np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1.0 - omega))
    return float(np.argmax(np.nan_to_num(between, nan=-1.0)))


def boxes_to_mask(boxes: list[Box], height: int, width: int, outside_box_label: int = 0,
                  class_map: dict[int, int] = YOLO_TO_MFNET, ir: np.ndarray | None = None,
                  silhouette_classes: tuple[int, ...] = ()) -> np.ndarray:
    """Weak segmentation mask (H, W) uint8 by filling boxes with their MFNet id.

    Larger boxes are painted first so that a smaller box inside a larger one (a
    rider on a bicycle, a person in front of a car) stays visible. Boxes whose
    class is not in `class_map` are skipped. Every box covers at least one pixel.
    ir (H, W) uint8 with silhouette_classes (MFNet ids): a box of those classes is
    labelled only where the IR is warmer than its Otsu threshold, the rest is ignored.
    """
    if silhouette_classes and ir is None:
        raise ValueError("silhouette masks need the registered IR frame")
    mask = np.full((height, width), outside_box_label, dtype=np.uint8)
    known = [b for b in boxes if b.cls in class_map]
    for box in sorted(known, key=lambda b: b.w * b.h, reverse=True):
        x0 = int(round((box.cx - box.w / 2) * width))
        x1 = int(round((box.cx + box.w / 2) * width))
        y0 = int(round((box.cy - box.h / 2) * height))
        y1 = int(round((box.cy + box.h / 2) * height))
        x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
        x1, y1 = min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)
        label = class_map[box.cls]
        if label in silhouette_classes:
            heat = ir[y0:y1, x0:x1]
            # A flat box (nothing warmer than the rest) keeps the whole box: no evidence to cut it.
            warm = heat > otsu_threshold(heat) if heat.max() > heat.min() else np.ones_like(heat, bool)
            mask[y0:y1, x0:x1] = np.where(warm, label, IGNORE_INDEX)
        else:
            mask[y0:y1, x0:x1] = label
    return mask


def read_names(path: str | Path) -> list[str]:
    """Names list: one stem per line; blank lines and '#' comments skipped; extensions stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"names list not found: {path}")
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(Path(line).stem if Path(line).suffix.lower() in IMAGE_EXTENSIONS else line)
    return names


def index_images(folder: Path) -> dict[str, Path]:
    """stem -> image path for the image files of `folder` (empty when it does not exist)."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            if path.stem in found:
                raise ValueError(f"two images named {path.stem!r} in {folder}: {found[path.stem].name}, {path.name}")
            found[path.stem] = path
    return found


def check_crop_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """crop size -> (height, width), checking multiples of 16; None stays None."""
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height <= 0 or width <= 0 or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ValueError(f"crop size must be positive multiples of {SIZE_MULTIPLE}, got {height}x{width}")
    return height, width


def crop_window(height: int, width: int, crop: tuple[int, int] | None,
                rng: np.random.Generator | None) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w): random when `rng` is given, centred otherwise.

    Without a crop size the frame is trimmed (centred) to the largest multiple of 16.
    """
    if crop is None:
        crop_h, crop_w = height - height % SIZE_MULTIPLE, width - width % SIZE_MULTIPLE
        if crop_h == 0 or crop_w == 0:
            raise ValueError(f"image {width}x{height} is smaller than {SIZE_MULTIPLE} pixels")
    else:
        crop_h, crop_w = crop
        if crop_h > height or crop_w > width:
            raise ValueError(f"crop {crop_w}x{crop_h} is larger than the image {width}x{height}")
    if rng is None:
        return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w
    return int(rng.integers(height - crop_h + 1)), int(rng.integers(width - crop_w + 1)), crop_h, crop_w


class PairedFolderDataset(Dataset):
    """Visible/infrared pairs with degraded visible inputs and (weak) masks. See the module docstring.

    Args:
        root: the dataset folder.
        split: "train" / "val" reads root/<split>.txt; None uses every image in vis/.
        names: explicit list of stems (overrides `split`).
        crop_size: int or (h, w), multiples of 16; None keeps the whole frame (trimmed to multiples of 16).
        augment: random crop and horizontal flip; otherwise centred crop, no flip.
            Only horizontal flips: a vertically flipped road scene (sky below) is not a scene.
        degradation: "random" (`degrade.random_degradation`), "none", or one kind of `degrade.KINDS`.
        seed: base seed of the per-(epoch, index) random streams.
        det_subdir: subfolder of det/ with the boxes (MSRS: visible, infrared or fusion); "" for det/ itself.
        outside_box_label: label of pixels outside all boxes in weak masks: 0 or 255 (ignore).
        with_ir: False for visible-only data (Ψ training); the sample then has no "ir".
        silhouette_classes: MFNet ids (or names) whose weak box masks keep only the IR-warm pixels.
    """

    def __init__(self, root: str | Path, split: str | None = "train", names: list[str] | None = None,
                 crop_size: int | tuple[int, int] | None = None, augment: bool = True,
                 degradation: str = "random", seed: int = 0, det_subdir: str | None = "infrared",
                 outside_box_label: int = 0, with_ir: bool = True, silhouette_classes=()):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        if degradation not in ("random", "none", *degrade.KINDS):
            raise ValueError(f"unknown degradation {degradation!r}; use random, none or one of {', '.join(degrade.KINDS)}")
        if outside_box_label not in (0, IGNORE_INDEX):
            raise ValueError(f"outside_box_label must be 0 (unlabelled) or {IGNORE_INDEX} (ignore), got {outside_box_label}")
        self.crop = check_crop_size(crop_size)
        self.augment = augment
        self.degradation = degradation
        self.seed = seed
        self.epoch = 0
        self.outside_box_label = outside_box_label
        self.with_ir = with_ir
        self.silhouette_classes = class_ids(silhouette_classes)
        if self.silhouette_classes and not with_ir:
            raise ValueError("silhouette_classes cut weak masks with the IR frame: they need with_ir=True")

        self.vis_paths = index_images(self.root / "vis")
        self.ir_paths = index_images(self.root / "ir") if with_ir else {}
        self.label_dir = self.root / "label"
        self.det_dir = self.root / "det" / (det_subdir or "")
        self.has_labels = self.label_dir.is_dir()
        self.has_boxes = not self.has_labels and self.det_dir.is_dir()
        if not self.has_labels and (self.root / "det").is_dir() and not self.has_boxes:
            subdirs = sorted(p.name for p in (self.root / "det").iterdir() if p.is_dir())
            raise FileNotFoundError(
                f"box folder not found: {self.det_dir} (det/ has: {', '.join(subdirs) or 'no subfolders'})")
        self.label_paths = index_images(self.label_dir)

        if names is not None:
            self.names, source = list(names), "the given names"
        elif split is not None:
            self.names, source = read_names(self.root / f"{split}.txt"), f"{split}.txt"
        else:
            self.names, source = sorted(self.vis_paths), f"{self.root / 'vis'}"
        if not self.names:
            raise ValueError(f"no samples found ({source})")
        self._check_pairs(source)

    @property
    def has_mask(self) -> bool:
        """True when samples carry real or weak (box) segmentation targets."""
        return self.has_labels or self.has_boxes

    def _check_pairs(self, source: str) -> None:
        """Raise one FileNotFoundError naming the unpaired samples (up to 10 of them)."""
        folders = [("vis", self.vis_paths)]
        if self.with_ir:
            folders.append(("ir", self.ir_paths))
        if self.has_labels:
            folders.append(("label", self.label_paths))
        problems = []
        for folder, paths in folders:
            missing = [name for name in self.names if name not in paths]
            if missing:
                shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
                problems.append(f"{len(missing)} name(s) from {source} have no image in {self.root / folder}: {shown}")
        if problems:
            raise FileNotFoundError("unpaired samples: " + "; ".join(problems))

    def set_epoch(self, epoch: int) -> None:
        """Select the random streams of `epoch` (crops, flips, degradations)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def rng(self, index: int) -> np.random.Generator:
        """The random stream of sample `index` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def degradation_of(self, index: int) -> degrade.Degradation:
        """The degradation spec sample `index` gets in the current epoch (for logging: `spec.describe()`)."""
        return self._draw_spec(self.rng(index))

    def _draw_spec(self, rng: np.random.Generator) -> degrade.Degradation:
        # Drawn first from the sample's stream, so `degradation_of` can replay it.
        if self.degradation == "random":
            return degrade.random_degradation(rng)
        if self.degradation == "none":
            return degrade.Degradation()
        return degrade.single_degradation(self.degradation, rng)

    def load(self, index: int) -> dict[str, np.ndarray]:
        """Full-size arrays of sample `index`: vis (H, W, 3) uint8, ir (H, W) uint8, mask (H, W) uint8."""
        name = self.names[index]
        vis = read_rgb(self.vis_paths[name])
        height, width = vis.shape[:2]
        arrays = {"vis": vis}
        if self.with_ir:
            arrays["ir"] = read_gray(self.ir_paths[name])
            self._check_size(name, "ir", arrays["ir"], height, width)
        if self.has_labels:
            arrays["mask"] = read_label(self.label_paths[name])
            self._check_size(name, "label", arrays["mask"], height, width)
            self._check_label_ids(name, arrays["mask"])
        elif self.has_boxes:
            boxes = read_yolo_boxes(self.det_dir / f"{name}.txt")
            arrays["mask"] = boxes_to_mask(boxes, height, width, self.outside_box_label, ir=arrays.get("ir"),
                                           silhouette_classes=self.silhouette_classes)
        else:
            arrays["mask"] = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
        return arrays

    def _check_size(self, name: str, what: str, array: np.ndarray, height: int, width: int) -> None:
        if array.shape[:2] != (height, width):
            raise ValueError(f"size mismatch for {name!r}: vis is {width}x{height} but {what} is "
                             f"{array.shape[1]}x{array.shape[0]} (pairs must be registered at the same size)")

    def _check_label_ids(self, name: str, label: np.ndarray) -> None:
        bad = np.unique(label[(label >= NUM_CLASSES) & (label != IGNORE_INDEX)])
        if bad.size:
            raise ValueError(
                f"label of {name!r} has ids {bad.tolist()[:10]} outside 0..{NUM_CLASSES - 1} and {IGNORE_INDEX}")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        arrays = self.load(index)
        rng = self.rng(index)
        # Degrade the full frame before cropping: the haze depth map follows the
        # real horizon, and a validation crop equals the crop of a degraded frame.
        spec = self._draw_spec(rng)
        clean = arrays["vis"].astype(np.float32) / 255.0
        degraded = degrade.apply(clean, spec)
        height, width = clean.shape[:2]
        top, left, crop_h, crop_w = crop_window(height, width, self.crop, rng if self.augment else None)
        flip = self.augment and rng.random() < 0.5

        def prepare(array: np.ndarray) -> np.ndarray:
            array = array[top:top + crop_h, left:left + crop_w]
            return array[:, ::-1] if flip else array

        sample = {
            "degraded": _chw(prepare(degraded)),
            "clean": _chw(prepare(clean)),
            "mask": torch.from_numpy(np.ascontiguousarray(prepare(arrays["mask"]))).long(),
        }
        if self.with_ir:
            ir = prepare(arrays["ir"]).astype(np.float32) / 255.0
            sample["ir"] = torch.from_numpy(np.ascontiguousarray(ir)).unsqueeze(0).repeat(3, 1, 1)
        return sample


def _chw(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float [0, 1] -> (3, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


HOLDOUT_SPACINGS = ("spread", "last")


def holdout_frames(n_frames: int, holdout: int, spacing: str = "spread") -> list[int]:
    """Indices into a training list of the frames held out from training (training.seg_head scores and
    calibrates S on them; tools/evaluate_demo_model.py --seg-holdout scores them again).

    "spread": one frame from the middle of each of `holdout` equal stretches of the list. MSRS lists
    its day and night sequences in blocks, so its last frames alone are all daylight.
    "last": the last `holdout` frames."""
    if not 0 < holdout < n_frames:
        raise ValueError(f"holdout must be between 1 and {n_frames - 1} frames, got {holdout}")
    if spacing == "last":
        return list(range(n_frames - holdout, n_frames))
    if spacing != "spread":
        raise ValueError(f"holdout_spacing must be one of {HOLDOUT_SPACINGS}, got {spacing!r}")
    return [(2 * i + 1) * n_frames // (2 * holdout) for i in range(holdout)]
