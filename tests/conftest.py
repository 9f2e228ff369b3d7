"""Shared fixtures: the default tiny world (built once, then cached like any user's run)."""
from __future__ import annotations

import pytest
import torch

from mfnb.core import paths
from mfnb.worlds.tiny.world import TinyWorld

# The tests use tiny models, which run many times faster on one intra-op thread on a small shared CPU.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_world() -> TinyWorld:
    world = TinyWorld()
    world.build(show_progress=False)
    return world


def _results_state(folder):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def committed_results_untouched():
    """Tests write results under $MFNB_RESULTS (a tmp folder), never over the project's results/."""
    folder = paths.project_root() / "results"
    before = _results_state(folder)
    yield
    after = _results_state(folder)
    changed = sorted(str(p.relative_to(folder)) for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, f"tests changed the project's results/: {changed[:10]}"


@pytest.fixture(autouse=True)
def no_project_vllm_venv(monkeypatch):
    """A .venv-vllm that `make vllm-venv` built on this machine is found without params (engine: auto); the
    tests see the machine CI sees, without one. The opt-in vLLM tests name theirs (MFNB_VLLM_PYTHON)."""
    from mfnb.models.engines import vllm_server

    monkeypatch.setattr(vllm_server, "PROJECT_VENV", "no-such-venv/bin/python")
