"""Fixtures every test group uses. Each group (core/, ros/, training/) has its own conftest.py
for what only it needs; tests that read ../shared skip with a reason when it is absent."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks gain nothing from a second thread, and on a busy CI machine the
    intra-op thread barriers cost more than the work: run a module single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
