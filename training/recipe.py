"""Train a whole model with one command, inside one wall-clock budget.

    python -m training.recipe --config training/configs/h200_8min.yaml --out models/h200

The stages are the entry points docs/TRAINING.md runs by hand, called in order with the config and its
`--set` overrides: the latent cache, Ψ (IKR), Φ (CKG), F (phase 2), the frame segmentation head S
(training.frame_seg, on phase 2's F), the export and the generated infrared's tone. Phase 2 writes to
RUN_DIR/phase2 so that RUN_DIR/fusion holds the F + frame head the export reads.

`recipe.budget_min` bounds the whole run. A training stage does not get a fixed number of minutes: it gets
its share (`recipe.shares`) of the time still left, less `reserve_min` for the stages after training, so a
slow start (building the caches on a busy machine) shortens the training instead of overrunning the budget.
0 leaves every stage its own `time_budget_min` / `max_steps`. RUN_DIR/recipe.json records each finished
stage and its time; started again, the recipe skips those and the interrupted stage resumes from its
checkpoint.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from training.config import RUN_DEFAULTS, load_config, repo_path, with_defaults

STAGES = ("latents", "ikr", "ckg", "fusion", "frame_seg", "export", "ckg_tone")
# the config key each training stage reads its time budget from
BUDGET_KEYS = {"ikr": "phase1.ikr.time_budget_min", "ckg": "phase1.ckg.time_budget_min",
               "fusion": "phase2.time_budget_min", "frame_seg": "frame_seg.time_budget_min"}
RECIPE_DEFAULTS = {
    "budget_min": 0,                     # the whole run's wall-clock budget (0: each stage's own budget)
    "shares": {"ikr": 1, "ckg": 1, "fusion": 1, "frame_seg": 1},  # how the training time is split
    "reserve_min": 0.5,                  # kept for the stages after training (export, CKG tone)
    "stages": list(STAGES),              # a subset, in this order (frame_seg left out: F's own S ships)
    "tone_candidates": 8,                # training.ckg_tone --candidates / --score-frames
    "tone_frames": 6,
}
MIN_STAGE_MIN = 0.05  # a stage that finds the budget spent still trains a few steps and writes its checkpoint


def allot_minutes(stage: str, stages_left: list[str], shares: dict, budget_min: float, spent_min: float,
                  reserve_min: float) -> float | None:
    """Minutes for training stage `stage` (the first of `stages_left`): its share, among the training stages
    still to run, of the budget less what was spent and the reserve. None without a budget."""
    if not budget_min:
        return None
    training_left = [s for s in stages_left if s in BUDGET_KEYS]
    total = sum(float(shares[s]) for s in training_left)
    left = budget_min - spent_min - reserve_min
    return max(MIN_STAGE_MIN, left * float(shares[stage]) / total)


def _cuda_available() -> bool:
    import torch  # here: the recipe's own checks run without importing torch
    return torch.cuda.is_available()


def check_recipe(r: dict) -> list[str]:
    stages = list(r["stages"])
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"recipe.stages: unknown {unknown}; the stages are {list(STAGES)}")
    if stages != [s for s in STAGES if s in stages]:
        raise ValueError(f"recipe.stages must keep the order {list(STAGES)}, got {stages}")
    for s in stages:
        if s in BUDGET_KEYS and not float((r["shares"] or {}).get(s, 0)) > 0:
            raise ValueError(f"recipe.shares.{s}: a positive share of the training time, got "
                             f"{(r['shares'] or {}).get(s)!r}")
    if float(r["budget_min"] or 0) < 0 or float(r["reserve_min"] or 0) < 0:
        raise ValueError("recipe.budget_min and recipe.reserve_min must be >= 0")
    return stages


def frame_head_spec(fusion_net: dict, seg_channels: int) -> dict:
    """The config's fusion net with the frame head S that training.frame_seg gives it (export records it)."""
    return {**fusion_net, "config": {**(fusion_net.get("config") or {}), "seg_head": "frame",
                                     "seg_channels": int(seg_channels)}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True, help="model folder to write, e.g. models/h200")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, for every stage")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars (logs say the rates)")
    parser.add_argument("--fresh", action="store_true", help="forget RUN_DIR/recipe.json (the stages still resume "
                                                             "from their checkpoints; delete RUN_DIR to start over)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    r = with_defaults(cfg.get("recipe") or {}, RECIPE_DEFAULTS)
    stages = check_recipe(r)
    budget, reserve = float(r["budget_min"] or 0), float(r["reserve_min"] or 0)
    run = repo_path(cfg["run_dir"])
    out = repo_path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    state_path = run / "recipe.json"
    try:
        state = json.loads(state_path.read_text()) if state_path.is_file() and not args.fresh else {}
        done: dict = dict(state.get("stages", {}))
        if not all(isinstance(v, dict) and "wall_s" in v for v in done.values()):
            raise ValueError("a stage without its time")
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"{state_path} is not a recipe record ({exc!r}): start with --fresh to forget it (the "
                         "stages resume from their checkpoints)") from exc
    if state.get("out") != str(out):  # another model folder: export (and tone) it there too
        done = {k: v for k, v in done.items() if k not in ("export", "ckg_tone")}
    state = {"config": str(args.config), "set": list(args.set), "out": str(out), "budget_min": budget, "stages": done}

    # phase 2 writes elsewhere when the frame head follows, so that RUN_DIR/fusion is what the export reads
    fusion_run = run / "phase2" if "frame_seg" in stages else run
    progress = ["--no-progress"] if args.no_progress else []
    streams = [f"phase2.ikr_checkpoint={run / 'ikr' / 'last.pt'}", f"phase2.ckg_checkpoint={run / 'ckg' / 'last.pt'}"]
    fusion_spec = cfg["fusion"]["net"]
    if "frame_seg" in stages:
        fusion_spec = frame_head_spec(fusion_spec, (cfg.get("frame_seg") or {}).get("seg_channels", 24))

    def command(stage: str, budget_set: list[str]):
        # imported here: a stage's imports (torch, the data) cost seconds the recipe's own checks need not pay
        sets = ["--set", *args.set, *budget_set]
        if stage == "latents":
            from training import cache_latents
            return lambda: cache_latents.main(["--config", args.config, *sets])
        if stage in ("ikr", "ckg"):
            from training import phase1
            return lambda: phase1.main(["--config", args.config, "--component", stage, *progress, *sets])
        if stage == "fusion":
            from training import phase2
            return lambda: phase2.main(["--config", args.config, *progress, *sets, *streams, f"run_dir={fusion_run}"])
        if stage == "frame_seg":
            from training import frame_seg
            init = f"frame_seg.init_fusion={fusion_run / 'fusion' / 'last.pt'}"
            return lambda: frame_seg.main(["--config", args.config, *progress, *sets, init])
        if stage == "export":
            from training import export_model
            return lambda: export_model.main(["--config", args.config, "--out", str(out), *sets, *streams,
                                              f"fusion.net={json.dumps(fusion_spec)}"])
        from training import ckg_tone
        return lambda: ckg_tone.main(["--config", args.config, "--model", str(out), "--candidates",
                                      str(r["tone_candidates"]), "--score-frames", str(r["tone_frames"]), *sets])

    if budget and with_defaults(cfg, RUN_DEFAULTS)["device"] in ("auto", "cpu") and not _cuda_available():
        print(f"[recipe] no GPU: the {budget:g} min budget is sized for one; the caches and the tone are CPU work that "
              "does not shrink with it (40 MSRS frames on 2 cores: 8.7 min for a 4 min budget)", flush=True)
    t_run = time.time()
    for n, stage in enumerate(stages):
        if stage in done:
            print(f"[recipe] {stage}: done earlier ({done[stage]['wall_s'] / 60:.1f} min), skipped", flush=True)
            continue
        if stage == "latents" and not (cfg.get("data") or {}).get("latent_cache"):
            continue  # no cache in this config: the phases encode frames as they train
        spent = sum(float(v["wall_s"]) for v in done.values()) / 60
        minutes = allot_minutes(stage, stages[n:], r["shares"], budget, spent, reserve) if stage in BUDGET_KEYS else None
        budget_set = [f"{BUDGET_KEYS[stage]}={minutes:.3f}"] if minutes is not None else []
        plan = f", {minutes:.2f} min of training" if minutes is not None else ""
        left = f" ({budget - spent:.1f} of {budget:g} min left)" if budget else ""
        print(f"[recipe] {stage}: starting{plan}{left}", flush=True)
        start = time.time()
        command(stage, budget_set)()
        wall = time.time() - start
        done[stage] = {"wall_s": round(wall, 1), **({"budget_min": round(minutes, 3)} if minutes is not None else {})}
        state_path.write_text(json.dumps(state, indent=2) + "\n")
        print(f"[recipe] {stage}: done in {wall / 60:.2f} min", flush=True)

    total = sum(float(v["wall_s"]) for v in done.values())
    if (out / "model.json").is_file():  # the model says how it was made
        meta = json.loads((out / "model.json").read_text())
        meta.setdefault("info", {})["recipe"] = {"config": str(args.config), "budget_min": budget,
                                                  "wall_min": round(total / 60, 2),
                                                  "stages_min": {k: round(v["wall_s"] / 60, 2) for k, v in done.items()}}
        (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    over = f", over the {budget:g} min budget" if budget and total / 60 > budget else ""
    print(f"[recipe] {out}: {total / 60:.2f} min in all ({(time.time() - t_run) / 60:.2f} min this time){over}", flush=True)
    return {"out": out, "stages": done, "wall_s": total}


if __name__ == "__main__":
    main()
