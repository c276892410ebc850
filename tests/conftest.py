"""Shared test fixtures: where ../shared lives, and skipping cleanly without it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OFFICIAL = SHARED / "fixtures" / "official"


@pytest.fixture(scope="session")
def official_dir() -> Path:
    if not (OFFICIAL / "meta.json").is_file():
        pytest.skip(f"reference fixtures not found at {OFFICIAL} (../shared sits beside the repository in CI)")
    return OFFICIAL


@pytest.fixture(scope="session")
def official_meta(official_dir) -> dict:
    return json.loads((official_dir / "meta.json").read_text())


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks gain nothing from a second thread, and on a busy CI machine the
    intra-op thread barriers cost more than the work: run a module single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
