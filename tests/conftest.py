"""Shared fixtures: the default tiny world (built once, then cached like any user's run)."""
from __future__ import annotations

import pytest
import torch

from mfnb.worlds.tiny import TinyWorld

# The tests use tiny models, which run many times faster on one intra-op thread on a small shared CPU.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_world() -> TinyWorld:
    world = TinyWorld()
    world.build(show_progress=False)
    return world
