"""Evaluate models against each other: sample responses (cached on disk), judge pairs, summarise.

The same three steps serve Table 1 (fidelity ladder), the validation checks of Algorithm 2 and every
test-set comparison; responses are cached by world, role, prompts, sampling and seed, verdicts by the
judge's own cache, so rerunning a notebook regenerates nothing it already has.
"""
from __future__ import annotations

import hashlib
import json
from typing import Sequence

from mfnb import paths, stats
from mfnb.atomic import write_json
from mfnb.models import SamplingParams, generate


def _responses_file(world, role: str, prompts: Sequence[str], sampling: SamplingParams, seed: int):
    blob = json.dumps({"world": world.key, "role": role, "sampling": sampling.model_dump(), "seed": seed,
                       "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest()}, sort_keys=True)
    return paths.cache_dir("responses") / f"{role}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"


def role_responses(world, role: str, prompts: Sequence[str], sampling: SamplingParams, seed: int = 0,
                   model=None, tokenizer=None) -> list[str]:
    """One sampled response per prompt from one of the world's roles, cached on disk."""
    target = _responses_file(world, role, prompts, sampling, seed)
    if target.is_file():
        return json.loads(target.read_text())["responses"]
    if model is None:
        model, tokenizer = world.load(role)
    responses = generate(model, tokenizer, list(prompts), sampling, seed=seed, desc=f"sampling {role}")
    write_json(target, {"role": role, "seed": seed, "responses": responses})
    return responses


def win_rate_row(judge, prompts: Sequence[str], candidate: Sequence[str], baseline: Sequence[str],
                 delta: float = 0.05) -> dict:
    """WinFreq of ``candidate`` over ``baseline`` with counts, Lemma 1's radius and an exact interval.

    Failed judgements are excluded from n and counted in ``failed``; they are never scored as losses.
    """
    outcomes = judge.compare(list(prompts), list(candidate), list(baseline))
    summary = stats.summarize(outcomes)
    row = {"n": summary.n, "wins": summary.wins, "ties": summary.ties, "losses": summary.losses,
           "failed": summary.failed, "win_rate": summary.win_freq}
    if summary.n:
        row["hoeffding_radius"] = float(stats.hoeffding_radius(summary.n, delta))
        row["exact_low"], row["exact_high"] = summary.interval(delta, "exact_ties")
    return row


def mean_quality(world, prompts: Sequence[str], responses: Sequence[str]) -> float:
    """Mean known quality of responses (only worlds with a known quality function have one)."""
    scores = [world.quality(p, r) for p, r in zip(prompts, responses)]
    return sum(scores) / len(scores) if scores else float("nan")
