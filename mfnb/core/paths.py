"""Where things live: the project root, parameter files, results and the model cache."""
from __future__ import annotations

import os
from pathlib import Path


def project_root(start: Path | None = None) -> Path:
    """The folder holding ``params/`` and ``notebooks/``; found by walking up from ``start`` (or cwd)."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "params").is_dir() and (folder / "notebooks").is_dir():
            return folder
    package_parent = Path(__file__).resolve().parents[1]
    if (package_parent / "params").is_dir():
        return package_parent
    return start


def params_file(notebook: str, profile: str) -> Path:
    return project_root() / "params" / profile / f"{notebook}.yaml"


def results_dir(profile: str, kind: str | None = None) -> Path:
    """``results/<profile>[/<kind>]`` (kind: tables, figures, notebooks, runs), created on demand.

    ``$MFNB_RESULTS`` replaces ``<project root>/results`` (tests write there, not over committed results).
    """
    root = Path(os.environ["MFNB_RESULTS"]) if os.environ.get("MFNB_RESULTS") else project_root() / "results"
    folder = root / profile
    if kind:
        folder = folder / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cache_dir(*parts: str) -> Path:
    """Built models and judge caches: ``$MFNB_CACHE`` or ``~/.cache/mfnb``. Never inside results/."""
    root = Path(os.environ.get("MFNB_CACHE") or Path.home() / ".cache" / "mfnb")
    folder = root.joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
