"""Evaluate models against each other: sample responses (cached on disk), judge pairs, summarise.

The same three steps serve Table 1 (:mod:`mfnb.ladder`), the validation checks of Algorithm 2 and every
test-set comparison; responses come from ``world.respond`` (any world, see :mod:`mfnb.worlds`) and are
cached by world, role, prompts, sampling and seed, verdicts by the judge's own cache, so rerunning a
notebook regenerates nothing it already has.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from mfnb import stats
from mfnb.core import paths
from mfnb.core.atomic import write_json
from mfnb.judges import make_judge
from mfnb.models import SamplingParams
from mfnb.worlds import has, require


def _responses_file(world, role: str, prompts: Sequence[str], sampling: SamplingParams, seed: int):
    blob = json.dumps({"world": world.key, "role": role, "sampling": sampling.model_dump(), "seed": seed,
                       "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest()}, sort_keys=True)
    return paths.cache_dir("responses") / f"{role}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"


def role_responses(world, role: str, prompts: Sequence[str], sampling: SamplingParams, seed: int = 0) -> list[str]:
    """One response per prompt from one of the world's roles (``world.respond``), cached on disk."""
    target = _responses_file(world, role, prompts, sampling, seed)
    if target.is_file():
        return json.loads(target.read_text())["responses"]
    responses = world.respond(role, list(prompts), sampling, seed, show_progress=True)
    write_json(target, {"role": role, "seed": seed, "responses": responses})
    return responses


def win_rate_row(judge, prompts: Sequence[str], candidate: Sequence[str], baseline: Sequence[str],
                 delta: float = 0.05) -> dict:
    """The win rate of ``candidate`` over ``baseline`` in both tie conventions, with counts, Lemma 1's radius
    and each convention's exact interval: WinFreq (ties 1/2; ``exact_low``/``exact_high``, exact with ties)
    and wins / total (``wins_over_total``; Clopper-Pearson, exact since it is binomial).

    Failed judgements are excluded from n and counted in ``failed``; they are never scored as losses.
    """
    outcomes = judge.compare(list(prompts), list(candidate), list(baseline))
    summary = stats.summarize(outcomes)
    row = {"n": summary.n, "wins": summary.wins, "ties": summary.ties, "losses": summary.losses,
           "failed": summary.failed, "win_rate": summary.win_freq}
    if summary.n:
        half = stats.convention_summary(summary.wins, summary.ties, summary.losses, "half", delta)
        wot = stats.convention_summary(summary.wins, summary.ties, summary.losses, "wins_over_total", delta)
        row["hoeffding_radius"] = half["radius"]
        row["exact_low"], row["exact_high"] = half["exact_low"], half["exact_high"]
        row["wins_over_total"] = wot["value"]
        row["wins_over_total_low"], row["wins_over_total_high"] = wot["exact_low"], wot["exact_high"]
    return row


def mean_quality(world, prompts: Sequence[str], responses: Sequence[str]) -> float:
    """Mean known quality of responses (only worlds with a known quality function have one)."""
    quality = require(world, "quality", field="mean_quality")
    scores = [quality(p, r) for p, r in zip(prompts, responses)]
    return sum(scores) / len(scores) if scores else float("nan")


def world_judge(world, spec: dict, cache_path: str | Path | None = None, *, notebook: str | None = None,
                field: str = "judge"):
    """A judge from params; the oracle judges by the world's known quality and is named after the world,
    so verdicts cached for one world are never reused for another (a world without a known quality makes
    ``kind: oracle`` an error naming ``judge.kind``). ``cache_path`` redirects a cached judge's SQLite file
    (a run keeps its own verdicts beside its state)."""
    spec = dict(spec)
    if cache_path is not None and spec.get("cache"):
        spec["cache"] = str(cache_path)
    if spec.get("kind") == "oracle":
        quality = require(world, "quality", field="judge.kind", notebook=notebook)
        spec.setdefault("name", world.key)
        return make_judge(spec, quality_fn=quality)
    judge = make_judge(spec)
    if has(world, "query"):  # the judge reads the dataset's question, not the student's chat-templated prompt
        judge.set_query_view(world.query, world.key)
    inner = getattr(judge, "inner", judge)
    if hasattr(inner, "check_access"):  # a refused key or a dead endpoint stops here, before any work
        inner.check_access(field)
    return judge


def role_table(world, roles: Sequence[str], split: str, sampling: SamplingParams, seed: int = 0) -> pd.DataFrame:
    """Per role: cost per response, size, known mean quality on ``split`` (where the world knows it) and
    the world's one-line description of the role."""
    rows = []
    for role in roles:
        prompts = world.prompts[split]
        size = world.parameters(role)
        row = {"role": role, "cost_per_response": world.costs.get(role, float("nan")),
               "parameters": float("nan") if size is None else size}
        if has(world, "quality"):
            row["mean_quality"] = mean_quality(world, prompts, role_responses(world, role, prompts, sampling, seed))
        row["description"] = world.describe(role)
        rows.append(row)
    return pd.DataFrame(rows)


def example_table(world, roles: Sequence[str], split: str, sampling: SamplingParams, n: int = 6,
                  seed: int = 0) -> pd.DataFrame:
    """A few prompts with every role's response side by side (and its quality, where known)."""
    prompts = world.prompts[split][:n]
    table = {"prompt": prompts}
    for role in roles:
        responses = role_responses(world, role, world.prompts[split], sampling, seed)[:n]
        table[role] = responses
        if has(world, "quality"):
            table[f"q({role})"] = [round(world.quality(p, r), 2) for p, r in zip(prompts, responses)]
    return pd.DataFrame(table)
