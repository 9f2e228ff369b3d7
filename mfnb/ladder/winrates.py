"""Table 1 of the multi-fidelity paper: the win rate of each adjacent pair of the fidelity ladder, with both tie
conventions, their exact intervals and the paper's number beside ours."""
from __future__ import annotations

import random
from typing import Sequence

import pandas as pd

from mfnb.core import reference
from mfnb.core.formatting import fmt, fmt_interval
from mfnb.evaluation import role_responses, win_rate_row
from mfnb.models import SamplingParams


def ladder_pairs(world, chain: Sequence[str], split: str, sampling: SamplingParams, seeds: Sequence[int] = (0,),
                 max_pairs: int | None = None) -> tuple[list[str], list[str], list[str]]:
    """Table 1's pairs (prompts, each step's candidate responses, the responses below it), every step and
    seed in turn; with ``max_pairs`` an even, seeded spread over them."""
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
