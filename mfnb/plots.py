"""Figures for the notebooks (seaborn/matplotlib), each saved as PNG and PDF under results/<profile>/figures."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "ipympl")) else None
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from mfnb import paths  # noqa: E402
from mfnb.atomic import atomic_path  # noqa: E402

sns.set_theme(context="notebook", style="whitegrid")


def save_figure(fig: plt.Figure, profile: str, name: str) -> list[Path]:
    """Write ``fig`` as ``results/<profile>/figures/<name>.png`` and ``.pdf`` (atomically)."""
    folder = paths.results_dir(profile, "figures")
    written = []
    for ext in ("png", "pdf"):
        target = folder / f"{name}.{ext}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight", dpi=150)
        written.append(target)
    return written
