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

This is the tiny world's ``reward_model`` and ``reward_pairs`` capability (:class:`mfnb.worlds.tiny.TinyWorld`);
how notebook 03 turns a reward model into a judge and measures its agreement with the known quality is
:mod:`mfnb.expo.reward`.
"""
from __future__ import annotations

import hashlib
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Callable, Literal, Sequence

from pydantic import Field

from mfnb import paths
from mfnb.atomic import atomic_dir, write_json
from mfnb.params import Params
from mfnb.worlds import tasks

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

    from mfnb.sft import quiet_transformers
    from mfnb.worlds.tiny import build_tokenizer

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


def fit_reward_model(model, tokenizer, rows: Sequence[dict], ids: Callable[[str, str], list[int]], params, *,
                     scheduler: str, warmup: float, logging_steps: int, show_progress: bool) -> dict:
    """TRL's RewardTrainer (Bradley-Terry) on ranked (prompt, chosen, rejected) rows, tokenized by ``ids`` (the
    text the judge will score); ``params`` gives lr, epochs, batch_size, seed and center_rewards.  Returns the
    training loss and the last logged line; the model is left in eval mode."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    from mfnb.sft import quiet_datasets

    dataset = Dataset.from_list([{"chosen_ids": ids(r["prompt"], r["chosen"]),
                                  "rejected_ids": ids(r["prompt"], r["rejected"])} for r in rows])
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="mfnb-rm-") as out, quiet_datasets():
        config = RewardConfig(output_dir=out, learning_rate=params.lr, num_train_epochs=params.epochs,
                              per_device_train_batch_size=params.batch_size, warmup_steps=warmup,
                              lr_scheduler_type=scheduler, seed=params.seed, data_seed=params.seed,
                              center_rewards_coefficient=params.center_rewards or None,
                              bf16=gpu and torch.cuda.is_bf16_supported(), activation_checkpointing=False,
                              report_to="none", save_strategy="no", logging_steps=logging_steps,
                              disable_tqdm=not show_progress, dataloader_pin_memory=gpu, max_length=None)
        trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
    model.eval()
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {"train_loss": result.metrics.get("train_loss"), "last_logged": history[-1] if history else {}}


def save_reward_model(target: Path, model, tokenizer, info: dict) -> Path:
    """Model, tokenizer and ``reward.json`` (what was trained, how) into ``target``, all or nothing."""
    from mfnb.sft import quiet_transformers

    with atomic_dir(target) as tmp, quiet_transformers():
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "reward.json", info)
    return target
