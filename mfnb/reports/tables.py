"""Reading one profile's result tables, ``results/<profile>/tables/``, the only input of a report."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from mfnb.core import paths


def results_root() -> Path:
    """``$MFNB_RESULTS`` or ``<project>/results``, as :func:`mfnb.core.paths.results_dir` resolves it, but without
    creating a profile's folder (a report of a profile that has none must say so, not make one)."""
    return Path(os.environ["MFNB_RESULTS"]) if os.environ.get("MFNB_RESULTS") else paths.project_root() / "results"


class Tables:
    """One profile's tables folder; a table that is not there reads as None, so a report can say it is missing."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def csv(self, name: str) -> pd.DataFrame | None:
        path = self.folder / f"{name}.csv"
        if not path.is_file():
            return None
        # round_trip: the floats exactly as written; only an empty field is missing (text such as "n/a" stays)
        return pd.read_csv(path, float_precision="round_trip", keep_default_na=False, na_values=[""])

    def json(self, name: str) -> Any:
        path = self.folder / f"{name}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def has(self, name: str) -> bool:
        return (self.folder / f"{name}.csv").is_file()

    def notebooks(self) -> list[str]:
        """The notebook prefixes ("01", "02", ...) that have at least one table here."""
        found = {m.group(1) for p in self.folder.glob("*") if (m := re.match(r"(\d\d)_", p.name))}
        return sorted(found)
