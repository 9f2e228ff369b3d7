"""Notebook 03's verdicts: each claim of the paper's Section 3 tested with an interval, never with a
tolerance on point estimates.

* A comparison is the paired bootstrap interval of a difference (:mod:`mfnb.expo.bootstrap`): over test
  prompts for the models' scores, over validation prompts for anything that is *chosen* (the optimal alpha,
  the best data fraction; the choice is redone in every replicate).
* :func:`verdict`: *reproduced* when the interval lies on the paper's side of 0, *reversed* when it lies on
  the other side, *inconclusive* when it contains 0 (the two are indistinguishable).
* :func:`combine`: a claim the paper makes on several metrics (or several models) is *reproduced* only when
  every one is, *reversed* when at least one is reversed and none reproduced, otherwise *inconclusive*.
* :func:`reward_model_doubt`: a reward model not shown to beat chance against the world's quality picks
  alpha at random and its reward differences say nothing; every verdict that rests on its reward or on the
  alpha it chose (the chosen alpha's trend, the best fraction, every comparison of an ExPO model, which is the
  model at that alpha: Table 1 and Figure 6) is then *not testable* here, with the reason, never *reversed*:
  the instrument cannot tell. The differences are still printed.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from mfnb import stats
from mfnb.core import reference
from mfnb.core.formatting import fmt, fmt_interval
from mfnb.expo import bootstrap
from mfnb.expo.control import Variant
from mfnb.expo.report import METRIC_NAMES, SampleStats
from mfnb.expo.sweep import paper_optimal_alpha, score_matrix
from mfnb.expo.training import fraction_label
from mfnb.stats import difference_text, interval_reading

VERDICTS = stats.CLAIM_VERDICTS
NOT_TESTABLE = stats.NOT_TESTABLE
CLAIM_COLUMNS = ("claim", "source", "scope", "paper", "ours", "verdict")
TABLE1_METRICS = ("reward", "win_rate", "lc_win_rate")   # the paper's Table 1 columns
TREND_CLAIM = "the optimal alpha falls as the data grows"


verdict, combine = stats.claim_verdict, stats.combine_verdicts  # one rule for every paper's claims


def reward_model_doubt(accuracy, delta: float = 0.05) -> str | None:
    """Why the reward model's verdicts cannot count, or None when it beats chance on every kind of pair
    measured: the exact (Clopper-Pearson) lower bound of its pairwise accuracy against the world's quality
    lies above 1/2.  ``accuracy``: rows with ``pairs_from``, ``pairs``, ``accuracy`` (notebook 03's reward
    model table), or None where the world knows no quality (the reward model is then taken as given)."""
    if accuracy is None:
        return None
    failing = []
    for row in accuracy.itertuples():
        n = int(row.pairs)
        if n == 0 or math.isnan(row.accuracy):
            continue
        k = round(row.accuracy * n)
        low, high = stats.interval_from_counts(k, 0, n - k, delta, method="clopper_pearson")
        if low <= 0.5:
            failing.append(f"{fmt(row.accuracy)} {fmt_interval(low, high)} on {n} pairs of {row.pairs_from}")
    if not failing:
        return None
    return ("the reward model is not shown to beat chance (pairwise accuracy against the world's quality, exact "
            f"{1 - delta:.0%} interval: " + "; ".join(failing) + "), so what rests on its reward or on its choice of "
            "alpha cannot be tested here")


def _doubted(row: dict, doubt: str | None) -> dict:
    """``row`` as *not testable*, with the reason, when the reward model is in doubt."""
    if doubt is None:
        return row
    return {**row, "ours": f"{row['ours']}; not testable here: {doubt}", "verdict": NOT_TESTABLE}


# ---------------------------------------------------------------------------- choosing alpha (validation)


class AlphaChoice:
    """The reward-optimal alpha of every swept model, with bootstrap replicates over the validation prompts
    (the same resampled prompts for every model, so choices are paired across models).

    ``scores``: model key -> :func:`mfnb.expo.sweep.sweep_scores` frame on the same validation prompts."""

    def __init__(self, scores: Mapping[str, object], n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                 metric: str = "reward"):
        self.level, self.metric = level, metric
        self.matrices = {key: score_matrix(frame, metric) for key, frame in scores.items()}
        sizes = {m.shape[1] for _, m in self.matrices.values()}
        if len(sizes) != 1:
            raise ValueError(f"the sweeps cover different numbers of validation prompts: {sorted(sizes)}")
        n = sizes.pop()
        self.counts = bootstrap.bootstrap_counts(n, n_boot, seed)
        ones = np.ones((1, n))
        self.point = {k: float(bootstrap.argmax_replicates(m, ones, a)[0]) for k, (a, m) in self.matrices.items()}
        self.best_point = {k: float(bootstrap.best_value_replicates(m, ones)[0])
                           for k, (a, m) in self.matrices.items()}
        self.replicates = {k: bootstrap.argmax_replicates(m, self.counts, a) for k, (a, m) in self.matrices.items()}
        self.best = {k: bootstrap.best_value_replicates(m, self.counts) for k, (a, m) in self.matrices.items()}

    def interval(self, key: str) -> tuple[float, float]:
        return bootstrap.percentile_interval(self.replicates[key], self.level, discrete=True)

    def table(self, delta_norms: Mapping[str, float] | None = None):
        """Per model: the optimal alpha with its interval, the reward there, the size of the DPO update
        ||delta theta|| and of the extrapolated one, (1 + alpha) ||delta theta||."""
        import pandas as pd

        rows = []
        for key in self.matrices:
            low, high = self.interval(key)
            row = {"model": key, "alpha": self.point[key], "alpha_low": low, "alpha_high": high,
                   f"{self.metric}_at_alpha": self.best_point[key]}
            if delta_norms and key in delta_norms:
                row["delta_norm"] = delta_norms[key]
                row["extrapolated_norm"] = (1 + self.point[key]) * delta_norms[key]
            rows.append(row)
        return pd.DataFrame(rows)


def per_seed(choice) -> list[AlphaChoice]:
    """``choice`` as a list of one :class:`AlphaChoice` per training seed (a mapping seed -> choice, a list,
    or one choice)."""
    if isinstance(choice, AlphaChoice):
        return [choice]
    return list(choice.values()) if isinstance(choice, Mapping) else list(choice)


def _crossed(choices: Sequence[AlphaChoice], points, replicates, discrete: bool = False,
             bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """A statistic's mean over training seeds with its interval (:func:`mfnb.stats.seed_replicate_interval`)."""
    return stats.seed_replicate_interval(points, replicates, choices[0].level, n_prompts=choices[0].counts.shape[1],
                                         discrete=discrete, bounds=bounds)


def _seed_alphas(choices: Sequence[AlphaChoice], key: str) -> str:
    """The optimal alpha under each training seed, with its interval over the validation prompts."""
    return ", ".join(f"{fmt(c.point[key], 1)} {fmt_interval(*c.interval(key), 1)}" for c in choices)


def alpha_summary(choice, delta_norms: Mapping[int, Mapping[str, float]] | None = None):
    """Per model: the optimal alpha over the training seeds (the mean, its interval crossed over seeds and
    validation prompts; one seed: :meth:`AlphaChoice.table`'s choice and interval), the mean ||delta theta||
    and the mean extrapolated update (1 + alpha) ||delta theta||.  ``delta_norms``: seed -> model key -> norm."""
    import pandas as pd

    seeds = list(choice) if isinstance(choice, Mapping) else None
    choices = per_seed(choice)
    rows = []
    for key in choices[0].matrices:
        grid = choices[0].matrices[key][0]   # an alpha lies on the swept grid: its interval too
        alpha, low, high = _crossed(choices, [c.point[key] for c in choices], [c.replicates[key] for c in choices],
                                    discrete=True, bounds=(min(grid), max(grid)))
        row = {"model": key, "alpha": alpha, "alpha_low": low, "alpha_high": high, "seeds": len(choices)}
        if delta_norms and seeds is not None and all(key in delta_norms.get(s, {}) for s in seeds):
            norms = [delta_norms[s][key] for s in seeds]
            row["delta_norm"] = float(np.mean(norms))
            row["extrapolated_norm"] = float(np.mean([(1 + c.point[key]) * n for c, n in zip(choices, norms)]))
        rows.append(row)
    return pd.DataFrame(rows)


def alpha_trend_claim(choice, fractions: Sequence[float], reward_doubt: str | None = None) -> dict:
    """The paper (Figure 5, Table 3): the optimal alpha falls as the data grows.  Ours: Spearman's rho
    between data fraction and the optimal alpha, with its interval (verdict: rho < 0); over several training
    seeds, the mean rho with the interval crossed over seeds and validation prompts.  ``choice``: one
    :class:`AlphaChoice` or one per training seed."""
    choices = per_seed(choice)
    keys = [fraction_label(f) for f in sorted(fractions)]
    points, reps = [], []
    for c in choices:
        points.append(bootstrap.rank_correlation_replicates(sorted(fractions), np.array([[c.point[k] for k in keys]]))[0])
        reps.append(bootstrap.rank_correlation_replicates(sorted(fractions),
                                                          np.stack([c.replicates[k] for k in keys], axis=1)))
    point, low, high = _crossed(choices, points, reps, discrete=True, bounds=(-1.0, 1.0))
    paper = paper_optimal_alpha()
    alphas = "; ".join(f"{k}: {_seed_alphas(choices, k)}" for k in keys)
    over = f" (mean over {len(choices)} training seeds; each seed's alpha below)" if len(choices) > 1 else ""
    return _doubted({"claim": TREND_CLAIM, "source": "Figure 5, Table 3",
                     "scope": "all fractions",
                     "paper": "optimal alpha " + ", ".join(f"{k}: {fmt(v, 1)}" for k, v in paper.items()),
                     "ours": f"Spearman rho(fraction, optimal alpha) {fmt(point, 2)} {fmt_interval(low, high, 2)}"
                             f"{over}; optimal alpha {alphas}",
                     "verdict": verdict(low, high, direction=-1)}, reward_doubt)


def medium_best_claim(choice, fractions: Sequence[float], medium: float = 0.2,
                      reward_doubt: str | None = None) -> dict:
    """The paper (Section 3.3): the best reward after ExPO comes from the 20% model, not from the smaller
    (5%, 10%) or larger (40%) ones of Figure 5.  Ours: that model's best validation reward minus the best
    of the other Figure 5 fractions (below 100%), alpha re-chosen in every replicate (and per training seed)."""
    choices = per_seed(choice)
    figure5 = sorted(f for f in fractions if f < 1.0)
    claim = {"claim": f"the best reward after ExPO comes from the {fraction_label(medium)} model",
             "source": "Section 3.3, Figure 5", "scope": ", ".join(fraction_label(f) for f in figure5),
             "paper": f"{fraction_label(medium)} beats the smaller and the larger fractions"}
    if medium not in figure5 or len(figure5) < 3:
        return {**claim, "ours": "not testable here: the fractions do not hold it", "verdict": NOT_TESTABLE}
    key = fraction_label(medium)
    others = [fraction_label(f) for f in figure5 if f != medium]
    points = [c.best_point[key] - max(c.best_point[k] for k in others) for c in choices]
    reps = [c.best[key] - np.max(np.stack([c.best[k] for k in others], axis=1), axis=1) for c in choices]
    diff, low, high = _crossed(choices, points, reps)
    ours = f"{key} minus the best other fraction, reward at the optimal alpha: {difference_text(diff, low, high)}"
    if len(choices) > 1:
        ours += f" (mean over {len(choices)} training seeds: " + ", ".join(fmt(p, signed=True) for p in points) + ")"
    return _doubted({**claim, "ours": ours, "verdict": verdict(low, high)}, reward_doubt)


# ------------------------------------------------------------------------------- Table 1 (test prompts)


def _paper_table1_pct() -> dict[str, dict[str, float]]:
    t1 = reference.load("expo_table1")
    t1["model"] = t1["model"].str.replace("full data", "100% data")
    return {r.model: {"reward": r.reward, "win_rate": r.win_rate_pct / 100, "lc_win_rate": r.lc_win_rate_pct / 100}
            for r in t1.itertuples()}


def _metric_verdicts(stats: SampleStats, a: str, b: str, metrics: Sequence[str], direction: int = 1):
    """Per metric: the difference a - b with its interval, and its verdict (a row resting on a doubted reward
    model is made not testable as a whole, by :func:`_doubted`)."""
    parts, verdicts = [], []
    for m in metrics:
        diff, low, high = stats.difference(a, b, m)
        parts.append(f"{METRIC_NAMES[m]} {difference_text(diff, low, high)}")
        verdicts.append(verdict(low, high, direction))
    return "; ".join(parts), verdicts


def _paper_diff(a: str, b: str, metrics: Sequence[str]) -> str | None:
    paper = _paper_table1_pct()
    if a not in paper or b not in paper:
        return None
    return "; ".join(f"{METRIC_NAMES[m]} {fmt(paper[a][m] - paper[b][m], signed=True)}" for m in metrics)


ORACLE_CLAIM = "ExPO improves the DPO model, alpha chosen by the known quality"
ORACLE_METRICS = ("win_rate", "lc_win_rate")   # the judge's: no reward model anywhere in this arm


def table1_claims(stats: SampleStats, fractions: Sequence[float], reward_doubt: str | None = None,
                  oracle: bool = False) -> list[dict]:
    """The paper's Table 1 claims on the test prompts: ExPO improves every DPO model (reward, win rate and
    LC win rate each resolved above 0), and DPO(f%)+ExPO matches or beats full-data DPO (LC win rate, the
    paper's comparison: resolved above 0 reproduces; indistinguishable is inconclusive).  ``oracle``: also
    the oracle arm (alpha chosen on the validation prompts by the world's known quality, judged on the test
    prompts by win rate and LC win rate), which tests extrapolation itself, whatever the reward model is worth."""
    rows = []
    for f in sorted(fractions):
        v = Variant(f)
        a, b = v.name(expo=True), v.name()
        ours, verdicts = _metric_verdicts(stats, a, b, TABLE1_METRICS)
        if all(stats.difference(a, b, m) == (0.0, 0.0, 0.0) for m in TABLE1_METRICS):
            ours += " (the reward model chose alpha = 0: the ExPO model is the DPO model)"
        paper = _paper_diff(a, b, TABLE1_METRICS) or "no Table 1 row (Figure 5: development-set reward only)"
        # the ExPO model is the model at the alpha the reward model chose: in doubt, no metric can test ExPO
        rows.append(_doubted({"claim": "ExPO improves the DPO model", "source": "Table 1", "scope": fraction_label(f),
                              "paper": paper, "ours": ours, "verdict": combine(verdicts)}, reward_doubt))
    for f in sorted(fractions) if oracle else []:
        v = Variant(f)
        a, b = v.name(oracle=True), v.name()
        ours, verdicts = _metric_verdicts(stats, a, b, ORACLE_METRICS)
        if all(stats.difference(a, b, m) == (0.0, 0.0, 0.0) for m in ORACLE_METRICS):
            ours += " (the known quality chose alpha = 0: the ExPO model is the DPO model)"
        rows.append({"claim": ORACLE_CLAIM, "source": "Table 1 (oracle arm)", "scope": fraction_label(f),
                     "paper": "not in the paper (it chooses alpha by a reward model): a test of extrapolation alone",
                     "ours": ours, "verdict": combine(verdicts)})
    if 1.0 in fractions:
        full = Variant(1.0).name()
        for f in sorted(x for x in fractions if x < 1.0):
            a = Variant(f).name(expo=True)
            ours, verdicts = _metric_verdicts(stats, a, full, ("lc_win_rate",))
            others, _ = _metric_verdicts(stats, a, full, ("reward", "win_rate"))
            paper = _paper_diff(a, full, ("lc_win_rate",))
            rows.append(_doubted({"claim": "DPO with less data + ExPO matches or beats full-data DPO",
                                  "source": "Table 1", "scope": fraction_label(f), "paper": paper or "no Table 1 row",
                                  "ours": f"{ours} ({reading_words(verdicts[0])}); also {others}",
                                  "verdict": verdicts[0]}, reward_doubt))
    return rows


def reading_words(v: str) -> str:
    return {"reproduced": "beats", "reversed": "falls short", "inconclusive": "indistinguishable"}[v]


# ------------------------------------------------------------------------------ Figure 6 (the control)


def figure6_claims(stats: SampleStats, variants: Sequence[Variant], metric: str = "reward",
                   reward_doubt: str | None = None) -> list[dict]:
    """The paper's Figure 6 (20% data): training harder (larger lr, more epochs) is inferior to the default
    model + ExPO at its best alpha, and lowers the peak that ExPO then reaches.  Tested on the test prompts
    with the paper's Figure 6 metric (the reward; the other metrics are in the comparison table)."""
    rows = []
    for v in variants:
        best = v.default.name(expo=True)
        for claim, other in (("training harder on the same data stays below DPO + ExPO", v.name()),
                             ("training harder lowers the peak ExPO reaches", v.name(expo=True))):
            diff, low, high = stats.difference(best, other, metric)
            row = {"claim": claim, "source": "Figure 6", "scope": v.key,
                   "paper": "below (at 20% data, reward on the development set)",
                   "ours": f"{best} minus {other}, {METRIC_NAMES[metric]}: {difference_text(diff, low, high)} "
                           f"({interval_reading(low, high)})",
                   "verdict": verdict(low, high)}
            rows.append(_doubted(row, reward_doubt))  # both sides' ExPO model is at the reward model's alpha
    return rows


def alpha_shift(choice, variants: Sequence[Variant]):
    """Per control model: its optimal alpha against the default model's at the same fraction (paired over
    the same resampled validation prompts; over several training seeds, the mean difference with its interval
    crossed over seeds and prompts).  ``choice``: one :class:`AlphaChoice` or one per training seed."""
    import pandas as pd

    choices = per_seed(choice)
    rows = []
    for v in variants:
        base, ctrl = v.default.key, v.key
        diff, low, high = _crossed(choices, [c.point[base] - c.point[ctrl] for c in choices],
                                   [c.replicates[base] - c.replicates[ctrl] for c in choices], discrete=True)
        rows.append({"control": ctrl, "default_alpha": float(np.mean([c.point[base] for c in choices])),
                     "control_alpha": float(np.mean([c.point[ctrl] for c in choices])),
                     "difference": diff, "low": low, "high": high, "alpha_falls": low > 0, "alpha_rises": high < 0,
                     "seeds": len(choices)})
    return pd.DataFrame(rows)


def claims_table(rows: Sequence[dict]):
    """Notebook 03's claims CSV: one row per claim and scope (a data fraction or a control model)."""
    return stats.claims_table(rows, CLAIM_COLUMNS)


def overall(claims) -> "object":
    """One verdict per claim (over its scopes: fractions or control models), by :func:`combine` over the scopes
    that could be tested (*not testable* when none could), with the count of each verdict."""
    import pandas as pd

    rows = []
    for (claim, source), group in claims.groupby(["claim", "source"], sort=False):
        counts = group["verdict"].value_counts()
        rows.append({"claim": claim, "source": source, "verdict": stats.combine_testable(group["verdict"].tolist()),
                     **{v: int(counts.get(v, 0)) for v in VERDICTS}, "not_testable": int(counts.get(NOT_TESTABLE, 0))})
    return pd.DataFrame(rows)
