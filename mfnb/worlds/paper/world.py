"""The `paper` world: the papers' hub models and datasets behind the World protocol (:mod:`mfnb.worlds`).

Params (``world: {kind: paper, data: {...}, roles: {...}}``)::

    data:   {dataset: rm_static | ultrafeedback | alpaca_farm | tldr, <the loader's sources, sizes, seed>}
    roles:  {student: {model: lmsys/vicuna-7b-v1.5, chat_template: vicuna, cost: 1.0}, g1: {model: ..., cost: 4.0},
             gpt4_turbo: {references: true}, ...}
    prompt_role: student        # the model the methods train; world.prompts are rendered for it

* **Prompts** come from :mod:`mfnb.worlds.paper.task` with the papers' split sizes and seeds: ``train`` (the
  alignment prompt set), ``validation``, ``test`` (rm-static: 200 / 500; UltraFeedback: its dev prompts and
  AlpacaEval's 805; AlpacaFarm: 200 / 605 of its evaluation set; TL;DR: 10% of validation / test). They are
  rendered with ``prompt_role``'s chat template, because the methods feed ``world.prompts`` to that model as
  they are; :meth:`PaperWorld.query` gives back the dataset's own text (what a judge or reward model reads).
* **Roles** are hub names or local folders standing in for them (:mod:`mfnb.worlds.paper.hub_models`), each with
  its own chat template, cost per response, dtype and ``trust_remote_code`` (off unless set), or
  ``references: true``: a role that answers with the dataset's reference responses (AlpacaEval's GPT-4
  baseline, AlpacaFarm's and TL;DR's references).
* **respond** renders each prompt in the role's own template and samples it with one seed per (prompt,
  occurrence), so a response depends on its prompt, seed and sampling only. ``engine: vllm`` (or ``auto``
  when ``vllm.python`` names a vLLM venv, or vLLM imports here, and a GPU is visible) serves the role with
  vLLM in a process of its own (:mod:`mfnb.models.engines.vllm_server`, requests by :mod:`mfnb.models.engines.served`),
  started at the role's first sample and stopped by :meth:`PaperWorld.close`, by switching roles, by
  :func:`mfnb.models.engines.close_all` (before training), or after every call (``vllm.lifetime: per_call``); else
  our transformers loop (:mod:`mfnb.models.engines.hf`). Every response is stored once (SQLite per role, engine,
  sampling and seed; committed after each chunk): a rerun or a resumed run generates nothing it has, and a
  killed one loses at most a chunk.
* **quality** is None (no known quality: the judges are LLMs and reward models). Capabilities:
  ``preference_pairs`` (the dataset's own pairs, e.g. UltraFeedback binarized for ExPO), ``reward_model``
  (a hub sequence classifier such as RM-Mistral-7B, resolved to a local folder) and ``conflict`` (HbAT's
  demonstrations vs human preferences, :mod:`mfnb.worlds.paper.conflict`).
"""
from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence, Union

from pydantic import Field, model_validator

from mfnb.core import paths
from mfnb.core.params import Params, ParamsError
from mfnb.core.progress import progress as progress_bar
from mfnb.models import load_model, load_tokenizer, resident
from mfnb.models.engines import candidate_seed, vllm_server
from mfnb.models.engines.hf import HFEngine
from mfnb.models.engines.served import ServedEngine
from mfnb.models.engines.vllm_server import VLLMServer, VLLMServerParams
from mfnb.worlds.paper import hub_models
from mfnb.worlds.paper import task as hub_data
from mfnb.worlds.paper.conflict import PaperConflict
from mfnb.worlds.paper.task import DataSource
from mfnb.worlds.shared.best_of_k import Candidate, CandidateStore, store_key

WORLD_VERSION = 1


class RoleSpec(Params):
    """One role: a model (hub name or folder) or the dataset's references."""

    model: str | None = None
    revision: str | None = None
    references: bool = False
    cost: float = Field(default=0.0, ge=0)
    chat_template: str = "auto"      # auto | plain | vicuna | a Jinja template
    trust_remote_code: bool = False
    dtype: str = "auto"              # torch dtype of load(role) and of the transformers sampler's model
    description: str | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.model is None) == (not self.references):
            raise ValueError("give either model: <hub name or folder> or references: true")
        return self


class RmStaticData(Params):
    """Dahoas/rm-static (multi-fidelity paper): 200 validation / 500 test prompts, seeded."""

    dataset: Literal["rm_static"]
    source: DataSource = hub_data.RM_STATIC
    n_validation: int = Field(default=200, ge=1)
    n_test: int = Field(default=500, ge=1)
    n_train: int | None = Field(default=None, ge=1)
    seed: int = 0


class UltraFeedbackData(Params):
    """UltraFeedback binarized (ExPO): its train prompts and pairs, its dev prompts for alpha, AlpacaEval as test."""

    dataset: Literal["ultrafeedback"]
    source: DataSource = hub_data.ULTRAFEEDBACK
    n_train: int | None = Field(default=None, ge=1)
    n_dev: int | None = Field(default=None, ge=1)
    seed: int = 0
    test: Literal["alpaca_eval", "dev"] = "alpaca_eval"
    alpaca_eval: DataSource = hub_data.ALPACA_EVAL
    reference_split: str | None = "gpt4_baseline"


class AlpacaFarmData(Params):
    """AlpacaFarm (HbAT dialogue): SFT split, human preferences, 200 / 605 evaluation instructions."""

    dataset: Literal["alpaca_farm"]
    instructions: DataSource = hub_data.ALPACA_INSTRUCTIONS
    human_preference: DataSource = hub_data.ALPACA_HUMAN_PREFERENCE
    evaluation: DataSource = hub_data.ALPACA_FARM_EVALUATION
    n_validation: int = Field(default=200, ge=1)
    seed: int = 0
    prompt_style: Literal["alpaca", "plain"] = "alpaca"


class TldrData(Params):
    """Reddit TL;DR (HbAT summarization): SFT posts, human comparisons, 10% of validation / test."""

    dataset: Literal["tldr"]
    sft: DataSource = hub_data.TLDR_SFT
    preference: DataSource = hub_data.TLDR_PREFERENCE
    eval_fraction: float = Field(default=0.1, gt=0, le=1)
    n_train: int | None = Field(default=None, ge=1)
    seed: int = 0


DataParams = Annotated[Union[RmStaticData, UltraFeedbackData, AlpacaFarmData, TldrData], Field(discriminator="dataset")]


class PaperWorldParams(Params):
    kind: Literal["paper"] = "paper"
    data: DataParams
    roles: dict[str, RoleSpec] = Field(min_length=1)
    prompt_role: str = "student"
    engine: Literal["auto", "vllm", "hf"] = "auto"   # auto: vLLM when it can run (vllm.python) and a GPU is visible
    engine_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # hf sampler (auto: bf16 where native)
    vllm: VLLMServerParams = Field(default_factory=VLLMServerParams)  # python (its venv), gpu_memory_utilization...
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(default=None, ge=1)
    chunk: int = Field(default=1024, ge=1)         # responses stored after each chunk

    @model_validator(mode="after")
    def _prompt_role(self):
        role = self.roles.get(self.prompt_role)
        if role is None:
            raise ValueError(f"prompt_role: {self.prompt_role!r} is not one of the roles {sorted(self.roles)}")
        if role.model is None:
            raise ValueError(f"prompt_role: {self.prompt_role!r} answers with references; it must be a model")
        return self


def _messages(dataset: str, text: str) -> list[dict[str, str]]:
    """The dataset's prompt as chat messages (an HH dialogue keeps its turns)."""
    if dataset == "rm_static":
        return hub_data.hh_messages(text)
    return [{"role": "user", "content": text}]


class PaperWorld:
    """The papers' models and data (see the module docstring)."""

    kind = "paper"
    quality = None  # no known quality: the papers judge with LLMs and reward models

    def __init__(self, params: PaperWorldParams, source: str = "world"):
        self.params = params
        self.field = source
        if params.engine == "vllm" or params.vllm.python:  # one clear error now, not at the first sample
            vllm_server.resolve_python(params.vllm, f"{source}.vllm", f"{source}.engine")
        self._folders: dict[str, Path] = {}
        self._tokenizers: dict[str, Any] = {}
        self._templates: dict[str, str | None] = {}
        self._rendered: dict[tuple[str, str], str] = {}
        self._responder: tuple[str, Any] | None = None

    @classmethod
    def from_spec(cls, values: Mapping[str, Any], source: str = "world") -> "PaperWorld":
        return cls(PaperWorldParams.validate_mapping(values, source=source), source)

    # -- identity ----------------------------------------------------------------------------------

    @property
    def roles(self) -> list[str]:
        return list(self.params.roles)

    @property
    def costs(self) -> dict[str, float]:
        return {name: role.cost for name, role in self.params.roles.items()}

    def _spec(self, role: str) -> RoleSpec:
        if role not in self.params.roles:
            raise KeyError(f"unknown role {role!r}; this world has {self.roles}")
        return self.params.roles[role]

    def engine_kind(self) -> str:
        """``vllm`` or ``hf``; ``auto`` is vLLM when it can run (``vllm.python`` set, or vLLM importable here)
        and a GPU is visible."""
        if self.params.engine != "auto":
            return self.params.engine
        import torch

        return "vllm" if vllm_server.configured(self.params.vllm) and torch.cuda.is_available() else "hf"

    def identity(self, role: str) -> dict:
        spec = self._spec(role)
        if spec.references:
            return {"references": self.params.data.dataset, "data": self.params.data.model_dump()}
        return {**hub_models.describe_source(spec.model, spec.revision), "chat_template": spec.chat_template,
                "dtype": spec.dtype, "trust_remote_code": spec.trust_remote_code}

    @cached_property
    def key(self) -> str:
        """Identity of the prompts (data, the prompt role's model and template) and of every role."""
        blob = json.dumps({"version": WORLD_VERSION, "data": self.params.data.model_dump(),
                           "prompt_role": self.params.prompt_role,
                           "roles": {r: self.identity(r) for r in self.roles}, "engine": self.engine_kind()},
                          sort_keys=True, default=str)
        return f"paper-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def describe(self, role: str) -> str:
        spec = self._spec(role)
        if spec.description:
            return spec.description
        if spec.references:
            return f"reference responses of {self.params.data.dataset}"
        rev = f"@{spec.revision}" if spec.revision else ""
        return f"{spec.model}{rev} (chat template: {spec.chat_template})"

    def parameters(self, role: str) -> int | None:
        spec = self._spec(role)
        return None if spec.references else hub_models.count_parameters(self.folder(role))

    # -- models ------------------------------------------------------------------------------------

    def folder(self, role: str, download: bool = True) -> Path:
        """The local folder of a role's model, checked to be a causal LM (downloaded once when online)."""
        if role not in self._folders:
            spec = self._spec(role)
            if spec.references:
                raise ParamsError(f"{self.field}.roles.{role}: answers with references; it has no model")
            field = f"{self.field}.roles.{role}.model"
            folder = hub_models.resolve(spec.model, revision=spec.revision, field=field,
                                        trust_remote_code=spec.trust_remote_code, download=download)
            hub_models.check_causal_lm(folder, name=spec.model, field=field, trust_remote_code=spec.trust_remote_code)
            self._folders[role] = folder
        return self._folders[role]

    def tokenizer(self, role: str):
        """The role's tokenizer (left padding), with its chat template set when the params name one."""
        if role not in self._tokenizers:
            spec = self._spec(role)
            tokenizer = load_tokenizer(self.folder(role), trust_remote_code=spec.trust_remote_code)
            template = hub_models.chat_template(spec.chat_template, tokenizer, name=spec.model,
                                                field=f"{self.field}.roles.{role}.chat_template")
            if template is not None:
                tokenizer.chat_template = template
            self._tokenizers[role], self._templates[role] = tokenizer, template
        return self._tokenizers[role]

    def _device(self) -> str | None:
        import torch

        if self.params.device == "auto":
            return "cuda" if torch.cuda.is_available() else None
        if self.params.device == "cuda" and not torch.cuda.is_available():
            raise ParamsError(f"{self.field}.device: cuda, but this machine has no GPU torch can use "
                              f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'not built in'}); run on a GPU "
                              f"node or set {self.field}.device: auto (the CPU when no GPU is visible)")
        return None if self.params.device == "cpu" else "cuda"

    def check(self) -> None:
        """Everything a notebook will need from this world, checked before any work: every role's model (a hub
        name in the cache or reachable, a causal LM, its chat template), the device, and the data. Each failure
        is one error naming the params field and the fix."""
        self.build(show_progress=False)

    def load(self, role: str):
        """A fresh, trainable (model, tokenizer) of a role (on the GPU when one is visible). While it lives, launched
        training processes borrow its GPU memory (:func:`mfnb.models.resident`): a notebook that keeps a 7B model
        for evaluation does not starve them."""
        import copy

        spec = self._spec(role)
        model = load_model(self.folder(role), dtype=spec.dtype, trust_remote_code=spec.trust_remote_code,
                           device=self._device(), show_progress=False)
        return resident(model), copy.deepcopy(self.tokenizer(role))

    def build(self, show_progress: bool = True) -> dict[str, float]:
        """Fetch (when online) and check every role's model, then load the data; seconds per piece."""
        import time

        self._device()  # device: cuda on a machine without a GPU fails here, naming the field
        spent = {}
        for role in progress_bar(self.roles, desc="paper world models", disable=not show_progress, leave=False):
            start = time.perf_counter()
            if not self._spec(role).references:
                self.folder(role)
                self.tokenizer(role)
            spent[role] = time.perf_counter() - start
        start = time.perf_counter()
        _ = self.prompts
        spent["data"] = time.perf_counter() - start
        return spent

    # -- data --------------------------------------------------------------------------------------

    @cached_property
    def data(self) -> hub_data.PaperData:
        """The dataset in the notebooks' schema, with the world's split names (train, validation, test)."""
        d, label = self.params.data, f"{self.field}.data"
        if d.dataset == "rm_static":
            return hub_data.rm_static(d.source, n_validation=d.n_validation, n_test=d.n_test, seed=d.seed,
                                      n_train=d.n_train, label=f"{label}.source")
        if d.dataset == "ultrafeedback":
            uf = hub_data.ultrafeedback(d.source, seed=d.seed, n_train=d.n_train, n_dev=d.n_dev, label=f"{label}.source")
            uf.prompts["validation"] = uf.prompts.pop("dev")
            uf.preference_rows["validation"] = uf.preference_rows.pop("dev")
            if d.test == "alpaca_eval":
                ae = hub_data.alpaca_eval(d.alpaca_eval, reference_split=d.reference_split, label=f"{label}.alpaca_eval")
                uf.prompts["test"], uf.references["test"] = ae.prompts["eval"], ae.references["eval"]
            else:
                uf.prompts["test"] = list(uf.prompts["validation"])
            return uf
        if d.dataset == "alpaca_farm":
            af = hub_data.alpaca_farm(d.instructions, d.human_preference, d.evaluation, n_validation=d.n_validation,
                                      seed=d.seed, prompt_style=d.prompt_style, label=label)
            sft = [r["prompt"] for r in af.sft_rows["train"]]
            pref = [r["prompt"] for r in af.preference_rows["train"]]
            af.prompts["train"] = list(dict.fromkeys(sft + pref))
            return af
        return hub_data.tldr(d.sft, d.preference, eval_fraction=d.eval_fraction, seed=d.seed, n_train=d.n_train,
                             label=label)

    def render(self, role: str, text: str) -> str:
        """The dataset prompt ``text`` as ``role`` reads it (its chat template, or plain text with its BOS)."""
        key = (role, text)
        if key not in self._rendered:
            tokenizer = self.tokenizer(role)
            self._rendered[key] = hub_models.render(tokenizer, self._templates[role], text,
                                                    _messages(self.params.data.dataset, text))
        return self._rendered[key]

    @cached_property
    def _texts(self) -> dict[str, str]:
        """Rendered prompt (as the prompt role reads it) -> the dataset's text, for every prompt of the world."""
        d = self.data
        texts = [p for split in d.prompts.values() for p in split]
        texts += [r["prompt"] for rows in (*d.preference_rows.values(), *d.sft_rows.values()) for r in rows]
        return {self.render(self.params.prompt_role, t): t for t in dict.fromkeys(texts)}

    @cached_property
    def prompts(self) -> dict[str, list[str]]:
        role, d = self.params.prompt_role, self.data
        _ = self._texts
        return {split: [self.render(role, t) for t in d.prompts[split]] for split in ("train", "validation", "test")}

    def query(self, prompt: str) -> str:
        """The dataset's own text of a world prompt (what a judge or a reward model should read)."""
        return self._texts.get(prompt, prompt)

    @cached_property
    def _references(self) -> dict[str, str]:
        d = self.data
        return {t: r for split, refs in d.references.items() for t, r in zip(d.prompts[split], refs)}

    def references(self, prompts: Sequence[str]) -> list[str]:
        """The dataset's reference response of each world prompt (validation and test)."""
        out = []
        for prompt in prompts:
            text = self.query(prompt)
            if text not in self._references:
                raise KeyError(f"no reference response in {self.params.data.dataset} for prompt {text[:80]!r}")
            out.append(self._references[text])
        return out

    # -- responses ---------------------------------------------------------------------------------

    def _engine(self, role: str):
        """The sampler of ``role``; one at a time (switching roles frees the previous model or server)."""
        if self._responder is not None and self._responder[0] == role and not self._responder[1].closed:
            return self._responder[1]
        self.close()
        spec = self._spec(role)
        if self.engine_kind() == "vllm":
            v = self.params.vllm
            server = VLLMServer(self.folder(role), v, trust_remote_code=spec.trust_remote_code, name=role,
                                field=f"{self.field}.vllm")
            engine = ServedEngine(self.tokenizer(role), server=server, concurrency=v.concurrency,
                                  timeout=v.request_timeout, retries=v.retries, name=f"vLLM {role}")
        else:
            model = load_model(self.folder(role), dtype=spec.dtype, trust_remote_code=spec.trust_remote_code,
                               device=self._device(), show_progress=False)
            engine = HFEngine(model, self.tokenizer(role), dtype=self.params.engine_dtype,
                              threads=self.params.torch_threads)
        self._responder = (role, engine)
        return engine

    def close(self) -> None:
        """Free the sampler: the hf engine's model, or the vLLM server process (and its GPU memory)."""
        if self._responder is not None:
            engine = self._responder[1]
            self._responder = None
            engine.close()
            import gc

            gc.collect()
            import torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()

    def _store(self, role: str, sampling, seed: int):
        kind = self.engine_kind()  # vllm: the same key as the in-process engine had (same seeds, same sampler)
        config = {"model": self.identity(role), "engine": kind,
                  "engine_dtype": self.params.engine_dtype if kind == "hf" else self.params.vllm.dtype,
                  "sampling": sampling.model_dump(exclude={"batch_size", "engine"}), "seed": seed}
        return CandidateStore(paths.cache_dir("paper_responses") / f"{role}-{store_key(**config)}.sqlite", config)

    def respond(self, role: str, prompts: Sequence[str], sampling, seed: int = 0, *,
                show_progress: bool = False) -> list[str]:
        """One response per prompt: the role's model in its own chat template (stored), or the references."""

        spec = self._spec(role)
        if spec.references:
            return self.references(prompts)
        texts = [self.query(p) for p in prompts]
        seen: dict[str, int] = {}
        rows = []  # (dataset text, occurrence j)
        for t in texts:
            rows.append((t, seen.get(t, 0)))
            seen[t] = seen.get(t, 0) + 1
        store = self._store(role, sampling, seed)
        try:
            have = store.get(list(seen), max(seen.values(), default=0))
            missing = list(dict.fromkeys((t, j) for t, j in rows if j not in have[t]))
            chunks = [missing[i:i + self.params.chunk] for i in range(0, len(missing), self.params.chunk)]
            for part in progress_bar(chunks, desc=f"sampling {role}", disable=not show_progress or not chunks,
                                     leave=False):
                engine = self._engine(role)
                rendered = [self.render(role, t) for t, _ in part]
                seeds = [candidate_seed(seed, t, j) for t, j in part]
                generation = engine.generate(rendered, sampling, seeds=seeds)
                new = [(t, Candidate(j, text, n, 0.0))
                       for (t, j), text, n in zip(part, generation.texts, generation.new_tokens)]
                store.put(new)
                for t, c in new:
                    have[t][c.j] = c
            return [have[t][j].text for t, j in rows]
        finally:
            store.close()
            if self.params.vllm.lifetime == "per_call" and self.engine_kind() == "vllm":
                self.close()

    # -- capabilities ------------------------------------------------------------------------------

    def preference_pairs(self, prompts: Sequence[str], source: str = "dataset") -> list[dict]:
        """The dataset's own preference pairs for these world prompts (UltraFeedback binarized for ExPO)."""
        dataset = self.params.data.dataset
        if source not in ("dataset", dataset):
            raise ParamsError(f"preference.source: the paper world's pairs come from its dataset ({dataset}); set "
                              f"preference.source: dataset (got {source!r})")
        out = []
        for prompt in prompts:
            pair = self._pairs.get(self.query(prompt))
            if pair is None:
                raise KeyError(f"{dataset} has no preference pair for prompt {self.query(prompt)[:80]!r}")
            out.append({"prompt": prompt, "chosen": pair["chosen"], "rejected": pair["rejected"]})
        return out

    @cached_property
    def _pairs(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for rows in self.data.preference_rows.values():
            for r in rows:
                out.setdefault(r["prompt"], r)
        return out

    def reward_model(self, spec: Mapping[str, Any], show_progress: bool = True) -> Path:
        """The local folder of a hub reward model (``{name, revision, trust_remote_code}``), checked to be a
        one-logit sequence classifier; downloaded once when the hub is reachable."""
        values = dict(spec)
        unknown = sorted(set(values) - {"name", "revision", "trust_remote_code"})
        if unknown or not values.get("name"):
            raise ParamsError(f"reward_model: the paper world takes {{name: <hub name or folder>, revision, "
                              f"trust_remote_code}} (or path: <folder>); got {sorted(values)}")
        trust = bool(values.get("trust_remote_code", False))
        folder = hub_models.resolve(values["name"], revision=values.get("revision"), field="reward_model.name",
                                    trust_remote_code=trust)
        hub_models.check_reward_model(folder, name=values["name"], field="reward_model.name", trust_remote_code=trust)
        return folder

    def conflict(self, spec: Mapping[str, Any]):
        """HbAT's alignment tax on the paper data (:mod:`mfnb.worlds.paper.conflict`)."""

        return PaperConflict.from_spec(self, spec)
