"""`magicfuse convert-official`: the authors' released .pth files -> our model folder.

    magicfuse convert-official --ae ae.pth --ikr ikr.pth --ckg ckg.pth --fusion fusion.pth --out models/official

Denoiser configurations default to the paper's Psi and Phi; pass the reference
YAML files (--ikr-config / --ckg-config) when converting other sizes.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("convert-official", help="convert the reference checkpoints into our format",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("ae", "ikr", "ckg", "fusion"):
        p.add_argument(f"--{name}", type=Path, required=True, help=f"reference {name} checkpoint (.pth)")
    p.add_argument("--ikr-config", type=Path, default=None, help="reference YAML of the IKR denoiser (default: paper)")
    p.add_argument("--ckg-config", type=Path, default=None, help="reference YAML of the CKG denoiser (default: paper)")
    p.add_argument("--out", type=Path, required=True, help="output model folder")
    p.set_defaults(func=run)


def read_reference_config(path: Path | None, default: dict) -> dict:
    """A reference YAML: the keys at top level or under MODEL / model / UNET."""
    if path is None:
        return default
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    data = yaml.safe_load(path.read_text())
    for key in ("MODEL", "model", "UNET", "unet"):
        if isinstance(data, dict) and isinstance(data.get(key), dict) and "MODEL_CHANNELS" in data[key]:
            return data[key]
    if not isinstance(data, dict) or "MODEL_CHANNELS" not in data:
        raise ValueError(f"{path} holds no denoiser config (no MODEL_CHANNELS key)")
    return data


def run(args) -> int:
    from ..official import convert_official, paper_reference_config

    out = convert_official(args.ae, args.ikr, read_reference_config(args.ikr_config, paper_reference_config("ikr")),
                           args.ckg, read_reference_config(args.ckg_config, paper_reference_config("ckg")),
                           args.fusion, args.out)
    print(f"wrote {out} (autoencoder, ikr, ckg, fusion: safetensors + JSON, model.json)")
    return 0
