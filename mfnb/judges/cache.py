"""Persistent cache: :class:`CachedJudge` keeps any judge's verdicts in SQLite."""
from __future__ import annotations

import os
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from mfnb.core import paths
from mfnb.judges.oracle import OracleJudge
from mfnb.judges.protocol import (JudgeError, JudgeStats, Outcome, PairwiseJudge, Triple, _batches, _digest,
                                  _identity_json)


class CachedJudge(PairwiseJudge):
    """A judge whose verdicts persist in SQLite (WAL, one transaction per batch).

    ``path`` defaults to ``paths.cache_dir("judges") / "verdicts.sqlite"``; one file holds any number of
    judges (rows are keyed by judge identity).  ``stats`` reports ``cache_hits`` and the wrapped judge's
    new ``calls``/``cost``; a fully cached rerun makes zero calls.  The wrapped judge is ``inner``; its
    other attributes (``score``, ``model``, ...) are reachable through the wrapper.
    """

    def __init__(self, judge: PairwiseJudge, path: str | os.PathLike | None = None):
        if not isinstance(judge, PairwiseJudge):
            raise TypeError(f"CachedJudge: expected a PairwiseJudge, got {type(judge).__name__}")
        super().__init__(seed=judge.seed, cost_per_call=0.0)
        self.inner = judge
        if isinstance(judge, OracleJudge) and "<" in judge.name:
            warnings.warn(f"CachedJudge: the oracle's quality function is named {judge.name!r}; two different "
                          "lambdas/local functions would share cache rows. Pass OracleJudge(name=...).",
                          stacklevel=2)
        self.path = Path(path) if path is not None else paths.cache_dir("judges") / "verdicts.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=60.0, check_same_thread=False)  # sqlite serializes
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        with self._conn:
            self._conn.execute("CREATE TABLE IF NOT EXISTS judges (judge_id TEXT PRIMARY KEY, identity TEXT NOT NULL)")
            self._conn.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, judge_id TEXT NOT NULL, "
                               "outcome TEXT NOT NULL, created REAL NOT NULL)")
            self._conn.execute("INSERT OR IGNORE INTO judges VALUES (?, ?)",
                               (self.inner.judge_id, _identity_json(self.inner.identity())))

    # the wrapped judge decides verdicts, order and identity
    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def set_query_view(self, view, name: str | None = None) -> None:
        self.inner.set_query_view(view, name)
        with self._conn:
            self._conn.execute("INSERT OR IGNORE INTO judges VALUES (?, ?)",
                               (self.inner.judge_id, _identity_json(self.inner.identity())))

    def _swap(self, prompt: str, a: str, b: str) -> bool:
        return self.inner._swap(prompt, a, b)

    @property
    def order_symmetric(self) -> bool:
        return self.inner.order_symmetric

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"CachedJudge({self.inner!r}, path={str(self.path)!r})"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "CachedJudge":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        """Cached verdicts of this judge."""
        return self._conn.execute("SELECT COUNT(*) FROM verdicts WHERE judge_id = ?", (self.inner.judge_id,)).fetchone()[0]

    def _key(self, prompt: str, a: str, b: str, judge_id: str) -> str:
        return _digest(judge_id, prompt, a, b).hex()

    def _lookup(self, keys: Sequence[str]) -> dict[str, Outcome]:
        found: dict[str, Outcome] = {}
        unique = list(dict.fromkeys(keys))
        for chunk in _batches(unique, 500):
            marks = ",".join("?" * len(chunk))
            for key, outcome in self._conn.execute(f"SELECT key, outcome FROM verdicts WHERE key IN ({marks})", chunk):
                found[key] = Outcome(outcome)
        return found

    def _store(self, batch: Sequence[Triple], verdicts: list[Outcome]) -> None:
        judge_id, now = self.inner.judge_id, time.time()
        rows = [(self._key(p, a, b, judge_id), judge_id, v.value, now)
                for (p, a, b), v in zip(batch, verdicts) if v is not Outcome.FAILED]
        with self._conn:  # one transaction per batch
            self._conn.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?)", rows)

    def _run(self, shown: Sequence[Triple], on_batch=None) -> list[Outcome]:
        if self._conn is None:
            raise JudgeError(f"CachedJudge: cache {self.path} is closed")
        judge_id = self.inner.judge_id
        keys = [self._key(p, a, b, judge_id) for p, a, b in shown]
        found = self._lookup(keys)
        if self.inner.order_symmetric:
            missing = [i for i, k in enumerate(keys) if k not in found]
            rkeys = {i: self._key(p, b, a, judge_id) for i, (p, a, b) in ((i, shown[i]) for i in missing)}
            rfound = self._lookup(list(rkeys.values()))
            for i, rk in rkeys.items():
                if rk in rfound:
                    found[keys[i]] = rfound[rk].flipped()
        todo: dict[str, Triple] = {}
        for k, t in zip(keys, shown):
            if k not in found and k not in todo:
                todo[k] = t
        self.stats.cache_hits += sum(k in found for k in keys)
        if todo:
            before = JudgeStats(**self.inner.stats.as_dict())
            try:
                verdicts = self.inner._run(list(todo.values()), on_batch=self._store)
            finally:
                self.stats._add(self.inner.stats, before)
            for k, v in zip(todo, verdicts):
                found[k] = v
        return [found[k] for k in keys]
