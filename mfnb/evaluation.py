"""Evaluate models against each other: sample responses (cached on disk), judge pairs, summarise.

The same three steps serve Table 1 (fidelity ladder), the validation checks of Algorithm 2 and every
test-set comparison; responses come from ``world.respond`` (any world, see :mod:`mfnb.worlds`) and are
cached by world, role, prompts, sampling and seed, verdicts by the judge's own cache, so rerunning a
notebook regenerates nothing it already has.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Sequence

import pandas as pd
from pydantic import Field

from mfnb import paths, reference, stats
from mfnb.atomic import write_json
from mfnb.judges import JudgeSpec
from mfnb.models import SamplingParams
from mfnb.params import Params
from mfnb.worlds import WorldSpec, has, require


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
    from mfnb.judges import make_judge

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


class AgreementParams(Params):
    """Notebook 01's judge check: parse rate and agreement with the world's checker, per judge, on Table 1's pairs."""

    judges: dict[str, JudgeSpec] = Field(default_factory=dict)   # extra judges by name (specs like `judge`), beside it
    max_pairs: int | None = Field(default=None, ge=1)        # per judge; None: every pair of Table 1
    tie_margin: float = Field(default=0.05, ge=0)            # checker differences within it are ties (not counted)


class FidelityWinratesParams(Params):
    """Notebook 01: the paper's Table 1 (win rate of each adjacent pair of the fidelity ladder)."""

    profile: str
    world: WorldSpec
    judge: JudgeSpec
    sampling: SamplingParams
    chain: list[str] = Field(min_length=2)
    split: Literal["validation", "test"] = "validation"
    sampling_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    delta: float = Field(default=0.05, gt=0, lt=1)
    torch_threads: int | None = Field(default=1, ge=1)
    agreement: AgreementParams = AgreementParams()


def ladder_pairs(world, chain: Sequence[str], split: str, sampling: SamplingParams, seeds: Sequence[int] = (0,),
                 max_pairs: int | None = None) -> tuple[list[str], list[str], list[str]]:
    """Table 1's pairs (prompts, each step's candidate responses, the responses below it), every step and
    seed in turn; with ``max_pairs`` an even, seeded spread over them."""
    import random

    prompts = world.prompts[split]
    out: tuple[list[str], list[str], list[str]] = ([], [], [])
    for baseline, candidate in zip(chain, chain[1:]):
        for s in seeds:
            out[0].extend(prompts)
            out[1].extend(role_responses(world, candidate, prompts, sampling, seed=s))
            out[2].extend(role_responses(world, baseline, prompts, sampling, seed=s))
    if max_pairs is not None and max_pairs < len(out[0]):
        keep = sorted(random.Random(f"ladder-pairs-{max_pairs}").sample(range(len(out[0])), max_pairs))
        out = tuple([col[i] for i in keep] for col in out)
    return out


def ladder_table(world, judge, chain: Sequence[str], split: str, sampling: SamplingParams,
                 seeds: Sequence[int] = (0,), delta: float = 0.05) -> pd.DataFrame:
    """Table 1: the win rate of chain[i+1] over chain[i] on ``split``, pooled over sampling seeds, in both tie
    conventions with their exact intervals and Lemma 1's radius, and the paper's number for the same step
    beside the convention it was computed with (wins / total, the paper's Section 5), labelled."""
    prompts = world.prompts[split]
    answers = {role: {s: role_responses(world, role, prompts, sampling, seed=s) for s in seeds} for role in chain}
    paper = reference.load("mf_table1")
    rows = []
    for i, (baseline, candidate) in enumerate(zip(chain, chain[1:])):
        row = win_rate_row(judge, list(prompts) * len(seeds),
                           [r for s in seeds for r in answers[candidate][s]],
                           [r for s in seeds for r in answers[baseline][s]], delta)
        ref = paper.iloc[i] if i < len(paper) else None
        rows.append({"baseline": baseline, "candidate": candidate, **row,
                     "paper_pair (reference)": f"{ref.candidate} over {ref.baseline}" if ref is not None else "",
                     "paper_wins_over_total (reference)": float(ref.win_rate) if ref is not None else float("nan")})
    return pd.DataFrame(rows)


def ladder_statement(table: pd.DataFrame, delta: float) -> list[str]:
    """The verdict on Table 1, one line per step and one for the ladder, with every number formatted as the
    displayed table formats it.  A step is resolved when its exact WinFreq interval excludes 1/2 (WinFreq is
    the convention in which 1/2 means "as good"); the paper's number is set beside our wins / total."""
    from mfnb.formatting import fmt, fmt_interval

    level = fmt(1 - delta, 0, percent=True)
    lines = []
    for r in table.itertuples():
        verdict = ("Clearly better (exact interval above 0.5)" if r.exact_low > 0.5 else
                   "Better on average, but not resolved at this n" if r.win_rate > 0.5 else
                   "NOT better (exact interval below 0.5)" if r.exact_high < 0.5 else "NOT better on average")
        ref = table.loc[r.Index, "paper_wins_over_total (reference)"]
        lines.append(f"- **{r.candidate} over {r.baseline}**: WinFreq {fmt(r.win_rate)} ({level} exact interval "
                     f"{fmt_interval(r.exact_low, r.exact_high)}; {r.wins} wins, {r.ties} ties, {r.losses} losses, "
                     f"{r.failed} failed judgements); wins / total {fmt(r.wins_over_total)} "
                     f"{fmt_interval(r.wins_over_total_low, r.wins_over_total_high)}"
                     + (f", the paper's step ({table.loc[r.Index, 'paper_pair (reference)']}, wins / total): "
                        f"{fmt(ref)}" if pd.notna(ref) else "") + f". {verdict}.")
    ordered = bool((table["exact_low"] > 0.5).all())
    on_average = bool((table["win_rate"] > 0.5).all())
    lines.append("")
    lines.append(("The ladder is **ordered**: every expert beats the model below it, each step resolved by its "
                  "exact interval, as Algorithm 2 requires." if ordered else
                  "The ladder is ordered on average but not every step is resolved at this n." if on_average else
                  "The ladder is **NOT ordered**: at least one expert does not beat the model below it."))
    ties = int(table["ties"].sum())
    n = int(table["n"].sum())
    lines.append(f"Ties are {fmt(ties / n if n else float('nan'), 1, percent=True)} of the judgements: wins / total "
                 "(the paper's reported metric) counts them as not won, WinFreq as half won, which is why the two "
                 "columns differ.")
    return lines


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
