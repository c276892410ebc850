"""Training configs: a YAML file plus "a.b.c=value" overrides from the command line.

Relative paths in a config are relative to the repository root (`repo_path`).
"""
from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

# What both phases read from a config's top level and `data` section, with the value when it is unset.
RUN_DEFAULTS = {"seed": 0, "threads": None, "device": "auto", "ddp_timeout_min": None, "tensorboard": True}
DATA_DEFAULTS = {"latent_cache": None, "num_workers": 0, "split": "train", "scale": None, "latent_crop": None}


def with_defaults(section: dict, defaults: dict) -> dict:
    """`defaults` overridden by what the config section sets (keys the defaults lack pass through)."""
    return {**defaults, **section}


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """YAML config -> dict; `overrides` are "a.b.c=value" strings (value parsed as YAML).

    The dict also carries `_config_path` (the file it came from).
    """
    cfg = yaml.safe_load(Path(path).read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override must look like key.sub=value, got {item!r}")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    cfg["_config_path"] = str(path)
    return cfg


def repo_path(p: str | Path) -> Path:
    """A config path: absolute as given, relative to the repository root otherwise."""
    p = Path(p)
    return p if p.is_absolute() else REPO / p
