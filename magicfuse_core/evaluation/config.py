"""What one `magicfuse eval` run is given (`EvalConfig`) and the checks made before any frame is read."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .baselines import BASELINES

# A result with this name is a generated infrared image (the CKG stream output).
GENERATED_IR_NAME = "ckg"


@dataclass
class EvalConfig:
    """Everything one evaluation run needs. Paths are folders unless noted."""

    vis: Path                                   # input visible frames (what a method sees)
    ir: Path                                    # real infrared frames (source B)
    out: Path                                   # output folder (created)
    clean_vis: Path | None = None               # clean visible frames: source A when given
    results: dict[str, Path] = field(default_factory=dict)  # method name -> folder of outputs
    generated_ir: tuple[str, ...] = ()          # result names that are generated IR (besides "ckg")
    seg: dict[str, Path] = field(default_factory=dict)      # name -> folder of MFNet id PNGs
    names_file: Path | None = None              # file: one stem per line; default: all stems of `vis`
    labels: Path | None = None                  # MFNet label PNGs (ids 0..8, 255 ignored)
    det: Path | None = None                     # YOLO txt boxes (or a folder with infrared/ inside)
    max_grid: int = 6                           # sample frames shown in the report
    jobs: int = 1                               # worker processes for scoring
    progress: bool = True                       # tqdm bar on stderr
    command_line: str | None = None             # shown in the report's run settings

    def generated_ir_names(self) -> tuple[str, ...]:
        """Result names scored as generated infrared, in result order."""
        flagged = set(self.generated_ir) | {GENERATED_IR_NAME}
        return tuple(name for name in self.results if name in flagged)

    def fusion_result_names(self) -> tuple[str, ...]:
        """Result names scored with the fusion metrics (all but generated IR)."""
        gen = set(self.generated_ir_names())
        return tuple(name for name in self.results if name not in gen)


def validate_config(config: EvalConfig) -> None:
    """Raise ValueError for inconsistent options (before any frame is read)."""
    for name in config.results:
        if name in BASELINES:
            raise ValueError(f"result name {name!r} is reserved for a baseline ({', '.join(BASELINES)})")
        if not name or "=" in name:
            raise ValueError(f"bad result name {name!r}")
    unknown = [n for n in config.generated_ir if n not in config.results]
    if unknown:
        raise ValueError(f"--generated-ir names no --result: {', '.join(unknown)}")
    if config.seg and not (config.labels or config.det):
        raise ValueError("--seg needs --labels (mIoU) or --det (box proxy) to be scored against")
    if config.max_grid < 0 or config.jobs < 1:
        raise ValueError("--max-grid must be >= 0 and --jobs >= 1")
