"""Assemble a model folder (our format, magicfuse_core.checkpoint) from the phase checkpoints of a config.

    python -m training.export_model --config training/configs/cpu_demo.yaml --out models/demo

Takes the EMA weights of RUN_DIR/{ikr,ckg,fusion}/last.pt (Ψ/Φ: or the exported components phase 2
was given) and the config's autoencoder,
and records provenance in model.json `info`: trained, inference_size (the default of
the CLI and the node), data, profile, steps and wall time per phase, hardware.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from magicfuse_core.checkpoint import MagicFuseModel, check_radiation_shift, save_model
from magicfuse_core.models.fusion import DEFAULT_RADIATION_MAP
from magicfuse_core.data import read_names
from magicfuse_core.palette import DEFAULT_TAU, DEFAULT_THERMAL_CLASSES, class_ids
from training.builders import build_autoencoder, export_schedule
from training.checkpoints import load_trained_module
from training.config import load_config, repo_path

DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} CPU cores{gpu}, torch {torch.__version__}"


def trained_component(run_dir: Path, name: str, phase2: dict) -> tuple[torch.nn.Module, int | None, float | None]:
    """(network, steps, wall seconds) of `name`: RUN_DIR/<name>/last.pt, or for Ψ/Φ the exported component
    that phase 2 was given (`phase2.ikr_checkpoint: models/demo/ikr.safetensors`), whose steps and wall
    time come from its folder's model.json."""
    source = phase2.get(f"{name}_checkpoint") if name in ("ikr", "ckg") else None
    if source and str(source).endswith(".safetensors"):
        steps, wall = recorded_training(repo_path(source))
        return load_trained_module(repo_path(source)), steps, wall
    path = run_dir / name / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint for {name}: {path} (train it first, see docs/TRAINING.md)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    steps, wall = int(state["step"]), float(state["extra"].get("wall_s", 0.0))
    if name == "fusion":  # a seg-head stage (training.seg_head) records the F it started from
        start = state["extra"].get("init_fusion") or phase2.get("init_fusion")
    else:  # a Ψ/Φ fine-tuned with phase1.<name>.init: the config saved in its checkpoint says from what
        phase1 = (state.get("config") or {}).get("phase1") or {}
        start = (phase1.get(name) or {}).get("init") or phase1.get("init")
    if start and str(start).endswith(".safetensors"):  # fine-tuned: count the training it started from
        base_steps, base_wall = recorded_training(repo_path(start))
        steps, wall = steps + (base_steps or 0), wall + (base_wall or 0.0)
    return load_trained_module(path), steps, round(wall, 1)


def recorded_training(component: Path) -> tuple[int | None, float | None]:
    """(steps, wall seconds) that an exported component's model.json records for it (None when it does not)."""
    meta = component.parent / "model.json"
    info = json.loads(meta.read_text()).get("info", {}) if meta.is_file() else {}
    return (info.get("steps") or {}).get(component.stem), (info.get("wall_time_s") or {}).get(component.stem)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True, help="model folder to write, e.g. models/demo")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    parser.add_argument("--hardware", default=None, help="what the phases ran on (default: this machine)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    run_dir = repo_path(cfg["run_dir"])
    export = cfg.get("export", {})

    nets, steps, wall = {}, {}, {}
    for name in ("ikr", "ckg", "fusion"):
        nets[name], steps[name], wall[name] = trained_component(run_dir, name, cfg["phase2"])
    ae_spec = cfg["autoencoder"]
    ae_source = ("phase-1 checkpoint " + str(ae_spec["checkpoint"]) if ae_spec.get("checkpoint") else
                 "released MagicFuse autoencoder (authors' ae.pth), frozen" if ae_spec.get("official") else
                 "random (plumbing only)")
    data = cfg["data"]
    split_file = repo_path(data["root"]) / f"{data.get('split', 'train')}.txt"
    info = {
        "trained": True,
        "inference_size": list(export.get("inference_size") or []) or None,
        "description": f"MagicFuse trained with {Path(cfg['_config_path']).name}",
        "config": Path(cfg["_config_path"]).name,
        "data": {"root": str(data["root"]), "split": data.get("split", "train"),
                 "frames": len(read_names(split_file)) if split_file.is_file() else None,
                 "degradation": data.get("degradation", "random"), "scale": data.get("scale"),
                 "weak_masks": f"det/{data.get('det_subdir', 'infrared')} boxes (person, bike, car)" + (
                     f"; {', '.join(map(str, data['silhouette_classes']))} boxes cut to their IR-warm pixels"
                     if data.get("silhouette_classes") else "")},
        "profile": {"autoencoder": ae_source, "ikr": cfg["ikr"]["unet"], "ckg": cfg["ckg"]["unet"],
                    "fusion": cfg["fusion"]["net"]},
        "steps": steps,
        "wall_time_s": wall,
        "hardware": args.hardware or hardware(),
        "notes": export.get("notes"),
        "exported": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    # F and S are conditioned on the timesteps they were trained on: the model samples with phase 2's, or with
    # some of them (export.timesteps).
    schedule = export_schedule(cfg["phase2"], export.get("timesteps"))
    model = MagicFuseModel(autoencoder=build_autoencoder(ae_spec), ikr=nets["ikr"], ckg=nets["ckg"],
                           fusion=nets["fusion"], schedule=schedule, tau=float(cfg["phase2"].get("tau", DEFAULT_TAU)),
                           thermal_classes=class_ids(cfg["phase2"].get("thermal_classes", DEFAULT_THERMAL_CLASSES)),
                           radiation_map=cfg["phase2"].get("radiation_map", DEFAULT_RADIATION_MAP),
                           radiation_shift=check_radiation_shift(export.get("radiation_shift") or 0.0, "export"),
                           magimg_tone=cfg["phase2"].get("magimg_tone", "own"),
                           info=info)
    out = save_model(model, repo_path(args.out), dtype=DTYPES[export.get("dtype", "float32")])
    size_mb = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20
    print(f"wrote {out} ({size_mb:.1f} MB of weights): steps {steps}, wall {wall}")
    return out


if __name__ == "__main__":
    main()
