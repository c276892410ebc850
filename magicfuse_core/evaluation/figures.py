"""Pictures of an evaluation: bar charts, thumbnails, segmentation overlays, box outlines and image grids.

Used by the `magicfuse eval` HTML report (`bar_chart_png`, `grid_rows`) and by the
model card (`draw_boxes`, `image_grid`). Images are uint8, (H, W) grey or (H, W, 3) RGB.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from ..data import Box, boxes_to_mask
from ..palette import IGNORE_INDEX, NUM_CLASSES, colorize
from .baselines import BASELINES, make_baselines
from .config import EvalConfig
from .frames import FrameTask, load_frame
from .scoring import best_methods
from .targets import person_box_mask

THUMB_WIDTH = 200  # px, width of the sample-grid thumbnails in the HTML report
BOX_COLOUR = (255, 255, 0)  # box outlines on the model card's grid: yellow reads on grey and colour alike
GRID_GAP = 4  # px of white between grid tiles


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def bar_chart_png(table: dict[str, dict[str, float]], keys: tuple[str, ...], title: str,
                  lower_better=frozenset(), baselines=(), dpi: int = 80) -> bytes:
    """Small-multiples bar chart: one panel per key, one bar per method. Returns PNG bytes.

    table: {method: {key: mean}}. Baselines are hatched; the best bar of each panel has a thick outline.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    methods = list(table)
    cols = min(len(keys), 5)
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows + 0.6), squeeze=False)
    colours = plt.get_cmap("tab10")(np.arange(len(methods)) % 10)
    best = best_methods(table, keys, lower_better)
    for ax, key in zip(axes.flat, keys):
        values = [table[m][key] for m in methods]
        heights = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(range(len(methods)), heights, color=colours)
        for i, (bar, method) in enumerate(zip(bars, methods)):
            if method in baselines:
                bar.set_hatch("//")
            if method in best.get(key, ()):
                bar.set_edgecolor("black")
                bar.set_linewidth(2.0)
            if not math.isfinite(values[i]):
                # x in data units, y in axes units: stays inside the panel whatever the y range.
                ax.text(i, 0.03, "NaN" if math.isnan(values[i]) else "inf", ha="center", va="bottom", fontsize=8,
                        transform=ax.get_xaxis_transform())
        ax.set_title(f"{key} {'(lower better)' if key in lower_better else '(higher better)'}", fontsize=9)
        ax.set_xticks([])
        ax.tick_params(labelsize=7)
        finite = [h for h, v in zip(heights, values) if math.isfinite(v)]
        if finite and min(finite) > 0:
            lo, hi = min(finite), max(finite)
            # Zoom on the spread when values sit far from 0 (PSNR ~60 dB), else start at 0.
            ax.set_ylim(max(0.0, lo - (hi - lo) * 0.6 - 1e-9) if lo > 0.5 * hi else 0.0, hi + (hi - lo) * 0.15 + 1e-9)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i], hatch="//" if m in baselines else None) for i, m in enumerate(methods)]
    fig.legend(handles, methods, loc="lower center", ncol=min(len(methods), 6), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()




def thumbnail(image: np.ndarray, width: int = THUMB_WIDTH) -> bytes:
    """Resize (H, W[, 3]) uint8 to `width` px wide (aspect kept) and return PNG bytes."""
    pil = Image.fromarray(image)
    height = max(1, round(pil.height * width / pil.width))
    return png_bytes(np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR)))


def seg_overlay(vis_rgb: np.ndarray, seg: np.ndarray, in_box: np.ndarray | None = None) -> np.ndarray:
    """Palette colours of `seg` blended 50 % over the visible frame (class 0 left as is); person boxes outlined in white."""
    colour = colorize(seg).astype(np.float64)
    out = vis_rgb.astype(np.float64)
    labelled = (seg > 0) & (seg < NUM_CLASSES)
    out[labelled] = 0.5 * out[labelled] + 0.5 * colour[labelled]
    out = out.astype(np.uint8)
    if in_box is not None and in_box.any():
        # Outline = box pixels with a 4-neighbour outside the box union.
        pad = np.pad(in_box, 1)
        inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
        out[in_box & ~inner] = 255
    return out


def grid_rows(config: EvalConfig, tasks: list[FrameTask], names: list[str]) -> tuple[list[str], list[tuple[str, list[bytes]]]]:
    """Sample grid: column titles and, per frame, thumbnails (PNG bytes) in column order.

    Columns: input visible, clean visible (if any), real IR, generated IR results,
    fused results (or the baselines when there are none), segmentation overlays, label overlay.
    """
    by_name = {t.name: t for t in tasks}
    fusion_names = config.fusion_result_names()
    # Without results, show the two fusion baselines ("visible" is already the first column).
    show_fused = fusion_names if fusion_names else tuple(b for b in BASELINES if b != "visible")
    columns = ["input visible"] + (["clean visible"] if config.clean_vis else []) + ["real IR"]
    columns += [f"{n} (generated IR)" for n in config.generated_ir_names()]
    columns += [f"{n}" + (" (baseline)" if n in BASELINES else "") for n in show_fused]
    columns += [f"{n} segmentation" for n in config.seg] + (["label"] if config.labels else [])
    rows = []
    for name in names:
        frame = load_frame(by_name[name])
        vis = frame["vis"]
        in_box = None if frame["boxes"] is None else person_box_mask(frame["boxes"], *vis.shape[:2])
        images = [vis] + ([frame["clean"]] if config.clean_vis else []) + [frame["ir"]]
        images += [frame["results"][n] for n in config.generated_ir_names()]
        baselines = make_baselines(vis, frame["ir"]) if not fusion_names else {}
        images += [frame["results"][n] if n in frame["results"] else baselines[n] for n in show_fused]
        images += [seg_overlay(vis, frame["seg"][n], in_box) for n in config.seg]
        if config.labels:
            images.append(seg_overlay(vis, np.where(frame["label"] == IGNORE_INDEX, 0, frame["label"]), in_box))
        rows.append((name, [thumbnail(im) for im in images]))
    return columns, rows




def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) grey or (H, W, 3) uint8 -> a new (H, W, 3) uint8 array."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected an (H, W) or (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image.copy()


def draw_boxes(image: np.ndarray, boxes: list[Box], colour: tuple[int, int, int] = BOX_COLOUR,
               thickness: int = 1) -> np.ndarray:
    """Outline every box on a copy of `image`; (H, W[, 3]) uint8 in, (H, W, 3) uint8 out.

    A box covers the pixels `data.boxes_to_mask` gives it; its outline is the
    `thickness` outermost rows and columns of those pixels (nothing outside the
    box and nothing deeper inside is changed). Boxes are normalised, so the same
    list draws on a frame at any size.
    """
    out = _as_rgb(image)
    height, width = out.shape[:2]
    for box in boxes:
        rows, cols = np.nonzero(boxes_to_mask([box], height, width, class_map={box.cls: 1}))
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        t = max(1, int(thickness))
        for ys, xs in ((slice(y0, min(y0 + t, y1)), slice(x0, x1)), (slice(max(y1 - t, y0), y1), slice(x0, x1)),
                       (slice(y0, y1), slice(x0, min(x0 + t, x1))), (slice(y0, y1), slice(max(x1 - t, x0), x1))):
            out[ys, xs] = colour
    return out


def resize_tile(image: np.ndarray, tile: tuple[int, int]) -> np.ndarray:
    """(H, W[, 3]) uint8 -> (h, w, 3) uint8 with tile = (h, w); bilinear (antialiased when shrinking)."""
    height, width = tile
    return np.asarray(Image.fromarray(_as_rgb(image)).resize((width, height), Image.Resampling.BILINEAR))


def image_grid(rows: list[list[np.ndarray]], tile: tuple[int, int] = (192, 256),
               boxes: list[list[Box]] | None = None, gap: int = GRID_GAP) -> np.ndarray:
    """Tile rows of images into one (H, W, 3) uint8 picture, white between tiles.

    rows: equal-length lists of (H, W[, 3]) uint8 images; tile: (h, w) of every tile;
    boxes: per row, boxes outlined (`draw_boxes`) on every tile of that row,
    drawn after resizing so that outlines stay one pixel wide and sharp.
    """
    if not rows or any(len(r) != len(rows[0]) for r in rows) or not rows[0]:
        raise ValueError("image_grid needs at least one row, all rows with the same number of images")
    if boxes is not None and len(boxes) != len(rows):
        raise ValueError(f"{len(boxes)} box lists for {len(rows)} rows")
    h, w = tile
    canvas = np.full((len(rows) * (h + gap) - gap, len(rows[0]) * (w + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            panel = resize_tile(image, tile)
            if boxes is not None:
                panel = draw_boxes(panel, boxes[r])
            canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = panel
    return canvas
