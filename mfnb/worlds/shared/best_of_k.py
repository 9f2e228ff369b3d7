"""Fidelity experts on a real LLM: best-of-k sampling under a checker, with a real cost that a ledger can charge.

An expert of fidelity k draws k samples from the model for a prompt and answers with the one the checker
scores highest (ties: the higher second score, e.g. IFEval's loose one, then the earliest sample). Sample j
of a prompt has its own seed, :func:`mfnb.models.engines.candidate_seed` (seed, prompt, j), so best-of-4 reuses
best-of-16's first four samples: the experts of a ladder are nested, and the whole ladder costs its largest
k per prompt to build. Every sample is stored once (SQLite, one file per configuration: model, engine,
sampling, seed, chat template) with the tokens and seconds it took, committed after each chunk, so a killed
run loses at most one chunk and a rerun generates nothing it has. An expert's answer reports the cost of
all k samples it needed, whether they came from the store or not: what the paper's ledger charges.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from mfnb.core import paths
from mfnb.core.progress import progress as progress_bar
from mfnb.models.engines import candidate_seed

STORE_VERSION = 1


@dataclass(frozen=True)
class Candidate:
    """Sample ``j`` of a prompt: its text, the tokens generated (stop token included) and seconds spent."""

    j: int
    text: str
    tokens: int
    seconds: float


@dataclass(frozen=True)
class Choice:
    """An expert's answer: the chosen sample, its scores, and the cost of the k samples behind it."""

    prompt: str
    text: str
    index: int
    k: int
    score: tuple
    tokens: int
    seconds: float


def store_key(**config: Any) -> str:
    """A short hash of everything that changes the samples (model identity, engine, sampling, seed, template)."""
    blob = json.dumps({"version": STORE_VERSION, **config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class CandidateStore:
    """Samples per (prompt, j) in one SQLite file; the configuration it was made with is stored and checked."""

    def __init__(self, path: str | Path, config: dict[str, Any]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.config = json.loads(json.dumps(config, sort_keys=True, default=str))
        self._db = sqlite3.connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (config TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS candidates (prompt TEXT, j INTEGER, text TEXT, tokens INTEGER, "
                         "seconds REAL, PRIMARY KEY (prompt, j))")
        row = self._db.execute("SELECT config FROM meta").fetchone()
        if row is None:
            with self._db:
                self._db.execute("INSERT INTO meta VALUES (?)", (json.dumps(self.config, sort_keys=True),))
        elif json.loads(row[0]) != self.config:
            raise ValueError(f"candidate store {self.path} was made with another configuration: "
                             f"{json.loads(row[0])} != {self.config}")

    def get(self, prompts: Sequence[str], k: int) -> dict[str, dict[int, Candidate]]:
        out: dict[str, dict[int, Candidate]] = {p: {} for p in prompts}
        unique = list(out)
        for i in range(0, len(unique), 500):
            chunk = unique[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for prompt, j, text, tokens, seconds in self._db.execute(
                    f"SELECT prompt, j, text, tokens, seconds FROM candidates WHERE j < ? AND prompt IN ({marks})",
                    (k, *chunk)):
                out[prompt][j] = Candidate(j, text, tokens, seconds)
        return out

    def put(self, rows: Sequence[tuple[str, Candidate]]) -> None:
        with self._db:  # one transaction: a kill loses this chunk at most
            self._db.executemany("INSERT OR REPLACE INTO candidates VALUES (?, ?, ?, ?, ?)",
                                 [(p, c.j, c.text, c.tokens, c.seconds) for p, c in rows])

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def chat_prompt(tokenizer, prompt: str) -> str:
    """The prompt as the model's chat template renders a single user turn, ready for generation."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


class BestOfK:
    """Samples of one model (through an engine), stored; best-of-k answers chosen by ``score``.

    ``score(prompt, response)`` returns a tuple compared lexicographically (higher is better), e.g. IFEval's
    (strict, loose) fractions. ``model_id`` names the sampled weights in the store's key (e.g. the GGUF's
    hash, or a LoRA adapter's folder and fingerprint).
    """

    def __init__(self, engine, tokenizer, score: Callable[[str, str], tuple], sampling, *, seed: int = 0,
                 model_id: str, use_chat_template: bool = True, cache_root: str | Path | None = None,
                 chunk: int = 256):
        self.engine, self.tokenizer, self.score, self.sampling, self.seed = engine, tokenizer, score, sampling, seed
        self.chunk, self.use_chat_template = chunk, use_chat_template
        self.config = {"model": model_id, "engine": getattr(engine, "name", type(engine).__name__),
                       "engine_dtype": getattr(engine, "dtype", None), "sampling": sampling.model_dump(
                           exclude={"batch_size"}), "seed": seed,
                       "template": hashlib.sha256(str(getattr(tokenizer, "chat_template", "")).encode()).hexdigest()[:16]
                       if use_chat_template else None}
        root = Path(cache_root) if cache_root else paths.cache_dir("candidates")
        self.store = CandidateStore(root / f"{store_key(**self.config)}.sqlite", self.config)

    def candidates(self, prompts: Sequence[str], k: int, *, show_progress: bool = False) -> list[list[Candidate]]:
        """The first ``k`` samples of each prompt, generating only those not stored yet."""
        have = self.store.get(prompts, k)
        missing = [(p, j) for p in dict.fromkeys(prompts) for j in range(k) if j not in have[p]]
        bar = progress_bar(total=len(missing), desc=f"best-of-{k} samples",
                           disable=not show_progress or not missing, leave=False)
        for i in range(0, len(missing), self.chunk):
            part = missing[i:i + self.chunk]
            texts = [chat_prompt(self.tokenizer, p) if self.use_chat_template else p for p, _ in part]
            out = self.engine.generate(texts, self.sampling, seeds=[candidate_seed(self.seed, p, j) for p, j in part])
            per_token = out.seconds / max(out.tokens, 1)  # a batch's time, shared by its rows' token counts
            rows = [(p, Candidate(j, text, n, n * per_token))
                    for (p, j), text, n in zip(part, out.texts, out.new_tokens)]
            self.store.put(rows)
            for p, c in rows:
                have[p][c.j] = c
            bar.update(len(part))
        bar.close()
        return [[have[p][j] for j in range(k)] for p in prompts]

    def respond(self, prompts: Sequence[str], k: int, *, show_progress: bool = False) -> list[Choice]:
        """Best-of-``k`` answers, with the tokens and seconds of all k samples each one needed."""
        out = []
        for prompt, cands in zip(prompts, self.candidates(prompts, k, show_progress=show_progress)):
            scored = [(tuple(self.score(prompt, c.text)), -c.j, c) for c in cands]
            best_score, _, best = max(scored, key=lambda s: (s[0], s[1]))
            out.append(Choice(prompt, best.text, best.j, k, best_score, sum(c.tokens for c in cands),
                              sum(c.seconds for c in cands)))
        return out
