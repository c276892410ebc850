"""Fixtures of the training tests: a tiny dataset made once per module, and a work folder that sees it."""
from __future__ import annotations

from pathlib import Path

import pytest

from training_data import make_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train") / "data")


@pytest.fixture()
def workdir(tmp_path, data_root) -> Path:
    (tmp_path / "data").symlink_to(data_root)
    return tmp_path
