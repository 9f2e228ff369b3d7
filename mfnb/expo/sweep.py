"""ExPO's alpha sweep on the LoRA fast path: responses per alpha (cached), their reward, known quality and
length, and the alpha each criterion picks (the paper's Figure 5 and Table 3).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from mfnb.core import reference
from mfnb.core.atomic import write_json
from mfnb.core.progress import progress as progress_bar
from mfnb.expo.extrapolation import _check_alpha
from mfnb.expo.lora import lora_extrapolation
from mfnb.models import generate

if TYPE_CHECKING:
    from mfnb.models import SamplingParams


def _responses_cache(folder: Path, alpha: float, prompts: Sequence[str], sampling: SamplingParams, seed: int) -> Path:
    blob = json.dumps({"alpha": alpha, "sampling": sampling.model_dump(), "seed": seed,
                       "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest()}, sort_keys=True)
    return folder / f"alpha{alpha:g}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"


def sweep_responses(model, tokenizer, prompts: Sequence[str], alphas: Sequence[float], sampling: SamplingParams,
                    *, seed: int = 0, cache: str | Path | None = None, progress: bool = True,
                    desc: str = "alpha sweep") -> dict[float, list[str]]:
    """Responses of the ExPO model for each alpha (``model``: SFT model + LoRA adapter, scaled in place
    by :func:`lora_extrapolation`; no merged copies).  Same seed for every alpha (common random numbers:
    differences between alphas are not sampling noise).  ``cache``: a folder (e.g. the adapter's) where
    each alpha's responses are saved atomically, so a killed sweep resumes where it stopped."""

    out: dict[float, list[str]] = {}
    for alpha in progress_bar(list(alphas), desc=desc, disable=not progress, leave=False):
        alpha = _check_alpha(alpha)
        file = _responses_cache(Path(cache), alpha, prompts, sampling, seed) if cache else None
        if file is not None and file.is_file():
            out[alpha] = json.loads(file.read_text())["responses"]
            continue
        with lora_extrapolation(model, alpha):
            out[alpha] = generate(model, tokenizer, list(prompts), sampling, seed=seed, show_progress=False)
        if file is not None:
            write_json(file, {"alpha": alpha, "seed": seed, "responses": out[alpha]})
    return out


def response_metrics(prompts: Sequence[str], responses: Sequence[str], *, reward_fn: Callable | None = None,
                     quality_fn: Callable | None = None, tokenizer=None) -> dict:
    """Mean reward (reward model), mean known quality, mean length in words (and tokens) of responses."""
    row = {"n": len(responses), "length_words": float(np.mean([len(r.split()) for r in responses]))}
    if tokenizer is not None:
        row["length_tokens"] = float(np.mean([len(tokenizer(r, add_special_tokens=False)["input_ids"])
                                              for r in responses]))
    if reward_fn is not None:
        row["reward"] = float(np.mean(reward_fn(list(prompts), list(responses))))
    if quality_fn is not None:
        row["quality"] = float(np.mean([quality_fn(p, r) for p, r in zip(prompts, responses)]))
    return row


def sweep_scores(model, tokenizer, prompts: Sequence[str], alphas: Sequence[float], sampling: SamplingParams, *,
                 seeds: Sequence[int] = (0,), reward_fn: Callable | None = None, quality_fn: Callable | None = None,
                 cache: str | Path | None = None, progress: bool = True, desc: str = "alpha sweep"):
    """One row per (alpha, seed, prompt): the response's reward, known quality and length (a DataFrame
    with columns alpha, seed, prompt (its index in ``prompts``), reward, quality, length_words,
    length_tokens); the per-prompt scores that the bootstrap intervals resample."""
    import pandas as pd

    answers = {s: sweep_responses(model, tokenizer, prompts, alphas, sampling, seed=s, cache=cache,
                                  progress=progress, desc=f"{desc} (seed {s})") for s in seeds}
    frames = []
    for alpha in alphas:
        alpha = float(alpha)
        for seed, per_alpha in answers.items():
            responses = per_alpha[alpha]
            frame = pd.DataFrame({"alpha": alpha, "seed": seed, "prompt": range(len(prompts)),
                                  "length_words": [len(r.split()) for r in responses]})
            if tokenizer is not None:
                frame["length_tokens"] = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses]
            frames.append(add_scores(frame, prompts, responses, reward_fn, quality_fn))
    return pd.concat(frames, ignore_index=True)


SCORE_COLUMNS = ("length_words", "length_tokens", "reward", "quality")


def summarize_sweep(scores):
    """One row per alpha: the number of responses and the mean of every score (``alpha_sweep``'s frame)."""
    cols = [c for c in SCORE_COLUMNS if c in scores]
    grouped = scores.groupby("alpha", sort=False)
    out = grouped[cols].mean()
    out.insert(0, "n", grouped.size())
    return out.reset_index()


def alpha_sweep(model, tokenizer, prompts: Sequence[str], alphas: Sequence[float], sampling: SamplingParams, *,
                seeds: Sequence[int] = (0,), reward_fn: Callable | None = None, quality_fn: Callable | None = None,
                cache: str | Path | None = None, progress: bool = True, desc: str = "alpha sweep"):
    """One row per alpha: mean reward / quality / length over ``prompts`` x ``seeds`` (a DataFrame)."""
    return summarize_sweep(sweep_scores(model, tokenizer, prompts, alphas, sampling, seeds=seeds,
                                        reward_fn=reward_fn, quality_fn=quality_fn, cache=cache,
                                        progress=progress, desc=desc))


def score_matrix(scores, column: str = "reward") -> tuple[list[float], np.ndarray]:
    """(alphas, values[k, n]): each alpha's per-prompt ``column``, averaged over the sampling seeds."""
    table = scores.groupby(["alpha", "prompt"], sort=True)[column].mean().unstack("prompt")
    return [float(a) for a in table.index], table.to_numpy()


def optimal_alpha(sweep, metric: str = "reward") -> float:
    """The alpha with the highest mean ``metric`` (the smallest such alpha on a tie), as the paper picks it."""
    best = sweep[metric].max()
    return float(sweep.loc[sweep[metric] == best, "alpha"].min())


def is_non_increasing(values: Sequence[float]) -> bool:
    return all(b <= a for a, b in zip(values, values[1:]))


def paper_optimal_alpha() -> dict[str, float]:
    """The paper's optimal alpha for its zephyr less-data models by data label (Table 3; "100%" is
    zephyr-7b-dpo-full), read from the reference tables."""

    t3 = reference.load("expo_table3")
    t3 = t3[t3["sft_model"] == "zephyr-7b-sft-full"]
    out = {}
    for aligned, alpha in zip(t3["aligned_model"], t3["optimal_alpha"]):
        label = "100%" if aligned == "zephyr-7b-dpo-full" else aligned.removeprefix("DPO(").split(" ")[0]
        out[label] = float(alpha)
    return out


def paper_alpha_grid() -> list[float]:
    """Every alpha the paper searched (Table 3), sorted."""

    ranges = reference.load("expo_table3")["search_range"]
    return sorted({float(a) for r in ranges for a in str(r).split(",")})


def seed_mean(sweeps):
    """``sweeps`` (one row per model, training seed and alpha) averaged over the training seeds: one row per
    model and alpha, the curves the figures draw."""
    if "train_seed" not in sweeps:
        return sweeps
    keys = [c for c in ("model", "data", "fraction", "control", "alpha") if c in sweeps]
    values = [c for c in sweeps.select_dtypes("number") if c not in keys and c != "train_seed"]
    return sweeps.groupby(keys, sort=False)[values].mean().reset_index()


def optimal_alpha_table(sweeps):
    """Per data fraction and training seed (``sweeps``: alpha_sweep frames with a ``data`` label column, in
    fraction order, and a ``train_seed`` column where there are several): the alpha the reward model picks, the
    alpha that is best by known quality (where known), the values at alpha = 0 (the DPO model) and at both
    picks, and the paper's optimal alpha where it has one."""
    import pandas as pd

    paper = paper_optimal_alpha()
    rows = []
    by = ["data", "train_seed"] if "train_seed" in sweeps else ["data"]
    for group, sw in sweeps.groupby(by, sort=False):
        label = group[0]

        def at(alpha, col):
            return float(sw.loc[sw["alpha"] == alpha, col].iloc[0]) if col in sw else math.nan

        chosen = optimal_alpha(sw, "reward")
        row = {"data": label, **({"train_seed": int(group[1])} if len(by) > 1 else {}), "alpha_by_reward": chosen,
               "at_grid_edge": chosen == sw["alpha"].max() and len(sw) > 1,
               "reward_at_0": at(0.0, "reward") if (sw["alpha"] == 0).any() else math.nan,
               "reward_at_chosen": at(chosen, "reward")}
        if "quality" in sw:
            best = optimal_alpha(sw, "quality")
            row.update(alpha_by_quality=best,
                       quality_at_0=at(0.0, "quality") if (sw["alpha"] == 0).any() else math.nan,
                       quality_at_chosen=at(chosen, "quality"), quality_at_best=at(best, "quality"))
        row.update(length_at_0=at(0.0, "length_words") if (sw["alpha"] == 0).any() else math.nan,
                   length_at_chosen=at(chosen, "length_words"),
                   paper_optimal_alpha=paper.get(label, math.nan))
        rows.append(row)
    return pd.DataFrame(rows)


def add_scores(frame, prompts: Sequence[str], responses: Sequence[str], reward_fn: Callable | None,
               quality_fn: Callable | None):
    """The ``reward`` (one batched call) and known ``quality`` columns of a frame of responses, row by row."""
    if reward_fn is not None:
        frame["reward"] = np.asarray(reward_fn(list(prompts), list(responses)), dtype=float)
    if quality_fn is not None:
        frame["quality"] = [quality_fn(p, r) for p, r in zip(prompts, responses)]
    return frame
