"""Where the bundled model and demo frames live, in a checkout or an install."""
from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "magicfuse_ros"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _share_dirs() -> list[Path]:
    dirs = []
    try:  # a colcon / ROS install
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        try:
            dirs.append(Path(get_package_share_directory(PACKAGE)))
        except (PackageNotFoundError, LookupError, ValueError, OSError):  # OSError: no AMENT_PREFIX_PATH
            pass
    except ImportError:
        pass
    dirs.append(Path(sys.prefix) / "share" / PACKAGE)  # a pip install of the data_files
    return dirs


def find_data(relative: str) -> Path | None:
    """First existing `relative` path in the checkout, then the installed share dirs."""
    for base in [REPO_ROOT, *_share_dirs()]:
        candidate = base / relative
        if candidate.exists():
            return candidate
    return None


def default_model_dir() -> Path | None:
    """$MAGICFUSE_MODEL, else the bundled `models/demo`; None if neither exists."""
    env = os.environ.get("MAGICFUSE_MODEL")
    if env:
        return Path(env)
    found = find_data("models/demo")
    return found if found is not None and (found / "model.json").is_file() else None
