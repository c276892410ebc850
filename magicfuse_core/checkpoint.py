"""Checkpoint I/O: strict state-dict loading and our on-disk format.

A model is a folder: one `NAME.safetensors` + `NAME.json` per component
(autoencoder, ikr, ckg, fusion) and a `model.json` that names them and holds the
sampling settings. A component's JSON says what it is (`kind` + `config`), so a
checkpoint always builds the network it belongs to.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .models.autoencoder import Autoencoder, AutoencoderConfig
from .models.fusion import DEFAULT_RADIATION_MAP, RADIATION_MAPS, FusionConfig, FusionNet
from .models.fusion import PROFILES as FUSION_PROFILES
from .models.unet import ConditionalUNet, UNetConfig, unet_config
from .denoiser import EpsilonDenoiser
from .palette import DEFAULT_TAU, DEFAULT_THERMAL_CLASSES, class_ids
from .schedule import DDIMSchedule

FORMAT_VERSION = 1
COMPONENTS = ("autoencoder", "ikr", "ckg", "fusion")


def _preview(keys, n=8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Load every parameter or fail naming the offending keys; never a partial load."""
    expected = module.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in sorted(set(expected) & set(state_dict))
                  if tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {'; '.join(mismatched[:8])}")
    if problems:
        raise ValueError(f"{what} does not match the network: " + " | ".join(problems))
    module.load_state_dict(state_dict, strict=True)


def build_component(kind: str, config: dict) -> nn.Module:
    if kind == "autoencoder":
        return Autoencoder(AutoencoderConfig(**config))
    if kind == "unet":
        return ConditionalUNet(UNetConfig.from_dict(config))
    if kind == "fusion":
        return FusionNet(FusionConfig.from_dict(config))
    raise ValueError(f"unknown component kind {kind!r} (autoencoder | unet | fusion)")


def component_kind(module: nn.Module) -> str:
    for kind, cls in (("autoencoder", Autoencoder), ("unet", ConditionalUNet), ("fusion", FusionNet)):
        if isinstance(module, cls):
            return kind
    raise TypeError(f"not a MagicFuse component: {type(module).__name__}")


def save_component(module: nn.Module, folder: Path, name: str, dtype: torch.dtype | None = None) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in module.state_dict().items()}
    save_file(tensors, str(folder / f"{name}.safetensors"))
    meta = {"format_version": FORMAT_VERSION, "kind": component_kind(module), "config": module.config.to_dict()}
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_component(folder: Path, name: str, device: str | torch.device = "cpu") -> nn.Module:
    folder = Path(folder)
    cfg_path, weights_path = folder / f"{name}.json", folder / f"{name}.safetensors"
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"model component missing: {p}")
    try:
        meta = json.loads(cfg_path.read_text())
        kind, config = meta["kind"], meta["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{cfg_path} is not a MagicFuse component config ({exc})") from exc
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{cfg_path} has format_version {meta['format_version']}; this build reads <= {FORMAT_VERSION}")
    module = build_component(kind, config)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read weights {weights_path}: {exc}") from exc
    load_state_dict_strict(module, {k: v.float() for k, v in state.items()}, str(weights_path))
    return module.to(device).eval()


# How MagImg is decoded: "own" (its latent alone, as the paper) or "ikr" (in the IKR stream's tone:
# the decoder normalises with the statistics of decoding the IKR latent, `styled_decoder`). With the
# released decoder's InstanceNorm, "own" lets a region the radiation map mixed in re-tone the whole frame.
MAGIMG_TONES = ("own", "ikr")
# How the CKG image (the generated infrared) is decoded: "own" (its latent alone) or "reference" (in the tone
# of a real infrared frame of the training set, `MagicFuseModel.ckg_tone_latent`, picked by
# `python -m training.ckg_tone`). The released latent carries no absolute brightness (its encoder normalises
# every image), so decoded alone a generated latent takes whatever tone its sharpness implies: with few steps a
# smoother latent decodes far too bright for infrared (mean luma 58 against the real 22 on MSRS val).
CKG_TONES = ("own", "reference")
CKG_TONE_FILE = "ckg_tone.safetensors"


@dataclass
class MagicFuseModel:
    """All networks of MagicFuse plus the settings the sampler needs."""

    autoencoder: Autoencoder
    ikr: ConditionalUNet
    ckg: ConditionalUNet
    fusion: FusionNet
    schedule: DDIMSchedule = field(default_factory=DDIMSchedule)
    tau: float = DEFAULT_TAU
    thermal_classes: tuple[int, ...] = DEFAULT_THERMAL_CLASSES
    radiation_map: str = DEFAULT_RADIATION_MAP  # "hard" (the paper's) | "soft" (models/fusion.py)
    radiation_shift: float = 0.0  # added to the thermal classes' scores for the radiation map only (radiation_mask)
    magimg_tone: str = "own"  # MAGIMG_TONES
    info: dict = field(default_factory=dict)  # provenance: trained?, data, steps, ...
    # (1, latent_channels, h, w) autoencoder latent in [0, 1] whose decoding tone the CKG image takes; None: own
    ckg_tone_latent: torch.Tensor | None = None

    def __post_init__(self):
        if self.ckg_tone_latent is not None:
            self.ckg_tone_latent = check_ckg_tone_latent(self.ckg_tone_latent, self.autoencoder.config.latent_channels)

    @property
    def ckg_tone(self) -> str:
        return "own" if self.ckg_tone_latent is None else "reference"

    def modules(self) -> dict[str, nn.Module]:
        return {"autoencoder": self.autoencoder, "ikr": self.ikr, "ckg": self.ckg, "fusion": self.fusion}

    def to(self, device) -> "MagicFuseModel":
        for m in self.modules().values():
            m.to(device)
        if self.ckg_tone_latent is not None:
            self.ckg_tone_latent = self.ckg_tone_latent.to(device)
        return self

    @property
    def trained(self) -> bool:
        return bool(self.info.get("trained", False))

    def denoiser(self, name: str) -> EpsilonDenoiser:
        """Ψ ("ikr") or Φ ("ckg") as the sampler calls it, `(x, t) -> eps`: the conversion from
        what the net predicts (its config's `prediction`) uses this model's schedule, so a model
        always samples with the alpha table it records."""
        if name not in ("ikr", "ckg"):
            raise ValueError(f"denoisers are 'ikr' and 'ckg', got {name!r}")
        net = getattr(self, name)
        device = next(net.parameters()).device
        return EpsilonDenoiser(net, net.config.prediction, self.schedule.alphas_cumprod).to(device)


# Whole-model profiles: which component profiles go together.
MODEL_PROFILES = {
    "paper": dict(ae=AutoencoderConfig(), ikr="ikr_paper", ckg="ckg_paper", fusion="paper"),
    "like": dict(ae=AutoencoderConfig(), ikr="ikr_like", ckg="ckg_like", fusion="paper"),
    "tiny": dict(ae=AutoencoderConfig(channels=16, num_res_blocks=1), ikr="tiny", ckg="tiny", fusion="tiny"),
}


def random_model(profile: str = "tiny", seed: int = 0) -> MagicFuseModel:
    """Randomly initialised (untrained) networks of a named profile."""
    if profile not in MODEL_PROFILES:
        raise ValueError(f"unknown model profile {profile!r}; known: {', '.join(MODEL_PROFILES)}")
    p = MODEL_PROFILES[profile]
    torch.manual_seed(seed)
    return MagicFuseModel(
        autoencoder=Autoencoder(p["ae"]).eval(),
        ikr=ConditionalUNet(unet_config(p["ikr"])).eval(),
        ckg=ConditionalUNet(unet_config(p["ckg"])).eval(),
        fusion=FusionNet(FUSION_PROFILES[p["fusion"]]).eval(),
        info={"trained": False, "profile": profile, "description": f"random {profile} networks (seed {seed})"},
    )


def save_model(model: MagicFuseModel, folder: Path, dtype: torch.dtype | None = None) -> Path:
    folder = Path(folder)
    for name, module in model.modules().items():
        save_component(module, folder, name, dtype=dtype)
    s = model.schedule
    meta = {
        "format_version": FORMAT_VERSION,
        "components": {name: name for name in COMPONENTS},
        "schedule": {"num_train_timesteps": s.num_train_timesteps, "beta_start": s.beta_start,
                     "beta_end": s.beta_end, "beta_schedule": s.beta_schedule, "steps": s.num_inference_steps,
                     **({"timesteps": list(s.custom_timesteps)} if s.custom_timesteps else {})},
        "tau": model.tau,
        "thermal_classes": list(model.thermal_classes),
        "radiation_map": model.radiation_map,
        "radiation_shift": model.radiation_shift,
        "magimg_tone": model.magimg_tone,
        "ckg_tone": model.ckg_tone,
        "info": model.info,
    }
    tone_file = folder / CKG_TONE_FILE
    if model.ckg_tone_latent is not None:
        save_file({"latent": model.ckg_tone_latent.detach().float().cpu().contiguous()}, str(tone_file))
    elif tone_file.exists():
        tone_file.unlink()  # a stale reference must not outlive the setting
    (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def load_model(folder: Path, device: str | torch.device = "cpu") -> MagicFuseModel:
    folder = Path(folder)
    meta_path = folder / "model.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"not a MagicFuse model folder (no model.json): {folder}")
    try:
        meta = json.loads(meta_path.read_text())
        components = meta["components"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{meta_path} is not a MagicFuse model description ({exc})") from exc
    missing = [c for c in COMPONENTS if c not in components]
    if missing:
        raise ValueError(f"{meta_path} lacks components: {missing}")
    mods = {c: load_component(folder, components[c], device) for c in COMPONENTS}
    for c, kind in (("autoencoder", Autoencoder), ("ikr", ConditionalUNet), ("ckg", ConditionalUNet), ("fusion", FusionNet)):
        if not isinstance(mods[c], kind):
            raise ValueError(f"component {c!r} in {folder} is a {type(mods[c]).__name__}, expected {kind.__name__}")
    sch = meta.get("schedule", {})
    try:
        schedule = DDIMSchedule(sch.get("num_train_timesteps", 1000), sch.get("beta_start", 0.00085),
                                sch.get("beta_end", 0.012), sch.get("beta_schedule", "linear"), sch.get("steps", 25),
                                custom_timesteps=sch.get("timesteps"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{meta_path}: bad schedule {sch!r} ({exc})") from exc
    shift = check_radiation_shift(meta.get("radiation_shift", 0.0), meta_path)
    return MagicFuseModel(mods["autoencoder"], mods["ikr"], mods["ckg"], mods["fusion"], schedule,
                          tau=float(meta.get("tau", DEFAULT_TAU)),
                          thermal_classes=class_ids(meta.get("thermal_classes", DEFAULT_THERMAL_CLASSES)),
                          radiation_map=check_setting("radiation_map", meta.get("radiation_map", DEFAULT_RADIATION_MAP),
                                                      RADIATION_MAPS, meta_path),
                          radiation_shift=shift,
                          magimg_tone=check_setting("magimg_tone", meta.get("magimg_tone", "own"), MAGIMG_TONES, meta_path),
                          info=dict(meta.get("info", {})), ckg_tone_latent=load_ckg_tone(folder, meta, device))


def load_ckg_tone(folder: Path, meta: dict, device) -> torch.Tensor | None:
    """The reference latent of `ckg_tone: reference` (None for "own", the default)."""
    tone = check_setting("ckg_tone", meta.get("ckg_tone", "own"), CKG_TONES, folder / "model.json")
    if tone == "own":
        return None
    path = folder / CKG_TONE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder / 'model.json'} says ckg_tone: reference but {path} is missing")
    try:
        latent = load_file(str(path))["latent"]
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot read the CKG tone latent {path}: {exc}") from exc
    return latent.float().to(device)


def set_ckg_tone(folder: Path, latent: torch.Tensor | None, note: dict | None = None) -> MagicFuseModel:
    """Record (or with None remove) the reference infrared tone of the model folder's CKG image: writes
    ckg_tone.safetensors and model.json's `ckg_tone` (+ `info.ckg_tone`: where it came from), then loads the
    folder again."""
    folder = Path(folder)
    meta_path = folder / "model.json"
    meta = json.loads(meta_path.read_text())
    info = dict(meta.get("info", {}))
    if latent is None:
        meta["ckg_tone"] = "own"
        info.pop("ckg_tone", None)
        (folder / CKG_TONE_FILE).unlink(missing_ok=True)
    else:  # checked against the folder's autoencoder before anything is written
        channels = load_model(folder).autoencoder.config.latent_channels
        latent = check_ckg_tone_latent(latent.detach().cpu() if isinstance(latent, torch.Tensor) else latent, channels)
        save_file({"latent": latent.contiguous()}, str(folder / CKG_TONE_FILE))
        meta["ckg_tone"] = "reference"
        info["ckg_tone"] = dict(note or {})
    meta["info"] = info
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return load_model(folder)


def check_ckg_tone_latent(latent: torch.Tensor, latent_channels: int) -> torch.Tensor:
    if not isinstance(latent, torch.Tensor) or latent.dim() != 4 or latent.shape[:2] != (1, latent_channels) \
            or min(latent.shape[-2:]) < 1 or not torch.isfinite(latent).all():
        shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
        raise ValueError(f"the CKG tone latent must be a finite (1, {latent_channels}, h, w) tensor, got {shape}")
    return latent.float()


def check_radiation_shift(value, where) -> float:
    """radiation_shift as a float; a string, a bool, NaN or infinity is refused, naming where it came from."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: radiation_shift must be a finite number, got {value!r}")
    return float(value)


def check_setting(name: str, value, choices, where) -> str:
    if value not in choices:
        raise ValueError(f"{where}: {name} must be one of {', '.join(choices)}, got {value!r}")
    return value
