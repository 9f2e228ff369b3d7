"""Shared fixtures: the default tiny world (built once, then cached like any user's run)."""
from __future__ import annotations

import pytest

from mfnb.worlds.tiny import TinyWorld


@pytest.fixture(scope="session")
def tiny_world() -> TinyWorld:
    world = TinyWorld()
    world.build(show_progress=False)
    return world
