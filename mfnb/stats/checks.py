"""Argument checks shared by the statistics: each names the argument and the value it refused."""
from __future__ import annotations

import numpy as np


def check_delta(delta) -> np.ndarray:
    d = np.asarray(delta, dtype=float)
    if np.any(~(d > 0) | ~(d < 1)):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return d


def check_n(n, minimum: int = 1) -> np.ndarray:
    arr = np.asarray(n, dtype=float)
    if np.any(~(arr >= minimum)):
        raise ValueError(f"n must be >= {minimum}, got {n!r}")
    return arr


def scalar_or_array(x):
    x = np.asarray(x)
    return x.item() if x.ndim == 0 else x


