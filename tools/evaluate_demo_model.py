"""Evaluate a trained model folder on MSRS val and write its model card (docs/MODEL_CARD.md).

    PYTHONPATH=. .venv/bin/python tools/evaluate_demo_model.py --model models/demo
    PYTHONPATH=. .venv/bin/python tools/evaluate_demo_model.py --frames 2 --steps 10 \
        --card /tmp/card.md --grid /tmp/grid.png --results /tmp/eval.json     # a quick try

Protocol (all of it is in the card; the measures are `magicfuse_core.evaluation.card`):
- frames: the 61 names of ../shared/data/msrs/val.txt (never used for training), or the first --frames N;
- input: `degrade_seeded(clean_visible, seed=i, kind="random")` for the i-th name;
- the pipeline runs at the model's `info.inference_size` with `seed=i`, outputs
  resized back to 640x480;
- candidates: the degraded input, CLAHE of it, IKR only, the image-level fusion
  of IKR and CKG (luma max, IKR chroma) and MagImg (and the clean visible frame
  as a reference that no method sees), scored with the fusion metrics against
  (clean visible, real IR) at full resolution and at the inference resolution;
- CKG against the real IR (`metrics.ir_similarity`) next to grey visible as IR;
- thermal-target contrasts of every image kind: person boxes vs a ring around
  them, and the hottest tenth of the real IR vs the rest of the frame;
- the segmentation head's labels against the weak masks (IR-silhouette people,
  car and bike boxes).
This file only runs the model and writes the card: the scores come from the package.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from magicfuse_core.data import holdout_frames, read_names, read_yolo_boxes
from magicfuse_core.degrade import degrade_seeded
from magicfuse_core.evaluation import card, metrics
from magicfuse_core.evaluation.baselines import luma_u8
from magicfuse_core.evaluation.figures import image_grid, seg_overlay
from magicfuse_core.evaluation.scoring import mean_table
from magicfuse_core.evaluation.targets import SEG_TARGET_METRICS, YOLO_PERSON
from magicfuse_core.imageio import read_gray, read_rgb, write_png
from magicfuse_core.palette import DEFAULT_TAU
from magicfuse_core.pipeline import MagicFusePipeline, load_pipeline

REPO = Path(__file__).resolve().parent.parent
LOWER_BETTER = metrics.LOWER_IS_BETTER
SUMMARY_KEYS = ("MI", "Qabf", "VIF", "SSIM")
CONTRAST_NAMES = {"person": "person contrast", "hottest": "hottest-tenth contrast"}
GRID_COLUMNS = ("degraded input", "IKR", "CKG", "MagImg", "real IR", "segmentation")
GRID_ROWS = 4  # half night, half day val frames with people


def resize_u8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of a uint8 (H, W[, 3]) image to (h, w), as the pipeline does."""
    t = torch.from_numpy(image.astype(np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    t = t[0, 0] if image.ndim == 2 else t[0].permute(1, 2, 0)
    return t.round().clamp(0, 255).to(torch.uint8).numpy()


def grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint8 BT.601 luma: a visible frame used as if it were infrared."""
    return np.round(luma_u8(rgb)).clip(0, 255).astype(np.uint8)


def wants_grid_row(name: str, rows: int, has_people: bool) -> bool:
    """Night frames (names ending in N) fill the first half of the grid, day frames the second."""
    return has_people and rows < GRID_ROWS and (rows < GRID_ROWS // 2) == name.endswith("N")


# MSRS names end in D (day) or N (night); the card splits its main figures by lighting, because a visible
# camera at night is where thermal knowledge matters most and where the model finds it hardest.
LIGHTINGS = (("day", "D"), ("night", "N"))
LIGHTING_CONTRASTS = (card.IKR, card.CKG, card.MAGIMG, card.REAL_IR)


def by_lighting(names: list[str], frames: list[dict]) -> dict[str, dict]:
    """The card's headline figures for the day and the night frames separately (absent: no such frame)."""
    out = {}
    for lighting, suffix in LIGHTINGS:
        subset = [f for name, f in zip(names, frames) if name.endswith(suffix)]
        if not subset:
            continue
        s = card.summarise(subset)
        out[lighting] = {"frames": len(subset), "person_frames": s["person_frames"], "ratios": s["ratios"],
                         "person_contrast": {k: s["contrast"]["person"][k] for k in LIGHTING_CONTRASTS},
                         "segmentation": {k: s["segmentation"][k] for k in SEG_TARGET_METRICS}}
    return out


def evaluate(pipe: MagicFusePipeline, data: Path, names: list[str], size: tuple[int, int] | None) -> tuple[dict, list]:
    """Run the pipeline on every val frame and score it. Returns (results dict, grid rows)."""
    frames, small, ir_sim, t_infer, grid = [], [], [], [], {"rows": [], "boxes": [], "names": []}
    start = time.time()
    for i, name in enumerate(names):
        clean = read_rgb(data / "vis" / f"{name}.png")
        ir = read_gray(data / "ir" / f"{name}.png")
        boxes = read_yolo_boxes(data / "det" / "infrared" / f"{name}.txt")
        degraded = degrade_seeded(clean, seed=i, kind="random")
        t0 = time.perf_counter()
        out = pipe(degraded[None], seed=i, return_weights=True)
        t_infer.append(time.perf_counter() - t0)
        magimg, ikr, ckg, gen_ir, labels = out.magimg[0], out.ikr[0], out.ckg[0], out.ir[0], out.seg_labels[0]
        frames.append(card.score_frame(degraded, ikr, ckg, magimg, gen_ir, clean, ir, boxes, labels,
                                       None if out.fusion_weight is None else out.fusion_weight[0]))
        if size is not None:
            images = card.candidate_images(degraded, ikr, ckg, magimg)
            small.append(card.fusion_scores({k: resize_u8(v, size) for k, v in images.items()},
                                            resize_u8(clean, size), resize_u8(ir, size)))
        ir_sim.append({"CKG (generated IR)": metrics.ir_similarity(gen_ir, ir),
                       "grey degraded VIS as IR": metrics.ir_similarity(grey(degraded), ir),
                       "grey clean VIS as IR": metrics.ir_similarity(grey(clean), ir)})
        people = [b for b in boxes if b.cls == YOLO_PERSON]
        if wants_grid_row(name, len(grid["rows"]), bool(people)):
            grid["rows"].append([degraded, ikr, ckg, magimg, ir, seg_overlay(degraded, labels)])
            grid["boxes"].append(people)
            grid["names"].append(name)
        print(f"{i + 1}/{len(names)} {name}: {t_infer[-1]:.2f} s", flush=True)

    summary = card.summarise(frames)
    results = {
        "frames": len(names), "inference_size": list(size) if size else list(clean.shape[:2]),
        "steps": pipe.steps, "timesteps": list(pipe.model.schedule.with_steps(pipe.steps).timesteps),
        "tau": pipe.model.tau, "radiation_shift": pipe.model.radiation_shift, "radiation_map": pipe.model.radiation_map,
        "magimg_tone": pipe.model.magimg_tone, "ckg_tone": pipe.model.ckg_tone,
        "ckg_tone_frame": (pipe.model.info.get("ckg_tone") or {}).get("frame"),
        "seconds_per_frame": float(np.mean(t_infer)),
        "eval_wall_s": time.time() - start,
        "fusion_full_res": summary["fusion"],
        "fusion_inference_res": mean_table(small, metrics.METRIC_NAMES)["mean"] if size else None,
        "ir_similarity": mean_table(ir_sim, ("PSNR", "SSIM", "CC"))["mean"],
        "contrast": summary["contrast"], "person_frames": summary["person_frames"],
        "segmentation": summary["segmentation"], "radiation_mask": summary["radiation"],
        "ratios": summary["ratios"], "grid_frames": grid["names"],
        "by_lighting": by_lighting(names, frames),
    }
    return results, grid


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/demo")
    parser.add_argument("--data", default="../shared/data/msrs")
    parser.add_argument("--frames", "--limit", dest="frames", type=int, default=None, metavar="N",
                        help="first N val frames only (quick checks; the card is for all 61)")
    parser.add_argument("--offset", type=int, default=0, metavar="K",
                        help="skip the first K frames of the split (--split train --offset 270: the frames "
                             "training.seg_head holds out)")
    parser.add_argument("--seg-holdout", type=int, default=None, metavar="N",
                        help="score the N training frames that training.seg_head holds out with holdout_spacing: "
                             "spread (implies --split train; for the last ones: --split train --offset K)")
    parser.add_argument("--split", default="val", choices=("val", "train"),
                        help="frames to score: val (the card) or train (to choose a setting without looking at val)")
    parser.add_argument("--card", default="docs/MODEL_CARD.md")
    parser.add_argument("--grid", default="docs/img/model_card_grid.png")
    parser.add_argument("--results", default=None, help="JSON of the results (default MODEL/eval_msrs_val.json)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's, 25)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--backend", default="auto", help="pipeline backend (default auto: ONNX Runtime on CPU)")
    parser.add_argument("--radiation-shift", type=float, default=None, metavar="S",
                        help="try another radiation_shift than the model's (pick it on --seg-holdout frames)")
    args = parser.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    if args.offset < 0:
        parser.error(f"--offset must be >= 0, got {args.offset}")
    if args.seg_holdout is not None and args.seg_holdout < 1:
        parser.error(f"--seg-holdout must be >= 1, got {args.seg_holdout}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.radiation_shift is not None and not math.isfinite(args.radiation_shift):
        parser.error(f"--radiation-shift must be a finite number, got {args.radiation_shift}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir, data = REPO / args.model, (REPO / args.data).resolve()

    if args.seg_holdout is not None:
        args.split = "train"
        listed = read_names(data / "train.txt")
        try:
            names = [listed[i] for i in holdout_frames(len(listed), args.seg_holdout, "spread")]
        except ValueError as err:
            parser.error(f"--seg-holdout: {err}")
    else:
        names = read_names(data / f"{args.split}.txt")
    names = names[args.offset:][: args.frames]

    pipe = load_pipeline(model_dir, backend=args.backend, steps=args.steps, size="auto")  # the defaults users get
    if args.radiation_shift is not None:
        pipe.model.radiation_shift = args.radiation_shift
    info = pipe.model.info
    size = pipe.inference_size  # None: native 640x480

    results, grid = evaluate(pipe, data, names, size)
    results = {"model": str(args.model), "info": info, "split": args.split, "offset": args.offset,
               "seg_holdout": args.seg_holdout, **results}
    grid_path = REPO / args.grid
    if grid["rows"]:
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        write_png(grid_path, image_grid(grid["rows"], boxes=grid["boxes"]))
    results_path = Path(args.results) if args.results else model_dir / "eval_msrs_val.json"
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    card_path = REPO / args.card
    card_path.write_text(model_card(results, Path(os.path.relpath(grid_path, card_path.parent))))
    print(f"wrote {card_path}, {results_path}" + (f", {grid_path}" if grid["rows"] else " (no grid: no frame with people)"))
    return results


# --------------------------------------------------------------------------- the card


def radiation_shift_words(r: dict) -> str:
    shift = r.get("radiation_shift") or 0.0
    return f", thermal scores {shift:+g} for it only" if shift else ""


def timestep_words(r: dict) -> str:
    return f" (t = {', '.join(map(str, r['timesteps']))})" if r.get("timesteps") else ""


def fmt(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}"


def signed(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:+.1f}"


def markdown_table(table: dict[str, dict[str, float]], keys: list[str], bold_best: bool = True,
                   labels: dict[str, str] | None = None, formats: dict[str, callable] | None = None) -> str:
    """Rows = table keys, columns = `keys`; the best finite value of the rows not in parentheses is bold."""
    labels, formats = labels or {}, formats or {}
    lines = ["| | " + " | ".join(f"{labels.get(k, k)} {'↓' if k in LOWER_BETTER else '↑'}" for k in keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    contenders = [n for n in table if not n.startswith("(")]
    for name, row in table.items():
        cells = []
        for k in keys:
            cell = formats.get(k, fmt)(row[k])
            values = [table[n][k] for n in contenders if math.isfinite(table[n][k])]
            if bold_best and name in contenders and values and row[k] == (min if k in LOWER_BETTER else max)(values):
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def one_row_table(label: str, values: dict[str, float], spec: str) -> list[str]:
    """Markdown lines of a table with the keys as the header and one row of formatted values."""
    return ["| | " + " | ".join(values) + " |", "|---" * (len(values) + 1) + "|",
            f"| {label} | " + " | ".join(spec.format(v) for v in values.values()) + " |"]


def summary_table(r: dict) -> dict[str, dict[str, float]]:
    """The headline rows: fusion metrics and both contrasts of every candidate and the clean reference."""
    full, contrast = r["fusion_full_res"], r["contrast"]
    rows = {}
    for name in (*card.CANDIDATES, card.CLEAN):
        rows[name] = {**{k: full[name][k] for k in SUMMARY_KEYS},
                      **{c: contrast[c][name] for c in CONTRAST_NAMES}}
    return rows


def compare(a: dict[str, float], b: dict[str, float], keys, name_a: str, name_b: str) -> str:
    """'A is ahead of B on x (1 vs 2), y (...); behind on z (...)' from the numbers."""
    def listing(ks):
        form = {k: signed if k in CONTRAST_NAMES else fmt for k in ks}
        return ", ".join(f"{CONTRAST_NAMES.get(k, k)} ({form[k](a[k])} vs {form[k](b[k])})" for k in ks)
    finite = [k for k in keys if math.isfinite(a[k]) and math.isfinite(b[k])]
    ahead = [k for k in finite if (a[k] < b[k] if k in LOWER_BETTER else a[k] > b[k])]
    behind = [k for k in finite if k not in ahead and a[k] != b[k]]
    parts = ([f"ahead of {name_b} on {listing(ahead)}"] if ahead else []) + \
            ([f"behind it on {listing(behind)}" if ahead else f"behind {name_b} on {listing(behind)}"] if behind else [])
    return f"{name_a} is " + ("; ".join(parts) if parts else f"level with {name_b}") + "."


def checks_of(r: dict) -> list[tuple[str, bool, str]]:
    """(check, met, numbers) of the acceptance checks and the quality targets."""
    full, small, sim = r["fusion_full_res"], r["fusion_inference_res"], r["ir_similarity"]
    pc = r["contrast"]["person"]
    checks = []
    for label, table in (("full res", full), ("inference res", small)):
        for k in ("MI", "Qabf", "VIF") if table else ():
            checks.append((f"MagImg ahead of the degraded input on {k} ({label})",
                           table[card.MAGIMG][k] > table[card.DEGRADED][k],
                           f"{fmt(table[card.MAGIMG][k])} vs {fmt(table[card.DEGRADED][k])}"))
    for k in ("PSNR", "SSIM", "CC"):
        checks.append((f"CKG closer to the real IR than grey degraded visible ({k})",
                       sim["CKG (generated IR)"][k] > sim["grey degraded VIS as IR"][k],
                       f"{fmt(sim['CKG (generated IR)'][k])} vs {fmt(sim['grey degraded VIS as IR'][k])}"))
    checks.append(("people brighter against their surroundings in MagImg than in the degraded input",
                   pc[card.MAGIMG] > pc[card.DEGRADED], f"{signed(pc[card.MAGIMG])} vs {signed(pc[card.DEGRADED])} grey levels"))
    for k, ratio in r["ratios"].items():
        checks.append((f"MagImg keeps >= {card.RATIO_TARGET:g} of IKR-only's {k} (full res)",
                       math.isfinite(ratio) and ratio >= card.RATIO_TARGET, f"ratio {fmt(ratio)}"))
    seg = r["segmentation"]
    checks.append((f"MagImg person contrast >= +{card.PERSON_CONTRAST_TARGET:g} grey levels",
                   pc[card.MAGIMG] >= card.PERSON_CONTRAST_TARGET, f"{signed(pc[card.MAGIMG])}"))
    checks.append((f"S person IoU against the IR silhouettes >= {card.PERSON_IOU_TARGET:g}",
                   seg["person_IoU"] >= card.PERSON_IOU_TARGET, f"{fmt(seg['person_IoU'])}"))
    checks.append((f"at most {100 * card.OUTSIDE_OBJECT_MAX:g} % of the pixels outside every box labelled car, person or bike",
                   seg["outside_object_fraction"] <= card.OUTSIDE_OBJECT_MAX,
                   f"{100 * seg['outside_object_fraction']:.1f} %"))
    for k, ref in card.CKG_REFERENCE.items():
        got = sim["CKG (generated IR)"][k]
        checks.append((f"CKG against the real IR at least as good as the 25-step release ({k})", got >= ref,
                       f"{fmt(got)} vs {fmt(ref)}"))
    return checks


def shortfalls(r: dict, checks: list[tuple[str, bool, str]]) -> list[str]:
    """The 'Where it falls short' bullets, each derived from the numbers."""
    full, info = r["fusion_full_res"], r["info"]
    contrast, seg, rm, sim = r["contrast"], r["segmentation"], r["radiation_mask"], r["ir_similarity"]
    rows = summary_table(r)
    keys = (*SUMMARY_KEYS, *CONTRAST_NAMES)
    pc, hot = contrast["person"], contrast["hottest"]
    lines = [f"- Check not met: {c} ({n})." for c, ok, n in checks if not ok] or ["- Every check above is met."]
    lines.append("- What per-step fusion adds over IKR alone: MagImg/IKR ratio " + ", ".join(
        f"{k} {fmt(v)}" for k, v in r["ratios"].items()) + f" (target >= {card.RATIO_TARGET:g}); "
        + compare(rows[card.MAGIMG], rows[card.IKR], CONTRAST_NAMES, "MagImg", "IKR only"))
    lines.append("- Per-step noise fusion vs fusing after sampling: "
                 + compare(rows[card.MAGIMG], rows[card.IMAGE_FUSION], keys, "MagImg", "the image-level fusion"))
    lines.append("- Against a classical method: " + compare(rows[card.MAGIMG], rows[card.CLAHE], keys, "MagImg", "CLAHE"))
    share = pc[card.MAGIMG] / pc[card.REAL_IR] if pc[card.REAL_IR] else math.nan
    lines.append(f"- Thermal targets: person contrast {signed(pc[card.MAGIMG])} in MagImg, {signed(pc[card.DEGRADED])} in "
                 f"the degraded input, {signed(pc[card.CKG])} in the CKG stream and {signed(pc[card.REAL_IR])} in the real IR "
                 f"(MagImg carries {100 * share:.0f} % of the real IR's); hottest-tenth contrast {signed(hot[card.MAGIMG])} "
                 f"against {signed(hot[card.DEGRADED])}, {signed(hot[card.CKG])} and {signed(hot[card.REAL_IR])}. "
                 f"Inside the person boxes the head labels {rm[card.RADIATION_KEYS[0]]:.1f} % of the pixels person and the "
                 f"last step's w_r averages {fmt(rm[card.RADIATION_KEYS[1]])} (elsewhere {fmt(rm[card.RADIATION_KEYS[2]])}; "
                 "1 = IKR stream).")
    if r["tau"] != DEFAULT_TAU:
        lines.append(f"- tau = {r['tau']:g}, not the paper's {DEFAULT_TAU:g} (docs/TRAINING.md says why).")
    sharp = [k for k in ("SF", "AG") if full[card.MAGIMG][k] < full[card.DEGRADED][k]]
    if sharp:
        lines.append("- Sharpness: MagImg is smoother than the degraded input on " + ", ".join(
            f"{k} ({fmt(full[card.MAGIMG][k])} vs {fmt(full[card.DEGRADED][k])})" for k in sharp)
            + "; the input's noise also counts as detail for these metrics.")
    ckg, guess = sim["CKG (generated IR)"], sim["grey degraded VIS as IR"]
    lines.append(f"- CKG (generated IR): PSNR {fmt(ckg['PSNR'])} dB / SSIM {fmt(ckg['SSIM'])} / CC {fmt(ckg['CC'])} "
                 f"against the real IR, where the grey degraded frame scores {fmt(guess['PSNR'])} / {fmt(guess['SSIM'])} / "
                 f"{fmt(guess['CC'])}. It is a guess at the infrared, not a measurement.")
    lines.append(f"- Segmentation against the weak masks: person IoU {fmt(seg['person_IoU'])} (precision "
                 f"{fmt(seg['person_precision'])}, recall {fmt(seg['person_recall'])}) against the IR silhouettes; "
                 f"car IoU {fmt(seg['car_IoU'])}, bike IoU {fmt(seg['bike_IoU'])} against the boxes; "
                 f"{100 * seg['outside_object_fraction']:.2f} % of the pixels outside every box are labelled car, person "
                 "or bike. The other MFNet classes have no labels here and are not measured.")
    lit = r.get("by_lighting") or {}
    if "day" in lit and "night" in lit:
        day, night = lit["day"], lit["night"]
        lines.append(f"- Day against night: S person IoU {fmt(day['segmentation']['person_IoU'])} by day and "
                     f"{fmt(night['segmentation']['person_IoU'])} at night (precision "
                     f"{fmt(night['segmentation']['person_precision'])}, recall {fmt(night['segmentation']['person_recall'])}); "
                     f"MagImg person contrast {signed(day['person_contrast'][card.MAGIMG])} by day and "
                     f"{signed(night['person_contrast'][card.MAGIMG])} at night, where the real IR has "
                     f"{signed(night['person_contrast'][card.REAL_IR])}. Do not rely on the map for people at night.")
    data, wall = info.get("data", {}), info.get("wall_time_s", {})
    lines.append(f"- Data: {data.get('frames')} MSRS training frames with synthetic `{data.get('degradation')}` "
                 f"degradations, {sum(v for v in wall.values() if isinstance(v, (int, float))) / 60:.0f} min of training in all; MSRS road scenes and "
                 "MSRS-processed infrared only, so other cameras need retraining (docs/TRAINING.md).")
    lines.append("- Results depend on the sampling seed (the encoder noise, z_T and s_T); the card uses seed = frame index.")
    return lines


def lighting_section(lit: dict) -> list[str]:
    """'Day and night': the headline figures per lighting (MSRS names end in D or N)."""
    if not lit:
        return []
    head = ["frames", *(f"{k} / IKR" for k in card.RATIO_METRICS),
            *(f"person contrast {k}" for k in LIGHTING_CONTRASTS), "S person IoU", "precision", "recall", "outside %"]
    rows = []
    for lighting, v in lit.items():
        seg, pc = v["segmentation"], v["person_contrast"]
        cells = [str(v["frames"]), *(fmt(v["ratios"][k]) for k in card.RATIO_METRICS),
                 *(signed(pc[k]) for k in LIGHTING_CONTRASTS),
                 fmt(seg["person_IoU"]), fmt(seg["person_precision"]), fmt(seg["person_recall"]),
                 f"{100 * seg['outside_object_fraction']:.1f}"]
        rows.append(f"| {lighting} | " + " | ".join(cells) + " |")
    return ["## Day and night", "",
            "The same figures for the day and the night frames apart (MSRS names end in D or N). At night the",
            "visible frame shows little of the people the infrared sees, so that is where the thermal stream has",
            "the least to go on.", "",
            "| | " + " | ".join(head) + " |", "|---|" + "---|" * len(head), *rows, ""]


def ckg_tone_words(r: dict) -> str:
    if r.get("ckg_tone") != "reference":
        return "decoded alone"
    return f"in the tone of the real infrared frame {r.get('ckg_tone_frame')} (`ckg_tone: reference`)"


def model_card(r: dict, grid_path: Path) -> str:
    info = r["info"]
    keys = list(metrics.METRIC_NAMES)
    full, small, sim = r["fusion_full_res"], r["fusion_inference_res"], r["ir_similarity"]
    contrast, seg, rm = r["contrast"], r["segmentation"], r["radiation_mask"]
    checks = checks_of(r)
    steps, wall = info.get("steps", {}), info.get("wall_time_s", {})
    profile, data = info.get("profile", {}), info.get("data", {})
    contrast_rows = {name: {c: contrast[c][name] for c in CONTRAST_NAMES}
                     for name in (card.DEGRADED, card.CLAHE, card.IKR, card.CKG, card.IMAGE_FUSION, card.MAGIMG,
                                  card.REAL_IR, card.CLEAN)}
    lines = [
        "# Model card: `models/demo` (the bundled MagicFuse model)",
        "",
        "Generated by `tools/evaluate_demo_model.py` from `models/demo/model.json` and an evaluation on MSRS val;",
        f"the numbers are also in `{r['model']}/eval_msrs_val.json`. Re-run the script after retraining.",
        "",
        *([f"**This run scored MSRS {r['split']} frames, which the model trained on: not a result.**", ""]
          if r.get("split", "val") != "val" else []),
        "## What it is",
        "",
        "A deliberately small MagicFuse trained on a 2-core CPU (wall times below), so that `make demo`,",
        "the CLI and the ROS node produce real MagImg / IKR / CKG / segmentation outputs out of the box.",
        "It is a demonstration model, far from the paper's (its MFNet figures: MI 4.13, mIoU 57.11 from the built-in head).",
        "",
        "| | |",
        "|---|---|",
        f"| autoencoder | {profile.get('autoencoder')} |",
        f"| IKR denoiser Ψ | UNet `{json.dumps(profile.get('ikr'))}` |",
        f"| CKG denoiser Φ | UNet `{json.dumps(profile.get('ckg'))}` |",
        f"| fusion F + segmentation S | `{json.dumps(profile.get('fusion'))}` |",
        f"| training data | {data.get('root')} `{data.get('split')}.txt` ({data.get('frames')} frames), synthetic "
        f"`{data.get('degradation')}` degradations, frames scaled by {data.get('scale')}; weak masks from "
        f"{data.get('weak_masks')} |",
        f"| steps | Ψ {steps.get('ikr')}, Φ {steps.get('ckg')}, F/S {steps.get('fusion')} |",
        f"| wall time | Ψ {wall.get('ikr', 0) / 60:.1f} min, Φ {wall.get('ckg', 0) / 60:.1f} min, "
        f"F/S {wall.get('fusion', 0) / 60:.1f} min |",
        f"| hardware | {info.get('hardware')} |",
        f"| training config | `training/configs/{info.get('config')}` (see docs/TRAINING.md) |",
        *([f"| training history | {info['notes']} |"] if info.get("notes") else []),
        f"| inference | {r['inference_size'][0]}x{r['inference_size'][1]} "
        f"({'`info.inference_size`' if info.get('inference_size') else 'native: the frame size'}), "
        f"{r['steps']} DDIM step{'' if r['steps'] == 1 else 's'}{timestep_words(r)}, tau {r['tau']:g} ({r.get('radiation_map', 'hard')} radiation map"
        f"{radiation_shift_words(r)}), MagImg decoded "
        f"{'in the IKR stream' + chr(39) + 's tone' if r.get('magimg_tone') == 'ikr' else 'alone'}, "
        f"the CKG image {ckg_tone_words(r)}, "
        f"{r['seconds_per_frame']:.2f} s per frame on this CPU |",
        "",
        "## Evaluation protocol",
        "",
        f"- {r['frames']} frames of MSRS `val.txt` (never seen in training); the input is",
        "  `degrade_seeded(clean_visible, seed=i, kind=\"random\")` for the i-th name; the pipeline runs",
        "  with `seed=i`. The measures are `magicfuse_core.evaluation.card` (definitions: docs/METRICS.md §5).",
        "- Candidates, all from the same degraded frame: the degraded input; **CLAHE** of it (OpenCV, clip limit 2,",
        "  8x8 tiles, on the luma); **IKR only** (the restoration stream); the **image-level fusion** of the IKR and",
        "  CKG outputs as the model publishes them (luma max, IKR chroma: the paper's \"fuse after sampling\"",
        "  ablation; the CKG image in the model's `ckg_tone`); **MagImg**.",
        "- Fusion metrics: `metrics.FusionScorer(clean visible, real infrared).score(candidate)`, mean over frames",
        "  at full resolution (640x480)" + (
            ", then at the inference resolution (every image, the two sources included, resized to it "
            "with antialiasing)." if small else "; the networks run at that resolution too."),
        "- `(clean VIS, reference)` is the undegraded visible frame scored the same way: no method sees it; it shows",
        "  what a perfect restoration without any thermal knowledge would score. Bold = best of the candidates.",
        "",
        "## What the method adds",
        "",
        markdown_table(summary_table(r), [*SUMMARY_KEYS, *CONTRAST_NAMES], labels=CONTRAST_NAMES,
                       formats={c: signed for c in CONTRAST_NAMES}),
        "",
        f"Contrasts in grey levels (0-255), see below. MagImg / IKR only (target >= {card.RATIO_TARGET:g}: fusing in",
        "thermal knowledge must not cost the restored detail):",
        "",
        *one_row_table("MagImg / IKR", r["ratios"], "{:.3f}"),
        "",
        "## Fusion metrics at full resolution (640x480)",
        "",
        markdown_table(full, keys),
        "",
        *([f"## Fusion metrics at the inference resolution ({r['inference_size'][0]}x{r['inference_size'][1]})",
           "", markdown_table(small, keys), ""] if small else []),
        "## CKG (generated infrared) against the real infrared",
        "",
        markdown_table(sim, ["PSNR", "SSIM", "CC"]),
        "",
        "PSNR here is the standard 10 log10(255²/MSE) in dB. 'grey … VIS as IR' is the trivial guess:",
        "the luma of the visible frame used as if it were the infrared frame.",
        "",
        "## Thermal-target contrast",
        "",
        "- person contrast: mean luma inside the infrared person boxes minus the mean luma of a ring around them",
        f"  (each box grown by half its size on every side, minus all boxes), over the {r['person_frames']} frames with people;",
        "- hottest-tenth contrast: mean luma on the pixels whose real-IR value is in the frame's top 10 % minus the",
        f"  mean luma of the rest of the frame, over all {r['frames']} frames.",
        "",
        markdown_table(contrast_rows, list(CONTRAST_NAMES), bold_best=False, labels=CONTRAST_NAMES,
                       formats={c: signed for c in CONTRAST_NAMES}),
        "",
        "Where the thermal knowledge can enter MagImg: the segmentation head's person label inside the person boxes",
        "(the radiation mask caps the visible stream's weight at tau there) and the last step's corrected fusion",
        "weight w_r (1 = IKR stream, 0 = CKG stream), averaged over the frames with people:",
        "",
        *one_row_table("", rm, "{:.3g}"),
        "",
        "## Segmentation against the weak masks",
        "",
        "Pixels summed over all frames. Person: against the IR-silhouette masks the head is trained on (the warm",
        "pixels of each person box; the colder rest of the box is left out). Car, bike: against the filled boxes.",
        "Outside: the share of the pixels outside every box that the head labels car, person or bike.",
        "",
        *one_row_table("head", {k: seg[k] for k in SEG_TARGET_METRICS}, "{:.3f}"),
        "",
        *lighting_section(r.get("by_lighting") or {}),
        "## Checks",
        "",
        "| check | result | numbers |",
        "|---|---|---|",
        *[f"| {c} | {'yes' if ok else '**no**'} | {n} |" for c, ok, n in checks],
        "",
        "## Examples",
        "",
        f"![{', '.join(GRID_COLUMNS)}]({grid_path.as_posix()})",
        "",
        "Columns: " + " | ".join(GRID_COLUMNS) + " (the head's labels over the input, MFNet palette).",
        f"Rows: val frames {', '.join(r['grid_frames']) or '(none)'} (night frames end in N, day frames in D);"
        " yellow: the infrared person boxes.",
        "",
        "## Where it falls short",
        "",
        *shortfalls(r, checks),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
