"""Fixtures of the core tests: the reference implementation's released weights and parity fixtures."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

OFFICIAL = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "official"


@pytest.fixture(scope="session")
def official_dir() -> Path:
    if not (OFFICIAL / "meta.json").is_file():
        pytest.skip(f"reference fixtures not found at {OFFICIAL} (../shared sits beside the repository in CI)")
    return OFFICIAL


@pytest.fixture(scope="session")
def official_meta(official_dir) -> dict:
    return json.loads((official_dir / "meta.json").read_text())
