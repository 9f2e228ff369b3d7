"""The reward model that picks ExPO's alpha, and how often it orders pairs as the known quality does.

The paper scores every extrapolated model with a reward model that took no part in training the policies
(RM-Mistral-7B). Here it is either a local folder (``reward_model: {path: ...}``, any world) or the world's
own (its ``reward_model`` capability: the tiny world trains one with TRL's RewardTrainer, see
:mod:`mfnb.worlds.tiny.reward`). Where the world knows the true quality, the notebook reports the reward model's
pairwise agreement with it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mfnb.judges import RewardModelJudge
from mfnb.worlds import has, require


def reward_model_info(path: str | Path) -> dict:
    """What the reward model's builder recorded in its ``reward.json`` (params, loss, training seconds);
    {} for a folder without one."""
    file = Path(path) / "reward.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def reward_judge(world, spec: Mapping[str, Any] | None = None, *, show_progress: bool = True, **judge_kwargs):
    """A :class:`mfnb.judges.RewardModelJudge` from a notebook's ``reward_model`` parameter.

    ``{"path": <folder>}``: any local sequence-classification reward model (any world); otherwise the
    world's own reward model (its ``reward_model`` capability, e.g. the tiny world's, whose fields are
    :class:`mfnb.worlds.tiny.reward.RewardModelParams`), built or loaded from the cache.
    """
    from mfnb.training.runtime import quiet_transformers  # deferred: loads torch

    values = dict(spec or {})
    path = values.pop("path", None)
    if path is None:
        own = require(world, "reward_model", field="reward_model", notebook="03")
        path = own(values, show_progress=show_progress)
    elif values:
        raise ValueError(f"reward_model: with 'path' no other fields are allowed, got {sorted(values)}")
    judge_kwargs.setdefault("progress", False)
    judge_kwargs.setdefault("batch_size", 256)
    judge_kwargs.setdefault("dtype", "auto")  # as saved: a 7B reward model in bf16 (fp32 would double its memory)
    with quiet_transformers():
        judge = RewardModelJudge(str(path), **judge_kwargs)
    if has(world, "query"):  # it scores the dataset's question, not the policy's chat-templated prompt
        judge.set_query_view(world.query, world.key)
    return judge


def pairwise_accuracy(scores_a: Sequence[float], scores_b: Sequence[float], quality_a: Sequence[float],
                      quality_b: Sequence[float], min_gap: float = 0.05) -> dict:
    """How often the reward model orders a pair as the known quality does (pairs within min_gap skipped;
    a reward tie counts 1/2)."""
    n = hits = 0.0
    for ra, rb, qa, qb in zip(scores_a, scores_b, quality_a, quality_b):
        if abs(qa - qb) <= min_gap:
            continue
        n += 1
        if ra == rb:
            hits += 0.5
        elif (ra > rb) == (qa > qb):
            hits += 1
    return {"pairs": int(n), "accuracy": hits / n if n else float("nan")}


def accuracy_on_pairs(judge, rows: Sequence[Mapping[str, str]], quality: Callable[[str, str], float],
                      min_gap: float = 0.05) -> dict:
    """Pairwise accuracy of ``judge.score`` on (prompt, chosen, rejected) rows against the known quality."""
    prompts = [r["prompt"] for r in rows]
    a = judge.score(prompts, [r["chosen"] for r in rows])
    b = judge.score(prompts, [r["rejected"] for r in rows])
    qa = [quality(r["prompt"], r["chosen"]) for r in rows]
    qb = [quality(r["prompt"], r["rejected"]) for r in rows]
    return pairwise_accuracy(a, b, qa, qb, min_gap)


def accuracy_on_responses(judge, prompts: Sequence[str], responses: Mapping[str, Sequence[str]],
                          quality: Callable[[str, str], float], min_gap: float = 0.05) -> dict:
    """Pairwise accuracy over every pair of sources (e.g. the world's roles) answering the same prompts."""
    names = list(responses)
    scores = {k: judge.score(list(prompts), list(v)) for k, v in responses.items()}
    quals = {k: [quality(p, r) for p, r in zip(prompts, v)] for k, v in responses.items()}
    a, b, qa, qb = [], [], [], []
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            a += scores[x]
            b += scores[y]
            qa += quals[x]
            qb += quals[y]
    return pairwise_accuracy(a, b, qa, qb, min_gap)


def sweep_pairs(prompts: Sequence[str], answers: Mapping[float, Sequence[str]]) -> list[dict]:
    """(prompt, chosen, rejected) rows from one ExPO sweep: the response at each alpha != 0 against the
    response at alpha = 0 to the same prompt with the same seed (so the reward model is checked on the
    extrapolated models' own outputs); none when the sweep has no alpha = 0."""
    base = answers.get(0.0)
    if base is None:
        return []
    return [{"prompt": p, "chosen": a, "rejected": b} for alpha, responses in answers.items() if alpha != 0
            for p, a, b in zip(prompts, responses, base)]
