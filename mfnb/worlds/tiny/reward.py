"""A reward model for the tiny world: a small ``LlamaForSequenceClassification`` trained with TRL's
``RewardTrainer`` on pairs ranked by the world's known quality, cached on disk by its configuration.

ExPO picks alpha by the mean score of a reward model that took no part in training the policies (the
paper uses RM-Mistral-7B).  This one is trained on its own prompts, sampled fresh and excluded from every
split of the world (train, i.e. the DPO prompts, validation and test), so it has seen none of the prompts
it later scores.  Responses are the task's correct and habitual answers plus perturbations of them (words
dropped, duplicated, swapped, replaced, appended, truncated, empty, degenerate repeats, long junk): an
extrapolated policy can drift anywhere, and a reward model that never saw such outputs would be easy to
fool.  Each pair's chosen side has the higher known quality (pairs within ``min_gap`` are skipped).

The text scored is exactly what :class:`mfnb.judges.RewardModelJudge` scores, ``prompt + " " + response``
with no special tokens added: the dataset is tokenized here (TRL's own preprocessing would append an
``eos`` token the judge never appends, moving the scored position).

This is the tiny world's ``reward_model`` and ``reward_pairs`` capability (:class:`mfnb.worlds.tiny.world.TinyWorld`);
how notebook 03 turns a reward model into a judge and measures its agreement with the known quality is
:mod:`mfnb.expo.alpha_judge`.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Callable, Literal, Sequence

from pydantic import Field

from mfnb.core import paths
from mfnb.core.params import Params
from mfnb.training.reward_model import fit_reward_model, save_reward_model
from mfnb.training.runtime import quiet_transformers
from mfnb.worlds.tiny import task as tasks
from mfnb.worlds.tiny.task import build_tokenizer

REWARD_VERSION = 1  # bump when the data recipe or training changes meaning, so old caches are not reused


class RewardModelParams(Params):
    """How the tiny world's reward model is built (every field is part of its cache key)."""

    n_pairs: int = Field(default=8192, ge=8)
    epochs: float = Field(default=2.0, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, ge=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    min_gap: float = Field(default=0.05, ge=0, le=1)
    center_rewards: float = Field(default=0.01, ge=0)
    init: Literal["base", "scratch"] = "base"  # backbone: the world's base model (as real RMs start from an LM)
    seed: int = 0

    def key(self, world_key: str) -> str:
        blob = json.dumps({"version": REWARD_VERSION, "world": world_key, **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------ data


def candidate_responses(example: tasks.Example, rng: random.Random) -> list[str]:
    """Correct and habitual answers and perturbations of both: the responses a policy might produce."""
    correct = example.answer().split()
    habit = example.answer(habit=True).split()
    vocab = tasks.CONTENT_WORDS + tasks.NUMBERS
    out = [correct, habit]
    for words in (correct, habit, correct):
        w = list(words)
        i = rng.randrange(len(w))
        kind = rng.randrange(7)
        if kind == 0 and len(w) > 1:
            w.pop(i)  # drop a word
        elif kind == 1:
            w.insert(i, w[i])  # duplicate a word
        elif kind == 2 and len(w) > 1:
            j = rng.randrange(len(w))
            w[i], w[j] = w[j], w[i]  # swap two words
        elif kind == 3:
            w[i] = rng.choice(vocab)  # replace a word
        elif kind == 4:
            w += rng.sample(vocab, rng.randint(1, 3))  # ramble on
        elif kind == 5:
            w = w[: rng.randint(0, len(w))]  # stop early
        else:
            w = [rng.choice(example.words)] * rng.randint(2, 10)  # degenerate repetition
        out.append(w)
    out.append([])  # no answer
    out.append(rng.choices(vocab, k=rng.randint(6, 16)))  # long junk
    out.append(rng.sample(list(example.words), len(example.words)))  # the words, shuffled
    if example.task == "count":
        out.append([rng.choice(tasks.NUMBERS)])
    return [" ".join(w) for w in out]


def fresh_prompts(world, n: int, seed: int) -> list[str]:
    """``n`` distinct prompts sampled like the world's, none of them in any of the world's splits."""
    p = world.params
    taken = {x for split in world.prompts.values() for x in split}
    rng = random.Random(f"reward-prompts-{seed}")
    seen: dict[str, None] = {}
    for _ in range(50 * n):
        prompt = tasks.sample_example(rng, min_words=p.min_words, max_words=p.max_words).prompt
        if prompt not in taken:
            seen.setdefault(prompt)
            if len(seen) == n:
                return list(seen)
    raise ValueError(f"could only find {len(seen)} fresh prompts outside the world's splits; asked for {n}")


def ranked_pairs(prompts: Sequence[str], quality: Callable[[str, str], float], seed: int,
                 min_gap: float = 0.05) -> list[dict]:
    """One (prompt, chosen, rejected) per prompt: two candidates whose known quality differs by > min_gap."""
    rng = random.Random(f"reward-pairs-{seed}")
    rows = []
    for prompt in prompts:
        example = tasks.parse_prompt(prompt)
        cands = candidate_responses(example, rng)
        scored = [(c, quality(prompt, c)) for c in dict.fromkeys(cands)]
        for _ in range(20):
            (a, qa), (b, qb) = rng.sample(scored, 2)
            if abs(qa - qb) > min_gap:
                chosen, rejected = (a, b) if qa > qb else (b, a)
                rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                             "gap": abs(qa - qb)})
                break
    return rows


# ------------------------------------------------------------------------------------------- building


def reward_model_path(world, params: RewardModelParams, cache_root: str | Path | None = None) -> Path:
    root = Path(cache_root or paths.cache_dir("reward_models"))
    return root / f"{world.key}-rm-{params.key(world.key)}"


def build_reward_model(world, params: RewardModelParams | None = None, *, cache_root: str | Path | None = None,
                       show_progress: bool = True) -> Path:
    """The reward model's folder (model + tokenizer + ``reward.json``), trained only when not cached.

    The folder is written atomically, so a killed build leaves no half-saved model and the next call
    trains again; a finished one is loaded by every later call (and by any other process).
    """
    params = params or RewardModelParams()
    target = reward_model_path(world, params, cache_root)
    if (target / "reward.json").is_file():
        return target
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification


    start = time.perf_counter()
    if hasattr(world, "build"):
        world.build(show_progress=show_progress)
    tokenizer = build_tokenizer()
    torch.manual_seed(params.seed)
    if params.init == "base":
        with quiet_transformers():  # the new score head is reported as "missing", as it should be
            model = LlamaForSequenceClassification.from_pretrained(str(world.model_path("base")), num_labels=1)
    else:
        base_cfg = LlamaConfig.from_pretrained(str(world.model_path("base")))
        base_cfg.num_labels = 1
        model = LlamaForSequenceClassification(base_cfg)
    model.config.pad_token_id = tokenizer.pad_token_id
    prompts = fresh_prompts(world, params.n_pairs, params.seed)
    rows = ranked_pairs(prompts, world.quality, params.seed, params.min_gap)

    def ids(prompt: str, response: str) -> list[int]:  # exactly the text RewardModelJudge.score sees
        return tokenizer(prompt + " " + response)["input_ids"]

    fit = fit_reward_model(model, tokenizer, rows, ids, params, scheduler="cosine", warmup=params.warmup_ratio,
                           logging_steps=50, show_progress=show_progress)
    info = {"params": params.model_dump(), "world": world.key, "n_pairs": len(rows), **fit,
            "seconds": round(time.perf_counter() - start, 1)}
    tokenizer.padding_side = "left"
    return save_reward_model(target, model, tokenizer, info)

