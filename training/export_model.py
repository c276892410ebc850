"""Assemble a model folder (our format, magicfuse_core.checkpoint) from the phase checkpoints of a config.

    python -m training.export_model --config training/configs/cpu_demo.yaml --out models/demo

Takes the EMA weights of RUN_DIR/{ikr,ckg,fusion}/last.pt and the config's autoencoder,
and records provenance in model.json `info`: trained, inference_size (the default of
the CLI and the node), data, profile, steps and wall time per phase, hardware.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from magicfuse_core.checkpoint import MagicFuseModel, save_model
from magicfuse_core.data import read_names
from magicfuse_core.palette import DEFAULT_THERMAL_CLASSES, class_ids
from training.common import build_autoencoder, load_config, load_trained_module, repo_path

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
        path = run_dir / name / "last.pt"
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint for {name}: {path} (train it first, see docs/TRAINING.md)")
        state = torch.load(path, map_location="cpu", weights_only=False)
        steps[name] = int(state["step"])
        wall[name] = round(float(state["extra"].get("wall_s", 0.0)), 1)
        nets[name] = load_trained_module(path)
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
                 "weak_masks": f"det/{data.get('det_subdir', 'infrared')} boxes (person, bike, car)"},
        "profile": {"autoencoder": ae_source, "ikr": cfg["ikr"]["unet"], "ckg": cfg["ckg"]["unet"],
                    "fusion": cfg["fusion"]["net"]},
        "steps": steps,
        "wall_time_s": wall,
        "hardware": args.hardware or hardware(),
        "notes": export.get("notes"),
        "exported": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    model = MagicFuseModel(autoencoder=build_autoencoder(ae_spec), ikr=nets["ikr"], ckg=nets["ckg"],
                           fusion=nets["fusion"], tau=float(cfg["phase2"].get("tau", 0.4)),
                           thermal_classes=class_ids(cfg["phase2"].get("thermal_classes", DEFAULT_THERMAL_CLASSES)),
                           info=info)
    out = save_model(model, repo_path(args.out), dtype=DTYPES[export.get("dtype", "float32")])
    size_mb = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20
    print(f"wrote {out} ({size_mb:.1f} MB of weights): steps {steps}, wall {wall}")
    return out


if __name__ == "__main__":
    main()
