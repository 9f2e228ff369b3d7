"""Notebook 03's tables: the length-controlled win rate, the test-prompt samples every comparison is
computed from, Table 1 (DPO with less data, with and without ExPO) with bootstrap intervals beside the
paper's numbers, paired comparisons between models, and the departures from the paper's setting.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from mfnb.core import reference
from mfnb.core.progress import progress as progress_bar
from mfnb.expo import bootstrap
from mfnb.expo.sweep import add_scores
from mfnb.stats import difference_text, interval_reading, seed_replicate_interval

_OUTCOME_VALUE = {"win": 1.0, "tie": 0.5, "lose": 0.0}


def _outcome_number(item) -> float | None:
    if item is None:
        return None
    if isinstance(item, str):
        return _OUTCOME_VALUE.get(str(item).lower())  # "failed" -> None
    value = float(item)
    return None if math.isnan(value) or value < 0 else value


def length_controlled_win_rate(outcomes: Sequence, candidate_lengths: Sequence[float],
                               baseline_lengths: Sequence[float], *, l2: float = 1e-3,
                               max_iter: int = 100) -> dict:
    """Win rate with the effect of the length difference regressed out, in the spirit of AlpacaEval 2's LC.

    Fits ``P(win) = sigmoid(b0 + b1 * tanh((len_c - len_b) / sd))`` to the outcomes (win 1, tie 1/2, lose 0;
    failed ones dropped; sd = standard deviation of the length differences) by Newton's method on the
    log-likelihood with fractional targets and a tiny ridge ``l2`` (keeps the fit finite when the outcome is
    constant or separable).  The LC win rate is the model's prediction at zero length difference,
    ``sigmoid(b0)``: how often the candidate would win were it as long as the baseline.  With no length
    differences it equals the raw win rate; wins explained only by being longer are removed.  AlpacaEval's
    version also has an instruction-difficulty term fitted across many models; with one candidate and one
    baseline per table row that term is not identifiable, so it is left out.
    """
    rows = [(v, float(c), float(b)) for o, c, b in zip(outcomes, candidate_lengths, baseline_lengths)
            if (v := _outcome_number(o)) is not None]
    if len(candidate_lengths) != len(baseline_lengths) or len(outcomes) != len(candidate_lengths):
        raise ValueError(f"outcomes, candidate_lengths and baseline_lengths differ in length: {len(outcomes)}, "
                         f"{len(candidate_lengths)}, {len(baseline_lengths)}")
    if not rows:
        return {"n": 0, "win_rate": math.nan, "lc_win_rate": math.nan, "length_coef": math.nan}
    y = np.array([r[0] for r in rows])
    diff = np.array([r[1] - r[2] for r in rows])
    sd = float(diff.std())
    x = np.tanh(diff / sd) if sd > 0 else np.zeros_like(diff)
    design = np.stack([np.ones_like(x), x], axis=1)
    beta = np.zeros(2)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(design @ beta)))
        grad = design.T @ (y - p) - l2 * beta
        hess = (design * (p * (1 - p))[:, None]).T @ design + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return {"n": len(y), "win_rate": float(y.mean()), "lc_win_rate": float(1.0 / (1.0 + math.exp(-beta[0]))),
            "length_coef": float(beta[1]), "mean_length_diff": float(diff.mean())}


def paper_table1() -> dict[str, dict]:
    """The paper's Table 1 by row name, as fractions (win rates in [0, 1]); "full data" is our 100%."""

    table = reference.load("expo_table1")
    out = {}
    for row in table.itertuples():
        name = row.model.replace("full data", "100% data")
        out[name] = {"paper_reward": row.reward, "paper_win_rate": row.win_rate_pct / 100,
                     "paper_lc_win_rate": row.lc_win_rate_pct / 100}
    return out


# ------------------------------------------------------------------ test samples, Table 1, comparisons

METRICS = ("reward", "quality", "win_rate", "lc_win_rate", "length_words")
METRIC_NAMES = {"reward": "reward", "quality": "known quality", "win_rate": "win rate",
                "lc_win_rate": "LC win rate", "length_words": "length (words)"}


NOT_TRAINED = -1  # the train_seed of a model no training seed made here (the SFT model, an off-the-shelf one)


def judged_samples(judge, prompts: Sequence[str], baseline: Mapping[int, Sequence[str]],
                 models: Mapping[str, Mapping[int, Sequence[str]]], *, reward_fn: Callable | None = None,
                 quality_fn: Callable | None = None, progress: bool = True, train_seed: int = NOT_TRAINED):
    """One row per (model, sampling seed, prompt): the judge's outcome against the baseline's response
    with the same seed (win 1, tie 1/2, lose 0; NaN when the judgement failed), reward, known quality and
    both lengths.  ``baseline``: seed -> responses; ``models``: name -> seed -> responses on ``prompts``;
    ``train_seed``: the training seed that made these models (a column, :data:`NOT_TRAINED` for none)."""
    import pandas as pd

    frames = []
    for name, by_seed in progress_bar(list(models.items()), desc="judging test responses", leave=False,
                                      disable=not progress):
        for seed, responses in by_seed.items():
            if seed not in baseline:
                raise ValueError(f"model {name!r}: no baseline responses for seed {seed}")
            outcomes = judge.compare(list(prompts), list(responses), list(baseline[seed]))
            frame = pd.DataFrame({"model": name, "train_seed": train_seed, "seed": seed, "prompt": range(len(prompts)),
                                  "outcome": [_outcome_number(o) for o in outcomes],
                                  "length_words": [len(r.split()) for r in responses],
                                  "baseline_length": [len(r.split()) for r in baseline[seed]]})
            frame["outcome"] = frame["outcome"].astype(float)
            frames.append(add_scores(frame, prompts, responses, reward_fn, quality_fn))
    return pd.concat(frames, ignore_index=True)


class SampleStats:
    """Every metric of every model in ``judged_samples``' frame, with intervals over prompts and training seeds.

    One matrix of resampling counts over the prompts serves every model and training seed, so any two models'
    replicates are paired.  A model trained under several seeds (the ``train_seed`` column) is measured per
    seed and its interval crosses seeds and prompts (:func:`mfnb.stats.seed_replicate_interval`); a model no
    seed trained (:data:`NOT_TRAINED`, e.g. the SFT model) stands beside every seed.  With one training seed
    the intervals are the percentile bootstrap over prompts."""

    def __init__(self, samples, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
        if "train_seed" not in samples:
            samples = samples.assign(train_seed=NOT_TRAINED)
        self.samples = samples
        self.level = level
        self.n_prompts = int(samples["prompt"].max()) + 1
        self.counts = bootstrap.bootstrap_counts(self.n_prompts, n_boot, seed)
        trained = sorted(int(s) for s in samples["train_seed"].unique() if s != NOT_TRAINED)
        self.train_seeds = trained or [NOT_TRAINED]
        self._cache: dict[tuple[str, str, int], tuple[float, np.ndarray]] = {}

    def _matrix(self, model: str, column: str, train_seed: int) -> np.ndarray:
        sub = self.samples[self.samples["model"] == model]
        if sub.empty:
            raise KeyError(f"no test samples for model {model!r}")
        if train_seed in set(sub["train_seed"]):
            sub = sub[sub["train_seed"] == train_seed]
        elif set(sub["train_seed"]) != {NOT_TRAINED}:
            raise KeyError(f"no test samples for model {model!r} under training seed {train_seed}")
        return sub.pivot_table(index="prompt", columns="seed", values=column, dropna=False).to_numpy()

    def seed_stat(self, model: str, metric: str, train_seed: int) -> tuple[float, np.ndarray]:
        """(point estimate, replicates) of ``metric`` for ``model`` under one training seed."""
        key = (model, metric, train_seed)
        if key not in self._cache:
            if metric == "lc_win_rate":
                args = [self._matrix(model, c, train_seed) for c in ("outcome", "length_words", "baseline_length")]
                point = bootstrap.lc_replicates(*args, np.ones((1, self.n_prompts)))[0]
                reps = bootstrap.lc_replicates(*args, self.counts)
            else:
                column = "outcome" if metric == "win_rate" else metric
                per_prompt = np.nanmean(self._matrix(model, column, train_seed), axis=1)
                point, reps = float(np.nanmean(per_prompt)), bootstrap.replicate_means(per_prompt, self.counts)
            self._cache[key] = (float(point), reps)
        return self._cache[key]

    def stat(self, model: str, metric: str) -> tuple[float, np.ndarray]:
        """(point estimate, replicates) of ``metric`` for ``model``, each averaged over the training seeds."""
        per_seed = [self.seed_stat(model, metric, s) for s in self.train_seeds]
        return float(np.mean([p for p, _ in per_seed])), np.mean([r for _, r in per_seed], axis=0)

    def _combined(self, points, replicates, bounds=None) -> tuple[float, float, float]:
        return seed_replicate_interval(points, replicates, self.level, n_prompts=self.n_prompts, bounds=bounds)

    def interval(self, model: str, metric: str) -> tuple[float, float, float]:
        per_seed = [self.seed_stat(model, metric, s) for s in self.train_seeds]
        rate = (0.0, 1.0) if metric in ("win_rate", "lc_win_rate", "quality") else None
        return self._combined([p for p, _ in per_seed], [r for _, r in per_seed], rate)

    def difference(self, a: str, b: str, metric: str) -> tuple[float, float, float]:
        """(a - b, low, high): paired over the resampled prompts within each training seed, crossed over seeds."""
        diffs = [(self.seed_stat(a, metric, s), self.seed_stat(b, metric, s)) for s in self.train_seeds]
        return self._combined([pa - pb for (pa, _), (pb, _) in diffs], [ra - rb for (_, ra), (_, rb) in diffs])

    def seed_spread(self, model: str, metric: str) -> list[float]:
        """The point estimate of ``metric`` under each training seed (how far single-seed results move)."""
        return [self.seed_stat(model, metric, s)[0] for s in self.train_seeds]


def samples_table(stats: SampleStats, models: Sequence[str], *, alphas: Mapping[str, float] | None = None,
                  metrics: Sequence[str] = ("reward", "quality", "win_rate", "lc_win_rate")):
    """One row per model: each metric with its bootstrap interval (``_low``, ``_high``), the mean length,
    the win / tie / loss counts, and the paper's numbers where the paper has the same row (``paper_*``)."""
    import pandas as pd

    paper = paper_table1()
    rows = []
    for name in models:
        sub = stats.samples[stats.samples["model"] == name]
        row = {"model": name, "alpha": (alphas or {}).get(name, math.nan)}
        for m in metrics:
            if m in ("reward", "quality") and m not in sub:
                continue
            row[m], row[f"{m}_low"], row[f"{m}_high"] = stats.interval(name, m)
        row["length_words"] = float(sub["length_words"].mean())
        row.update(wins=int((sub["outcome"] == 1).sum()), ties=int((sub["outcome"] == 0.5).sum()),
                   losses=int((sub["outcome"] == 0).sum()), failed=int(sub["outcome"].isna().sum()),
                   samples=len(sub))
        row.update(paper.get(name, {"paper_reward": math.nan, "paper_win_rate": math.nan,
                                    "paper_lc_win_rate": math.nan}))
        rows.append(row)
    return pd.DataFrame(rows)


def comparisons(stats: SampleStats, pairs: Sequence[tuple[str, str]],
                metrics: Sequence[str] = ("reward", "quality", "win_rate", "lc_win_rate")):
    """For each (a, b) and metric: a's and b's values, a - b with its paired bootstrap interval and the
    reading ('higher' / 'lower' / 'indistinguishable': a relative to b)."""
    import pandas as pd

    rows = []
    for a, b in pairs:
        for m in metrics:
            if m in ("reward", "quality") and m not in stats.samples:
                continue
            diff, low, high = stats.difference(a, b, m)
            rows.append({"a": a, "b": b, "metric": m, "a_value": stats.stat(a, m)[0],
                         "b_value": stats.stat(b, m)[0], "difference": diff, "low": low, "high": high,
                         "reading": interval_reading(low, high)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ the paper's setting

# The paper's Section 3 setting (its Appendix B and Section 3.1), beside the parameter that holds ours.
PAPER_SETUP = (
    ("SFT model", "zephyr-7b-sft-full", "sft_role"),
    ("preference data (100%)", "UltraFeedback, 61K pairs (GPT-4 labels)", "preference.n_pairs"),
    ("data fractions", "5%, 10%, 20%, 40% (Figure 5); 10%, 20%, 100% (Table 1)", "fractions"),
    ("DPO update", "full fine-tuning", "lora.r"),
    ("learning rate", "5e-07", "dpo.lr"),
    ("beta", "0.01", "dpo.beta"),
    ("epochs", "1", "dpo.epochs"),
    ("global batch", "128", "dpo.batch_size"),
    ("schedule, warm-up", "cosine, 0.1", "dpo.scheduler"),
    ("reward model", "RM-Mistral-7B", "reward_model"),
    ("development set (choosing alpha)", "UltraFeedback development set, 1 sample per prompt", "sweep_seeds"),
    ("evaluation", "AlpacaEval 2.0: 805 prompts, GPT-4 judge, GPT-4 Turbo baseline", "baseline_role"),
    ("sampling", "temperature 0.7, top-k 40, top-p 0.9", "sampling"),
    ("Figure 6 control", "20% data, larger learning rate or more epochs", "figure6"),
    ("training runs per model", "one", "train_seeds"),
)


def departures(params, n_select: int, n_report: int):
    """The paper's setting beside ours, one row per setting (read from the parameters in use)."""
    import pandas as pd

    d, s = params.dpo, params.sampling
    ours = {
        "sft_role": f"the world's {params.sft_role!r} role",
        "preference.n_pairs": f"{params.preference.n_pairs or 'all'} pairs from the world ({params.preference.source})",
        "fractions": ", ".join(f"{f * 100:g}%" for f in params.fractions),
        "lora.r": f"LoRA r {params.lora.r}, alpha {params.lora.alpha}",
        "dpo.lr": f"{d.lr:g}", "dpo.beta": f"{d.beta:g}", "dpo.epochs": f"{d.epochs:g}",
        "dpo.batch_size": f"{d.batch_size * d.grad_accum}",
        "dpo.scheduler": f"{d.scheduler}, {d.warmup_ratio:g}",
        "reward_model": (f"local reward model {params.reward_model['path']}" if "path" in params.reward_model
                         else "the world's own reward model (trained on prompts outside every split)"),
        "sweep_seeds": f"{n_select} validation prompts, {len(params.sweep_seeds)} sample(s) per prompt",
        "baseline_role": (f"{n_report} test prompts x {len(params.report_seeds)} seed(s), "
                          + (f"alpaca_eval's {params.alpaca_eval.annotator} at {params.alpaca_eval.base_url}"
                             if getattr(params, "alpaca_eval", None) else f"judge {params.judge.get('kind')}")
                          + f", baseline {params.baseline_role!r}"),
        "sampling": f"temperature {s.temperature:g}, top-k {s.top_k}, top-p {s.top_p:g}, "
                    f"at most {s.max_new_tokens} new tokens",
        "figure6": (", ".join(f"{f * 100:g}%" for f in params.figure6.fractions) + " data; lr "
                    + (", ".join(f"{x:g}" for x in params.figure6.lrs) or "-") + "; epochs "
                    + (", ".join(f"{x:g}" for x in params.figure6.epochs) or "-")) if params.figure6.fractions
                   else "not run",
        "train_seeds": (f"{len(params.train_seeds)} training seeds ({', '.join(map(str, params.train_seeds))}), each "
                        "with its own draw of the data's order and subsets; intervals cross seeds and prompts"
                        if len(params.train_seeds) > 1 else f"one (seed {params.train_seeds[0]}): intervals over "
                        "prompts only, training-seed variance not in them"),
    }
    return pd.DataFrame([{"setting": name, "paper": paper, "ours": ours[field], "parameter": field}
                         for name, paper, field in PAPER_SETUP])


def comparisons_wide(frame, metrics: Sequence[str] = ("reward", "win_rate", "lc_win_rate")):
    """:func:`comparisons` for reading: one row per pair, one column per metric holding
    'difference [low, high]' and '=' where the interval contains 0 (indistinguishable)."""
    import pandas as pd

    def cell(r):
        mark = " =" if r.reading == "indistinguishable" else ""
        return difference_text(r.difference, r.low, r.high) + mark

    rows = {}
    for r in frame.itertuples():
        if r.metric in metrics:
            rows.setdefault((r.a, r.b), {"a": r.a, "b": r.b})[METRIC_NAMES[r.metric]] = cell(r)
    return pd.DataFrame(list(rows.values()))
