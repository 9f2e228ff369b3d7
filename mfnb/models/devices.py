"""Where models live while they wait: residents that step off the GPU while launched training processes need
it, and the intra-op thread count small models run best with."""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator

import torch

_RESIDENTS: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()


def resident(model):
    """Register a model this process keeps loaded across training steps (a reward model, say), so that
    :func:`off_accelerator` frees its GPU memory while launched training processes need it; returns it."""
    _RESIDENTS.add(model)
    return model


@contextmanager
def off_accelerator(*models) -> Iterator[None]:
    """Within the block ``models`` and every :func:`resident` model wait in host memory (their GPU memory freed
    for training processes launched meanwhile), then go back to their devices. Models on the CPU stay put."""
    moved = []
    for model in dict.fromkeys([*models, *list(_RESIDENTS)]):  # each once, in order
        param = next(model.parameters(), None)
        if param is not None and param.device.type != "cpu":
            moved.append((model, param.device))
            model.to("cpu")
    if moved and torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        yield
    finally:
        for model, device in moved:
            model.to(device)


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op torch threads (None: torch's default), restoring the count after.

    Tiny models do so little work per op that on 2 shared CPU cores two threads ran SFT, DPO and
    generation 5-20x slower than one (measured: benchmarks and notebooks print their timings); the
    numbers computed are the same. Real LLMs on many cores want the default.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
