"""The `tiny` world: a word-instruction task, a word-level tokenizer and a ladder of tiny Llama models
(a habit-ridden student and fidelity experts with fewer habits), built offline and cached by config.

Build recipe: one base model learns every task correctly (SFT from scratch); each role then fine-tunes
from the base on answers that carry its habits, one process per core (the same weights as one by one).
Building from nothing takes about 4 minutes on 2 cores (base 135 s, the four roles 98 s in two processes
against 166 s one by one); later calls load the cached folders in well under a second.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field, model_validator

from mfnb.core import paths
from mfnb.core.atomic import atomic_dir, write_json
from mfnb.core.params import Params, ParamsError
from mfnb.core.progress import progress as progress_bar
from mfnb.worlds.tiny import task as tasks
from mfnb.worlds.tiny.conflict import ConflictParams, ConflictWorld
from mfnb.worlds.tiny.task import build_tokenizer

WORLD_VERSION = 1  # bump when the task or recipe changes meaning, so old caches are not reused


class ArchParams(Params):
    """A small Llama."""

    layers: int = Field(default=2, ge=1)
    hidden: int = Field(default=128, ge=8)
    heads: int = Field(default=4, ge=1)
    intermediate: int = Field(default=256, ge=8)
    max_positions: int = Field(default=64, ge=16)


class TrainRecipe(Params):
    steps: int = Field(ge=1)
    lr: float = Field(gt=0)
    batch_size: int = Field(default=64, ge=1)


class RoleParams(Params):
    """One model of the ladder: which task habits it keeps and how often it falls into them."""

    habits: list[str] = Field(default_factory=list)
    habit_rate: float = Field(default=0.75, ge=0.0, le=1.0)
    cost: float = Field(default=0.0, ge=0.0)


class TinyWorldParams(Params):
    kind: Literal["tiny"] = "tiny"
    seed: int = 0
    n_validation: int = Field(default=200, ge=1)
    n_test: int = Field(default=500, ge=1)
    n_train: int = Field(default=20000, ge=1)
    min_words: int = Field(default=3, ge=2)
    max_words: int = Field(default=5, ge=2)
    torch_threads: int | None = Field(default=1, ge=1)  # tiny models train fastest on one thread
    arch: ArchParams = ArchParams()
    base: TrainRecipe = TrainRecipe(steps=1000, lr=3e-3)
    finetune: TrainRecipe = TrainRecipe(steps=300, lr=1e-3)
    roles: dict[str, RoleParams] = Field(default_factory=lambda: {
        "student": RoleParams(habits=list(tasks.TASKS), cost=1.0),
        "g1": RoleParams(habits=["repeat", "last", "pick"], cost=1.0),
        "g2": RoleParams(habits=["repeat", "pick"], cost=4.0),
        "g3": RoleParams(habits=[], cost=16.0),
    })

    @model_validator(mode="after")
    def _check(self):
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) > max_words ({self.max_words})")
        for name, role in self.roles.items():
            unknown = set(role.habits) - set(tasks.TASKS)
            if unknown:
                raise ValueError(f"roles.{name}.habits: unknown task(s) {sorted(unknown)}; known: {list(tasks.TASKS)}")
        return self

    def key(self) -> str:
        blob = json.dumps({"version": WORLD_VERSION, **self.model_dump(exclude={"roles", "kind", "torch_threads"})}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def role_key(world: TinyWorldParams, role: RoleParams) -> str:
    blob = json.dumps({"world": world.key(), "role": role.model_dump(exclude={"cost"})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def split_prompts(params: TinyWorldParams) -> dict[str, list[str]]:
    """Fixed, seeded, disjoint prompt splits: train (the alignment prompt set X), validation, test."""
    rng = random.Random(params.seed)
    wanted = params.n_train + params.n_validation + params.n_test
    seen: dict[str, None] = {}
    for _ in range(wanted * 20):
        seen.setdefault(tasks.sample_example(rng, min_words=params.min_words, max_words=params.max_words).prompt)
        if len(seen) == wanted:
            break
    prompts = list(seen)
    if len(prompts) < wanted:
        raise ValueError(f"the task space holds only {len(prompts)} distinct prompts; asked for {wanted}")
    return {
        "validation": prompts[: params.n_validation],
        "test": prompts[params.n_validation: params.n_validation + params.n_test],
        "train": prompts[params.n_validation + params.n_test:],
    }


def _training_rows(params: TinyWorldParams, role: RoleParams | None, n: int, seed: int,
                   exclude: set[str]) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        example = tasks.sample_example(rng, min_words=params.min_words, max_words=params.max_words)
        if example.prompt in exclude:
            continue
        habit = role is not None and example.task in role.habits and rng.random() < role.habit_rate
        rows.append({"prompt": example.prompt, "completion": " " + example.answer(habit=habit)})
    return rows


def _new_model(params: TinyWorldParams, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(params.seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=params.arch.hidden,
                         intermediate_size=params.arch.intermediate, num_hidden_layers=params.arch.layers,
                         num_attention_heads=params.arch.heads, num_key_value_heads=params.arch.heads,
                         max_position_embeddings=params.arch.max_positions, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def _sft(model, tokenizer, rows: list[dict], recipe: TrainRecipe, seed: int, out: Path):
    from mfnb.training import sft  # deferred: loads torch

    sft.train(model, tokenizer, rows, lr=recipe.lr, steps=recipe.steps, batch_size=recipe.batch_size,
              seed=seed)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def _fine_tune_role(params_json: str, cache_root: str, name: str, index: int) -> float:
    """A worker process's share of :meth:`TinyWorld.build`: one role's fine-tune (same seeds, same weights)."""
    from mfnb.models import torch_threads  # deferred: loads torch

    world = TinyWorld(TinyWorldParams.model_validate_json(params_json), cache_root=Path(cache_root))
    with torch_threads(world.params.torch_threads):
        return world._fine_tune(name, index)


class TinyWorld:
    """Prompts, quality function, costs and the cached model folders of one tiny world.

    Implements the :mod:`mfnb.worlds` protocol; every role is a model that samples its own responses, and
    the world also offers ExPO's preference pairs and reward model and HbAT's conflict.
    """

    kind = "tiny"

    def __init__(self, params: TinyWorldParams | None = None, cache_root: Path | None = None):
        self.params = params or TinyWorldParams()
        self.root = Path(cache_root or paths.cache_dir("worlds")) / f"tiny-{self.params.key()}"
        self._responders: dict[str, tuple] = {}  # role -> (model, tokenizer) kept for respond()

    @classmethod
    def from_spec(cls, values: Mapping[str, Any], source: str = "world") -> "TinyWorld":
        """The world of ``world: {kind: tiny, ...}`` params (validated; errors name the field)."""
        return cls(TinyWorldParams.validate_mapping(values, source=source))

    @cached_property
    def prompts(self) -> dict[str, list[str]]:
        return split_prompts(self.params)

    @staticmethod
    def quality(prompt: str, response: str) -> float:
        return tasks.quality(prompt, response)

    @property
    def roles(self) -> list[str]:
        return list(self.params.roles)

    @property
    def costs(self) -> dict[str, float]:
        return {name: role.cost for name, role in self.params.roles.items()}

    @property
    def key(self) -> str:
        """Identifies this world's prompts and models (for caches of responses and verdicts)."""
        return f"tiny-{self.params.key()}"

    def habits(self, role: str) -> list[str]:
        return list(self.params.roles[role].habits)

    def describe(self, role: str) -> str:
        habits = self.habits(role)
        return "habits: " + ", ".join(habits) if habits else "no habits"

    def identity(self, role: str) -> dict:
        """The world's params and the role's model folder (whose name hashes the role's recipe)."""
        return {"world": self.params.key(), "role": self.model_path(role).name}

    def parameters(self, role: str) -> int:
        from mfnb.models import count_parameters  # deferred: loads torch

        return count_parameters(self.load(role)[0])

    def model_path(self, role: str) -> Path:
        if role == "base":
            return self.root / "base"
        if role not in self.params.roles:
            raise KeyError(f"unknown role {role!r}; this world has {self.roles}")
        return self.root / f"{role}-{role_key(self.params, self.params.roles[role])}"

    def is_built(self) -> bool:
        return all((self.model_path(r) / "config.json").is_file() for r in ["base", *self.roles])

    def build(self, show_progress: bool = True, processes: int | None = None) -> dict[str, float]:
        """Train whatever is not cached yet; returns seconds spent per model (0 for cached ones).
        ``processes``: how many roles fine-tune at once (None: one per CPU core; the weights are the same)."""
        from mfnb.models import torch_threads  # deferred: loads torch

        with torch_threads(self.params.torch_threads):
            return self._build(show_progress, processes)

    def _build(self, show_progress: bool, processes: int | None) -> dict[str, float]:
        tokenizer = build_tokenizer()
        held_out = set(self.prompts["validation"]) | set(self.prompts["test"])
        spent = {}
        base_dir = self.model_path("base")
        if not (base_dir / "config.json").is_file():
            start = time.perf_counter()
            p = self.params
            rows = _training_rows(p, None, p.base.steps * p.base.batch_size, p.seed + 1, held_out)
            _sft(_new_model(p, tokenizer), tokenizer, rows, p.base, p.seed, base_dir)
            spent["base"] = time.perf_counter() - start
        missing = [(i, name) for i, name in enumerate(self.params.roles)
                   if not (self.model_path(name) / "config.json").is_file()]
        spent.update({name: 0.0 for name in self.params.roles})
        workers = min(len(missing), processes or os.cpu_count() or 1)
        bar = dict(total=len(missing), desc="tiny world roles", disable=not show_progress, leave=False)
        if workers > 1:  # the roles fine-tune independently from the base: one process per core
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                jobs = {pool.submit(_fine_tune_role, self.params.model_dump_json(), str(self.root.parent), name, i): name
                        for i, name in missing}
                for job in progress_bar(as_completed(jobs), **bar):
                    spent[jobs[job]] = job.result()
        else:
            for i, name in progress_bar(missing, **bar):
                spent[name] = self._fine_tune(name, i)
        write_json(self.root / "world.json", {"params": self.params.model_dump(), "key": self.params.key()})
        return spent

    def _fine_tune(self, name: str, index: int) -> float:
        """Fine-tune role ``name`` (the ``index``-th) from the base on answers with its habits; seconds."""
        from mfnb.models import load_model  # deferred: loads torch

        start = time.perf_counter()
        p = self.params
        held_out = set(self.prompts["validation"]) | set(self.prompts["test"])
        model = load_model(self.model_path("base"), show_progress=False)
        rows = _training_rows(p, p.roles[name], p.finetune.steps * p.finetune.batch_size, p.seed + 100 + index,
                              held_out)
        _sft(model, build_tokenizer(), rows, p.finetune, p.seed + index, self.model_path(name))
        return time.perf_counter() - start

    def load(self, role: str):
        """A fresh (model, tokenizer) for a role, building the world first if needed."""
        from mfnb.models import load_model, load_tokenizer  # deferred: loads torch

        if not (self.model_path(role) / "config.json").is_file():
            self.build()
        return (load_model(self.model_path(role), show_progress=False),
                load_tokenizer(self.model_path(role)))

    def respond(self, role: str, prompts: Sequence[str], sampling, seed: int = 0, *,
                show_progress: bool = False) -> list[str]:
        """One sampled response per prompt from the role's model (loaded once, kept for later calls)."""
        from mfnb.models import generate  # deferred: loads torch

        if role not in self._responders:
            self._responders[role] = self.load(role)
        model, tokenizer = self._responders[role]
        return generate(model, tokenizer, list(prompts), sampling, seed=seed, desc=f"sampling {role}",
                        show_progress=show_progress)

    def tokenizer(self):
        from mfnb.models import load_tokenizer  # deferred: loads torch

        return load_tokenizer(self.model_path("base")) if self.is_built() else build_tokenizer()

    # -- capabilities used by single notebooks -----------------------------------------------------

    def preference_pairs(self, prompts: Sequence[str], source: str = "correct_vs_habit") -> list[dict]:
        """ExPO's preference data: chosen = the correct answer, rejected = the task's habit (the
        student's systematic mistake), both known to the world."""
        if source != "correct_vs_habit":
            raise ParamsError(f"preference.source: the tiny world makes 'correct_vs_habit' pairs, not {source!r}")
        rows = []
        for prompt in prompts:
            example = tasks.parse_prompt(prompt)
            rows.append({"prompt": prompt, "chosen": example.answer(), "rejected": example.answer(habit=True)})
        return rows

    def reward_model(self, spec: Mapping[str, Any], show_progress: bool = True) -> Path:
        """ExPO's reward model for this world (``mfnb.worlds.tiny.reward``), built once and cached by ``spec``."""
        from mfnb.worlds.tiny import reward  # deferred: loads torch

        params = reward.RewardModelParams.validate_mapping(dict(spec), source="reward_model")
        return reward.build_reward_model(self, params, show_progress=show_progress)

    def reward_pairs(self, prompts: Sequence[str], seed: int) -> list[dict]:
        """Pairs of correct, habitual and perturbed answers ranked by the known quality (the recipe of
        the reward model's training pairs, on prompts of the caller's choice)."""
        from mfnb.worlds.tiny import reward  # deferred: loads torch

        return reward.ranked_pairs(list(prompts), self.quality, seed)

    def conflict(self, spec: Mapping[str, Any]):
        """HbAT's alignment tax on this world (``mfnb.worlds.tiny.conflict``)."""

        return ConflictWorld(ConflictParams.validate_mapping(dict(spec), source="conflict"))
