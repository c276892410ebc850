"""Fixtures only the ROS tests use."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def client(request):
    """A ROS client node on this test process's domain, one per test module and named after it."""
    from ros_harness import DOMAIN, RosClient  # needs rclpy: the modules that use `client` skip without it

    c = RosClient(f"magicfuse_{request.module.__name__}_client_{os.getpid()}", DOMAIN)
    yield c
    c.close()
