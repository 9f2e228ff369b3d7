"""Where a multi-fidelity run lives, so that a crash or a kill loses nothing finished.

Each run is a folder with ``state.json`` (the commit point, rewritten atomically after every look, with the
Python/numpy/torch RNG states), ``journal/`` (what was bought: training batches, validation responses;
written before they are used) and ``adapters/`` (LoRA weights after every iteration). Every random choice is
seeded by :func:`derive_seed` (seed, purpose, t) and the policy is reloaded from its saved adapter after every
iteration, so a run killed at any point continues from its last commit, re-buys nothing that reached the
journal, and ends with the same trace and ledger as an uninterrupted run. :class:`RunResult` reads a
finished run back.
"""
from __future__ import annotations

import base64
import hashlib
import json
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from mfnb.core.atomic import write_json
from mfnb.multifidelity.config import RunConfig
from mfnb.multifidelity.judging import win_freq
from mfnb.multifidelity.ledger import ledger_frame, paper_lambda

INITIAL_VALIDATION = "validation_initial_student"  # the shared journal of model 0's validation responses
STATE_VERSION = 2  # 2: looks record both tie conventions and the value that decided


def derive_seed(seed: int, *parts: Any) -> int:
    """A 31-bit seed from (seed, purpose, iteration, ...): the same on every run and every resume."""
    blob = json.dumps([seed, *parts], default=str).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") % (2**31 - 1)


class RunStore:
    """One run's folder: ``state.json`` (commit point), ``journal/`` (purchases), ``adapters/``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.rglob(".*.tmp"):  # leftovers of a write killed half-way
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    def load_state(self) -> dict | None:
        return json.loads(self.state_path.read_text()) if self.state_path.is_file() else None

    def resume(self, identity: dict) -> dict | None:
        """The committed state of the run with this identity; None when nothing is committed yet."""
        state = self.load_state()
        if state is not None and state["identity"] != identity:
            raise ValueError(f"{self.folder} holds a run with other parameters; use another runs_dir or "
                             "delete that folder")
        return state

    def commit(self, state: dict) -> None:
        """Write ``state`` (with the current RNG states) as the new commit point, atomically."""
        state["rng"] = rng_state()
        write_json(self.state_path, state)

    def journal_path(self, name: str) -> Path:
        return self.folder / "journal" / f"{name}.json"

    def read_journal(self, name: str) -> dict | None:
        path = self.journal_path(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def write_journal(self, name: str, obj: dict) -> None:
        write_json(self.journal_path(name), obj)

    def journaled(self, name: str, make: Callable[[], dict], valid: Callable[[dict], bool] | None = None) -> dict:
        """The journal entry ``name``; made and written (before anyone uses it) when missing or not ``valid``."""
        data = self.read_journal(name)
        if data is None or (valid is not None and not valid(data)):
            data = make()
            self.write_journal(name, data)
        return data

    def adapter_path(self, t: int) -> Path:
        return self.folder / "adapters" / f"t{t:04d}"


def rng_state() -> str:
    import torch

    blob = (random.getstate(), np.random.get_state(), torch.get_rng_state().numpy().tobytes())
    return base64.b64encode(pickle.dumps(blob)).decode()


def restore_rng(text: str) -> None:
    import torch

    py, npy, th = pickle.loads(base64.b64decode(text))
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(torch.frombuffer(bytearray(th), dtype=torch.uint8))


@dataclass
class RunResult:
    """A finished run, read back from its committed state."""

    name: str
    mode: str
    plan: list[int]
    config: RunConfig
    folder: Path
    state: dict

    @property
    def history(self) -> pd.DataFrame:
        """One row per look (validation WinFreq of model t against the fidelity being trained)."""
        return pd.DataFrame(self.state["history"])

    @property
    def iterations(self) -> pd.DataFrame:
        return pd.DataFrame(self.state["iterations"])

    @property
    def evals(self) -> pd.DataFrame:
        """Every validation judgement set: model t against expert m (looks and monitoring)."""
        rows = []
        for t, per in self.state["evals"].items():
            for m, c in per.items():
                rows.append({"run": self.name, "t": int(t), "fidelity": int(m), **c, "win_freq": win_freq(c)})
        return pd.DataFrame(rows).sort_values(["t", "fidelity"]).reset_index(drop=True)

    @property
    def ledger(self) -> pd.DataFrame:
        return ledger_frame(self.state["ledger"])

    @property
    def stop_reason(self) -> str:
        return self.state["stop_reason"]

    @property
    def best(self) -> dict | None:
        return self.state["best"]

    @property
    def exits(self) -> dict[int, dict]:
        return {int(m): v for m, v in self.state["exits"].items()}

    @property
    def timings(self) -> dict[str, float]:
        return dict(self.state["timings"])

    def expert_cost(self, through_fidelity: int | None = None) -> float:
        return paper_lambda(self.state["ledger"], through_fidelity)

    def adapter(self, t: int) -> Path:
        return RunStore(self.folder).adapter_path(t)

    def candidate_name(self, t: int) -> str:
        return self.state["names"][str(t)]
