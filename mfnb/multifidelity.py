"""Multi-fidelity alignment (paper 000, Algorithm 2): the loop, its cost ledger, vanilla baselines at
equal budget, crash-safe resume, and the tables and figures of notebook 02.

Algorithm 2, as implemented (``run_multifidelity``)::

    for m = 1..M:                                     # cheapest expert first
        look: WinFreq(f(theta_t), g^(m)) on the validation prompts
        while WinFreq < gamma and ||theta_t - theta_{t-1}|| > epsilon:
            t += 1; draw B train prompts; y1 = student, y2 = g^(m); (judge the pair); D^(m) += pairs
            theta_t = DPO(theta_{t-1}, D^(m))        # expert chosen, student rejected, all of D^(m)
            look again
    at m = M also stop when the look declines vs the previous look, and keep the best look at M.

Reading choices (the paper leaves them open): the parameter-change test is vacuous at the first look of
a fidelity (no update made there yet); ``WinFreq >= gamma`` ends a fidelity (the while loop runs while
``< gamma``); a per-fidelity iteration cap, a total iteration cap and a budget cap are our additions and
are labelled as such wherever they decide.

Costs (``Ledger``): every expert response, student response and judgement is a ledger row with its
fidelity and unit cost.  The paper's Lambda = sum_t n_t lambda^(m_t) is the cost of the expert responses
bought for training; student, judge and evaluation costs are separate columns, never inside Lambda.

Resume: each run is a folder with ``state.json`` (the commit point, rewritten atomically after every
look), ``journal/`` (what was bought: training batches, validation responses; written before they are
used) and ``adapters/`` (LoRA weights after every iteration).  Every random choice is seeded by
``derive_seed(seed, purpose, t)`` and the policy is reloaded from its saved adapter after every
iteration, so a run killed at any point continues from its last commit, re-buys nothing that reached the
journal, and ends with the same trace and ledger as an uninterrupted run.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import pickle
import random
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from mfnb import stats
from mfnb.atomic import write_json
from mfnb.dpo import DPOParams
from mfnb.models import LoraParams, SamplingParams
from mfnb.params import Params, ParamsError

STATE_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------

class Fidelity(Params):
    """One expert g^(m): a model (role) of the world and its cost per response, lambda^(m)."""

    role: str = Field(min_length=1)
    cost: float = Field(gt=0)


class AlgorithmParams(Params):
    """Algorithm 2's inputs and our caps.  Defaults are the paper's where it gives them."""

    student: str = Field(default="student", min_length=1)
    fidelities: list[Fidelity] = Field(min_length=1)
    student_cost: float = Field(default=1.0, ge=0)      # per student response (not in Lambda)
    judge_cost: float = Field(default=0.0, ge=0)        # per judgement (not in Lambda; the paper prices none)
    gamma: float = Field(default=0.3, gt=0, lt=1)
    epsilon: float = Field(default=1e-4, ge=0)          # ||theta_t - theta_{t-1}|| on the LoRA weights
    delta: float = Field(default=0.05, gt=0, lt=1)      # Lemma 1 confidence for the reported radii
    n_validation: int = Field(default=200, ge=1)
    max_iters_per_fidelity: int | None = Field(default=None, ge=1)
    max_iters: int | None = Field(default=None, ge=1)
    max_budget: float | None = Field(default=None, gt=0)
    judge_train_pairs: bool = True
    judge_retries: int = Field(default=2, ge=0)
    monitor: bool = True                                # judge every model against every expert
    sampling: SamplingParams = SamplingParams()
    dpo: DPOParams = DPOParams(lr=5e-4)
    lora: LoraParams = LoraParams()

    @field_validator("fidelities")
    @classmethod
    def _increasing_costs(cls, fidelities: list[Fidelity]) -> list[Fidelity]:
        costs = [f.cost for f in fidelities]
        if any(b <= a for a, b in zip(costs, costs[1:])):
            raise ValueError(f"costs must increase with the fidelity (cheapest expert first), got {costs}")
        roles = [f.role for f in fidelities]
        if len(set(roles)) != len(roles):
            raise ValueError(f"each expert may appear once, got roles {roles}")
        return fidelities

    @model_validator(mode="after")
    def _student_is_not_an_expert(self):
        if self.student in [f.role for f in self.fidelities]:
            raise ValueError(f"student: {self.student!r} is also listed in fidelities")
        return self

    @property
    def costs(self) -> list[float]:
        return [f.cost for f in self.fidelities]

    @property
    def roles(self) -> list[str]:
        return [f.role for f in self.fidelities]


class RunConfig(AlgorithmParams):
    """One trace: Algorithm 2 with batch size B and a seed."""

    batch_size: int = Field(default=512, ge=1)
    seed: int = 0


class TracesParams(AlgorithmParams):
    """Parameters of notebooks/02_multifidelity_traces.ipynb (one trace per batch size and seed)."""

    profile: str
    batch_sizes: list[int] = Field(min_length=1)
    trace_seeds: list[int] = Field(min_length=1)
    vanilla_fidelities: list[int] = Field(default_factory=list)
    n_test: int = Field(default=500, ge=1)
    test_sampling: SamplingParams = SamplingParams(top_p=0.95, top_k=50)
    judge: dict[str, str | float | int | bool | None] = Field(default_factory=lambda: {"kind": "oracle"})
    torch_threads: int | None = Field(default=1, ge=1)
    runs_dir: str | None = None

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, values: list[int]) -> list[int]:
        if any(b < 1 for b in values):
            raise ValueError(f"every batch size B must be >= 1, got {values}")
        return values

    @model_validator(mode="after")
    def _vanilla_in_range(self):
        bad = [m for m in self.vanilla_fidelities if not 1 <= m <= len(self.fidelities)]
        if bad:
            raise ValueError(f"vanilla_fidelities: {bad} not in 1..{len(self.fidelities)} (1-based fidelity index)")
        return self

    def run_config(self, batch_size: int, seed: int) -> RunConfig:
        fields = {k: v for k, v in self.model_dump().items() if k in AlgorithmParams.model_fields}
        return RunConfig.validate_mapping({**fields, "batch_size": batch_size, "seed": seed}, "TracesParams")


def check_experts(config: AlgorithmParams, available: Sequence[str]) -> None:
    """A missing student or expert is an error that names the field (before anything is spent)."""
    if config.student not in available:
        raise ParamsError(f"parameter 'student': {config.student!r} is not a model of this world "
                          f"(available: {list(available)})")
    for i, fid in enumerate(config.fidelities):
        if fid.role not in available:
            raise ParamsError(f"parameter 'fidelities[{i}].role': expert {fid.role!r} is not a model of this "
                              f"world (available: {list(available)})")


def derive_seed(seed: int, *parts: Any) -> int:
    """A 31-bit seed from (seed, purpose, iteration, ...): the same on every run and every resume."""
    blob = json.dumps([seed, *parts], default=str).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") % (2**31 - 1)


# ----------------------------------------------------------------------------------------------
# Backends: who generates and who learns
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prompts:
    train: list[str]
    validation: list[str]
    test: list[str]


class Backend(Protocol):
    """What the algorithm needs from models.  ``TinyBackend`` is the real one; tests use scripted ones."""

    roles: list[str]

    def reset_policy(self, seed: int, lora: LoraParams) -> None: ...
    def save_policy(self, path: Path) -> None: ...
    def load_policy(self, path: Path) -> None: ...
    def policy_vector(self, path: Path | None = None) -> np.ndarray: ...
    def generate_student(self, prompts: list[str], seed: int, sampling: SamplingParams) -> list[str]: ...
    def generate_expert(self, role: str, prompts: list[str], seed: int, sampling: SamplingParams) -> list[str]: ...
    def update(self, prompts: list[str], chosen: list[str], rejected: list[str], seed: int,
               dpo: DPOParams) -> dict: ...


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft's PeftModel reads transformers' deprecated ``is_gradient_checkpointing`` on every wrap and
    warns each time; the warning says nothing about our runs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


class TinyBackend:
    """The tiny world's student (a LoRA policy) and experts, on CPU."""

    def __init__(self, world, student: str = "student"):
        self.world = world
        self.student = student
        self.roles = list(world.roles)
        self.key = f"tiny-{world.params.key()}-{student}"  # part of every run's identity
        self._experts: dict[str, Any] = {}
        self.policy = None
        self.tokenizer = None

    @property
    def prompts(self) -> Prompts:
        p = self.world.prompts
        return Prompts(p["train"], p["validation"], p["test"])

    def _fresh_base(self):
        model, tokenizer = self.world.load(self.student)
        self.tokenizer = tokenizer
        return model

    def reset_policy(self, seed: int, lora: LoraParams) -> None:
        import torch

        from mfnb.models import attach_lora

        base = self._fresh_base()
        with torch.random.fork_rng(devices=[]), _quiet_peft():
            torch.manual_seed(seed)  # LoRA A is random; B = 0 so the policy starts as the student
            self.policy = attach_lora(base, lora)

    def save_policy(self, path: Path) -> None:
        from mfnb.models import save_adapter

        save_adapter(self.policy, path)

    def load_policy(self, path: Path) -> None:
        from mfnb.models import load_adapter

        with _quiet_peft():
            self.policy = load_adapter(self._fresh_base(), path, trainable=True)
        self.policy.eval()

    def policy_vector(self, path: Path | None = None) -> np.ndarray:
        """The trainable LoRA weights as one vector (sorted by name), of the live policy or a saved one."""
        if path is None:
            from peft import get_peft_model_state_dict

            tensors = get_peft_model_state_dict(self.policy)
        else:
            from safetensors.torch import load_file

            tensors = load_file(str(Path(path) / "adapter_model.safetensors"))
        return np.concatenate([tensors[k].detach().float().flatten().numpy() for k in sorted(tensors)])

    def generate_student(self, prompts, seed, sampling):
        from mfnb.models import generate

        return generate(self.policy, self.tokenizer, list(prompts), sampling, seed=seed, show_progress=False)

    def generate_expert(self, role, prompts, seed, sampling):
        from mfnb.models import generate

        if role not in self._experts:
            self._experts[role] = self.world.load(role)
        model, tokenizer = self._experts[role]
        return generate(model, tokenizer, list(prompts), sampling, seed=seed, show_progress=False)

    def update(self, prompts, chosen, rejected, seed, dpo):
        from mfnb.dpo import dpo_update, preference_dataset

        data = preference_dataset(list(prompts), list(chosen), list(rejected), drop_identical=dpo.drop_identical)
        with _quiet_peft():
            metrics = dpo_update(self.policy, self.tokenizer, data, dpo, seed=seed)
        metrics["pairs_used"] = len(data)
        return metrics


# ----------------------------------------------------------------------------------------------
# Ledger
# ----------------------------------------------------------------------------------------------

LEDGER_COLUMNS = ["run", "t", "phase", "fidelity", "payer", "role", "n", "unit_cost", "cost"]
PHASES = ("train", "evaluation", "test", "analysis")


def ledger_row(run: str, t: int, phase: str, fidelity: int | None, payer: str, role: str, n: int,
               unit_cost: float) -> dict:
    """One purchase: ``n`` responses (payer expert/student) or judgements (payer judge) at ``unit_cost``."""
    if phase not in PHASES:
        raise ValueError(f"ledger phase must be one of {PHASES}, got {phase!r}")
    if payer not in ("expert", "student", "judge"):
        raise ValueError(f"ledger payer must be expert, student or judge, got {payer!r}")
    return {"run": run, "t": int(t), "phase": phase, "fidelity": fidelity, "payer": payer, "role": role,
            "n": int(n), "unit_cost": float(unit_cost), "cost": float(n) * float(unit_cost)}


def ledger_frame(rows: Sequence[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=LEDGER_COLUMNS)
    frame["fidelity"] = frame["fidelity"].astype("Int64")
    return frame


def paper_lambda(rows: Sequence[dict] | pd.DataFrame, through_fidelity: int | None = None) -> float:
    """The paper's Lambda = sum_t n_t lambda^(m_t): expert responses bought for training, optionally
    only those of fidelities <= ``through_fidelity``."""
    frame = rows if isinstance(rows, pd.DataFrame) else ledger_frame(rows)
    sel = (frame["phase"] == "train") & (frame["payer"] == "expert")
    if through_fidelity is not None:
        sel &= frame["fidelity"].fillna(0) <= through_fidelity
    return float(frame.loc[sel, "cost"].sum())


def ledger_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run and fidelity: responses/judgements and their cost by payer; Lambda is ``expert_train_cost``."""
    out = []
    for (run, fid), sub in frame.groupby(["run", frame["fidelity"].fillna(0)], sort=False):
        row = {"run": run, "fidelity": int(fid) if fid else pd.NA}
        for phase in ("train", "evaluation"):
            for payer in ("expert", "student", "judge"):
                s = sub[(sub["phase"] == phase) & (sub["payer"] == payer)]
                row[f"{payer}_{phase}_n"] = int(s["n"].sum())
                row[f"{payer}_{phase}_cost"] = float(s["cost"].sum())
        out.append(row)
    summary = pd.DataFrame(out)
    return summary.rename(columns={"expert_train_cost": "Lambda (expert_train_cost)"})


# ----------------------------------------------------------------------------------------------
# Judging with retries
# ----------------------------------------------------------------------------------------------

def judge_pairs(judge, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                retries: int) -> tuple[list[str], int]:
    """Outcomes of ``first`` vs ``second``; failed judgements are asked again up to ``retries`` times and
    then stay "failed" (excluded from WinFreq, never scored as losses).  Returns (outcomes, judgements asked)."""
    prompts, first, second = list(prompts), list(first), list(second)
    outcomes = [str(o) for o in judge.compare(prompts, first, second)]
    asked = len(prompts)
    for _ in range(retries):
        todo = [i for i, o in enumerate(outcomes) if o == "failed"]
        if not todo:
            break
        again = judge.compare([prompts[i] for i in todo], [first[i] for i in todo], [second[i] for i in todo])
        asked += len(todo)
        for i, o in zip(todo, again):
            outcomes[i] = str(o)
    return outcomes, asked


def _counts(outcomes: Sequence[str]) -> dict:
    s = stats.summarize(outcomes)
    return {"wins": s.wins, "ties": s.ties, "losses": s.losses, "failed": s.failed}


def _win_freq(c: dict) -> float:
    return stats.WinSummary(c["wins"], c["ties"], c["losses"]).win_freq


# ----------------------------------------------------------------------------------------------
# The decision rule (pure, so it is tested on its own)
# ----------------------------------------------------------------------------------------------

def decide(win: float, *, prev: float | None, final: bool, gamma: float, delta_norm: float | None,
           epsilon: float, iters_here: int, cap_here: int | None) -> tuple[str, str]:
    """Algorithm 2 after a look at fidelity m: ("continue" | "upgrade" | "stop", reason).

    ``prev``: the previous look at this fidelity (declines only matter at the last one); ``delta_norm``:
    ||theta_t - theta_{t-1}|| of the update just made (None at the first look of a fidelity).
    """
    leave = "stop" if final else "upgrade"
    if win >= gamma:
        return leave, "reached gamma"
    if final and prev is not None and win < prev:
        return "stop", "declined"
    if delta_norm is not None and delta_norm <= epsilon:
        return leave, "converged (||dtheta|| <= epsilon)"
    if cap_here is not None and iters_here >= cap_here:
        return leave, f"iteration cap at this fidelity ({cap_here}; not a paper rule)"
    return "continue", "below gamma"


# ----------------------------------------------------------------------------------------------
# Run folders
# ----------------------------------------------------------------------------------------------

class RunStore:
    """One run's folder: ``state.json`` (commit point), ``journal/`` (purchases), ``adapters/``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.rglob(".*.tmp"):  # leftovers of a write killed half-way
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    def load_state(self) -> dict | None:
        return json.loads(self.state_path.read_text()) if self.state_path.is_file() else None

    def commit(self, state: dict) -> None:
        write_json(self.state_path, state)

    def journal_path(self, name: str) -> Path:
        return self.folder / "journal" / f"{name}.json"

    def read_journal(self, name: str) -> dict | None:
        path = self.journal_path(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def write_journal(self, name: str, obj: dict) -> None:
        write_json(self.journal_path(name), obj)

    def adapter_path(self, t: int) -> Path:
        return self.folder / "adapters" / f"t{t:04d}"


def _rng_blob() -> str:
    import torch

    blob = (random.getstate(), np.random.get_state(), torch.get_rng_state().numpy().tobytes())
    return base64.b64encode(pickle.dumps(blob)).decode()


def _restore_rng(text: str) -> None:
    import torch

    py, npy, th = pickle.loads(base64.b64decode(text))
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(torch.frombuffer(bytearray(th), dtype=torch.uint8))


# ----------------------------------------------------------------------------------------------
# One run (multi-fidelity or vanilla)
# ----------------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """A finished run, read back from its committed state."""

    name: str
    mode: str
    plan: list[int]
    config: RunConfig
    folder: Path
    state: dict

    @property
    def history(self) -> pd.DataFrame:
        """One row per look (validation WinFreq of model t against the fidelity being trained)."""
        return pd.DataFrame(self.state["history"])

    @property
    def iterations(self) -> pd.DataFrame:
        return pd.DataFrame(self.state["iterations"])

    @property
    def evals(self) -> pd.DataFrame:
        """Every validation judgement set: model t against expert m (looks and monitoring)."""
        rows = []
        for t, per in self.state["evals"].items():
            for m, c in per.items():
                rows.append({"run": self.name, "t": int(t), "fidelity": int(m), **c, "win_freq": _win_freq(c)})
        return pd.DataFrame(rows).sort_values(["t", "fidelity"]).reset_index(drop=True)

    @property
    def ledger(self) -> pd.DataFrame:
        return ledger_frame(self.state["ledger"])

    @property
    def stop_reason(self) -> str:
        return self.state["stop_reason"]

    @property
    def best(self) -> dict | None:
        return self.state["best"]

    @property
    def exits(self) -> dict[int, dict]:
        return {int(m): v for m, v in self.state["exits"].items()}

    @property
    def timings(self) -> dict[str, float]:
        return dict(self.state["timings"])

    def expert_cost(self, through_fidelity: int | None = None) -> float:
        return paper_lambda(self.state["ledger"], through_fidelity)

    def adapter(self, t: int) -> Path:
        return RunStore(self.folder).adapter_path(t)

    def candidate_name(self, t: int) -> str:
        return self.state["names"][str(t)]


class _Runner:
    """Drives one run through its state machine; every step ends in a commit."""

    def __init__(self, *, name: str, mode: str, plan: list[int], config: RunConfig, backend: Backend, judge,
                 prompts: Prompts, folder: Path, shared: Path, budget: float | None = None,
                 progress: bool = True):
        if mode not in ("mf", "vanilla"):
            raise ValueError(f"mode must be 'mf' or 'vanilla', got {mode!r}")
        check_experts(config, backend.roles)
        if not prompts.train:
            raise ValueError("the train prompt set X is empty")
        if len(prompts.validation) < config.n_validation:
            raise ValueError(f"parameter 'n_validation': {config.n_validation} > {len(prompts.validation)} "
                             "validation prompts available")
        self.name, self.mode, self.plan, self.config = name, mode, plan, config
        self.backend, self.judge, self.prompts = backend, judge, prompts
        self.store = RunStore(folder)
        self.shared = RunStore(shared)
        self.budget = budget
        self.progress = progress
        self.val = list(prompts.validation[: config.n_validation])

    # -- bookkeeping ------------------------------------------------------------------------------

    def _identity(self) -> dict:
        return {"version": STATE_VERSION, "name": self.name, "mode": self.mode, "plan": self.plan,
                "config": self.config.model_dump(), "budget": self.budget,
                "backend": getattr(self.backend, "key", type(self.backend).__name__),
                "judge": getattr(self.judge, "identity", lambda: {})()}

    @contextmanager
    def _timed(self, state: dict, what: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            state["timings"][what] = state["timings"].get(what, 0.0) + time.perf_counter() - start

    def _say(self, text: str) -> None:
        if self.progress:
            print(f"[{self.name}] {text}", flush=True)

    def _commit(self, state: dict) -> None:
        with self._timed(state, "checkpoint"):
            state["rng"] = _rng_blob()
            self.store.commit(state)

    def _fid(self, m: int):
        return self.config.fidelities[m - 1]

    # -- lifecycle --------------------------------------------------------------------------------

    def run(self) -> RunResult:
        state = self.store.load_state()
        if state is None:
            state = self._start()
        else:
            if state["identity"] != self._identity():
                raise ValueError(f"{self.store.folder} holds a run with other parameters; use another runs_dir or "
                                 "delete that folder")
            if not state["done"]:
                self._say(f"resuming after t={state['t']} ({len(state['history'])} looks committed)")
                _restore_rng(state["rng"])
                with self._timed(state, "checkpoint"):
                    self.backend.load_policy(self.store.adapter_path(state["t"]))
        while not state["done"]:
            self._step(state)
            self._commit(state)
        return RunResult(self.name, self.mode, self.plan, self.config, self.store.folder, state)

    def _start(self) -> dict:
        state = {"identity": self._identity(), "t": 0, "pos": 0, "entered": False, "done": False,
                 "stop_reason": None, "best": None, "history": [], "iterations": [], "evals": {}, "data": {},
                 "ledger": [], "exits": {}, "names": {"0": "student"}, "iters_here": 0, "charged_val": [], "val_charged": [],
                 "timings": {}}
        with self._timed(state, "checkpoint"):
            self.backend.reset_policy(derive_seed(self.config.seed, "lora"), self.config.lora)
            self.backend.save_policy(self.store.adapter_path(0))
            self.backend.load_policy(self.store.adapter_path(0))
        self._commit(state)
        return state

    def _step(self, state: dict) -> None:
        m = self.plan[state["pos"]]
        if not state["entered"]:
            state["entered"] = True
            state["iters_here"] = 0
            self._look(state, m, kind="entry", delta_norm=None)
            return
        cap = self._global_cap(state, m)
        if cap is not None:
            self._stop(state, m, cap)
            return
        t = state["t"] + 1
        n_t = self._batch_size(state, m)
        self._acquire(state, t, m, n_t)
        delta_norm = self._update(state, t, m)
        state["t"] = t
        state["iters_here"] += 1
        prefix = f"step{m}" if self.mode == "mf" else f"vanilla(m={m})"
        state["names"][str(t)] = f"{prefix}-iter{state['iters_here']}"
        self._look(state, m, kind="train", delta_norm=delta_norm)

    # -- caps and batch sizes ---------------------------------------------------------------------

    def _global_cap(self, state: dict, m: int) -> str | None:
        c = self.config
        if c.max_iters is not None and state["t"] >= c.max_iters:
            return f"iteration cap: {state['t']} iterations done (max_iters = {c.max_iters}; not a paper rule)"
        spent = paper_lambda(state["ledger"])
        price = self._fid(m).cost
        if self.mode == "vanilla":
            if self._batch_size(state, m) < 1:
                return f"budget spent: Lambda = {spent:g} of {self.budget:g}"
            return None
        if c.max_budget is not None and spent + c.batch_size * price > c.max_budget:
            return (f"budget cap: the next batch ({c.batch_size} x {price:g}) would bring Lambda from {spent:g} to "
                    f"{spent + c.batch_size * price:g} > max_budget {c.max_budget:g} (not a paper rule)")
        return None

    def _batch_size(self, state: dict, m: int) -> int:
        """B, or for a vanilla run the responses its remaining budget still buys (a last partial batch)."""
        if self.mode != "vanilla":
            return self.config.batch_size
        remaining = self.budget - paper_lambda(state["ledger"])
        return int(max(0, min(self.config.batch_size, math.floor(remaining / self._fid(m).cost + 1e-9))))

    # -- one iteration ----------------------------------------------------------------------------

    def _acquire(self, state: dict, t: int, m: int, n_t: int) -> None:
        """Lines 4-9: B prompts, one student and one expert response each, optionally judged.  The batch
        is journaled before it is used, so a resumed run reads it instead of buying it again."""
        c, fid = self.config, self._fid(m)
        name = f"acquire_t{t:04d}"
        batch = self.store.read_journal(name)
        if batch is None or batch.get("fidelity") != m or len(batch["prompts"]) != n_t:
            rng = random.Random(derive_seed(c.seed, "prompts", t))
            prompts = rng.sample(self.prompts.train, n_t) if n_t <= len(self.prompts.train) else \
                [rng.choice(self.prompts.train) for _ in range(n_t)]
            with self._timed(state, "generation"):
                student = self.backend.generate_student(prompts, derive_seed(c.seed, "student", t), c.sampling)
                expert = self.backend.generate_expert(fid.role, prompts, derive_seed(c.seed, "expert", t), c.sampling)
            verdicts, asked = None, 0
            if c.judge_train_pairs:
                with self._timed(state, "judging"):
                    verdicts, asked = judge_pairs(self.judge, prompts, student, expert, c.judge_retries)
            batch = {"t": t, "fidelity": m, "role": fid.role, "prompts": prompts, "student": student,
                     "expert": expert, "verdicts": verdicts, "judgements": asked}
            self.store.write_journal(name, batch)
        led = state["ledger"]
        led.append(ledger_row(self.name, t, "train", m, "expert", fid.role, n_t, fid.cost))
        led.append(ledger_row(self.name, t, "train", m, "student", c.student, n_t, c.student_cost))
        if batch["judgements"]:
            led.append(ledger_row(self.name, t, "train", m, "judge", "judge", batch["judgements"], c.judge_cost))
        state["data"].setdefault(str(m), []).append(t)
        counts = _counts(batch["verdicts"]) if batch["verdicts"] is not None else None
        state["iterations"].append({
            "run": self.name, "t": t, "fidelity": m, "role": fid.role, "n_t": n_t,
            "D_size": sum(len(self.store.read_journal(f"acquire_t{s:04d}")["prompts"]) for s in state["data"][str(m)]),
            "identical_pairs": sum(a.strip() == b.strip() for a, b in zip(batch["student"], batch["expert"])),
            "train_student_win_freq": _win_freq(counts) if counts else math.nan,
            "train_failed": counts["failed"] if counts else 0})

    def _update(self, state: dict, t: int, m: int) -> float:
        """Line 11: DPO on all of D^(m) (expert chosen, student rejected), from theta_{t-1}."""
        prompts, chosen, rejected = [], [], []
        for s in state["data"][str(m)]:
            batch = self.store.read_journal(f"acquire_t{s:04d}")
            prompts += batch["prompts"]
            chosen += batch["expert"]
            rejected += batch["student"]
        before = self.backend.policy_vector()
        start = time.perf_counter()
        with self._timed(state, "dpo"):
            metrics = self.backend.update(prompts, chosen, rejected, derive_seed(self.config.seed, "dpo", t),
                                          self.config.dpo)
        state.setdefault("dpo_seconds", {})[str(t)] = time.perf_counter() - start  # not part of the trace
        with self._timed(state, "checkpoint"):
            path = self.store.adapter_path(t)
            self.backend.save_policy(path)
            self.backend.load_policy(path)  # continue from disk exactly as a resumed run would
        delta_norm = float(np.linalg.norm(self.backend.policy_vector() - before))
        it = state["iterations"][-1]
        it.update({"delta_norm": delta_norm, "dpo_pairs": len(prompts),
                   "dpo_loss": float(metrics.get("train_loss", metrics.get("loss", math.nan)))})
        return delta_norm

    # -- evaluation -------------------------------------------------------------------------------

    def _expert_validation(self, state: dict, m: int) -> list[str]:
        """g^(m)'s validation responses: generated once per run group (file in ``shared/``) and reused."""
        c, fid = self.config, self._fid(m)
        name = f"validation_{fid.role}"
        data = self.shared.read_journal(name)
        if data is None or data["prompts"] != self.val:
            with self._timed(state, "evaluation"):
                responses = self.backend.generate_expert(fid.role, self.val, derive_seed(c.seed, "val-expert", fid.role),
                                                         c.sampling)
            data = {"role": fid.role, "prompts": self.val, "responses": responses}
            self.shared.write_journal(name, data)
        if self.mode == "mf" and fid.role not in state["charged_val"]:
            state["charged_val"].append(fid.role)
            state["ledger"].append(ledger_row(self.name, state["t"], "evaluation", m, "expert", fid.role,
                                              len(self.val), fid.cost))
        return data["responses"]

    def _student_validation(self, state: dict, t: int) -> list[str]:
        name = f"validation_t{t:04d}"
        data = self.store.read_journal(name)
        if data is None:
            with self._timed(state, "evaluation"):
                responses = self.backend.generate_student(self.val, derive_seed(self.config.seed, "val", t),
                                                          self.config.sampling)
            data = {"t": t, "responses": responses}
            self.store.write_journal(name, data)
        return data["responses"]

    def _evaluate(self, state: dict, t: int, m: int) -> dict:
        """Line 2: WinFreq of model t against g^(m) on the validation prompts (and, with ``monitor``,
        against every other expert too, for the cost-quality figure and beta)."""
        per = state["evals"].setdefault(str(t), {})
        wanted = range(1, len(self.config.fidelities) + 1) if self.config.monitor else [m]
        missing = [k for k in wanted if str(k) not in per]
        if missing:
            student = self._student_validation(state, t)
            if str(t) not in state["val_charged"]:
                state["val_charged"].append(str(t))
                state["ledger"].append(ledger_row(self.name, t, "evaluation", m, "student", self.config.student,
                                                  len(self.val), self.config.student_cost))
            for k in missing:
                expert = self._expert_validation(state, k)
                with self._timed(state, "evaluation"):
                    outcomes, asked = judge_pairs(self.judge, self.val, student, expert, self.config.judge_retries)
                counts = _counts(outcomes)
                if counts["wins"] + counts["ties"] + counts["losses"] == 0:
                    raise RuntimeError(f"[{self.name}] all {len(self.val)} validation judgements of model t={t} "
                                       f"against {self._fid(k).role} failed (after {self.config.judge_retries} "
                                       "retries); cannot compute WinFreq. Fix the judge and rerun: the run resumes.")
                per[str(k)] = {**counts, "judgements": asked}
                state["ledger"].append(ledger_row(self.name, t, "evaluation", k, "judge", "judge", asked,
                                                  self.config.judge_cost))
        return per[str(m)]

    def _look(self, state: dict, m: int, *, kind: str, delta_norm: float | None) -> None:
        c = self.config
        t = state["t"]
        counts = self._evaluate(state, t, m)
        win = _win_freq(counts)
        n = counts["wins"] + counts["ties"] + counts["losses"]
        here = [h for h in state["history"] if h["fidelity"] == m]
        prev = here[-1]["win_freq"] if here else None
        final = state["pos"] == len(self.plan) - 1
        if self.mode == "mf":
            action, reason = decide(win, prev=prev, final=final, gamma=c.gamma, delta_norm=delta_norm,
                                    epsilon=c.epsilon, iters_here=state["iters_here"],
                                    cap_here=c.max_iters_per_fidelity)
        else:
            action, reason = "continue", "vanilla: spends its budget"
        radius = float(stats.hoeffding_radius(n, c.delta))
        row = {"run": self.name, "mode": self.mode, "look": len(state["history"]) + 1, "fidelity": m,
               "role": self._fid(m).role, "t": t, "candidate": state["names"][str(t)], "kind": kind,
               **{k: counts[k] for k in ("wins", "ties", "losses", "failed")}, "n": n, "win_freq": win,
               "radius": radius, "low": max(0.0, win - radius), "high": min(1.0, win + radius), "prev": prev,
               "delta_norm": delta_norm, "Lambda": paper_lambda(state["ledger"]),
               "total_cost": float(sum(r["cost"] for r in state["ledger"])), "final_fidelity": final,
               "action": action, "reason": reason}
        state["history"].append(row)
        self._say(f"{row['candidate']} vs {row['role']}: WinFreq {win:.3f} +- {radius:.3f} (n={n}, failed="
                  f"{counts['failed']}), Lambda {row['Lambda']:g} -> {action} ({reason})")
        if action == "upgrade":
            state["exits"][str(m)] = {"t": t, "candidate": row["candidate"], "reason": reason,
                                      "Lambda": row["Lambda"]}
            state["pos"] += 1
            state["entered"] = False
        elif action == "stop":
            self._stop(state, m, reason, from_look=True)

    def _stop(self, state: dict, m: int, reason: str, from_look: bool = False) -> None:
        """End the run; keep the best look at the last fidelity (paper) or the best trained vanilla model."""
        if not from_look and state["history"]:
            state["history"][-1]["action"] = "stop"
            state["history"][-1]["reason"] = reason
        here = [h for h in state["history"] if h["fidelity"] == m]
        if self.mode == "vanilla":
            here = [h for h in here if h["kind"] == "train"]
        elif state["pos"] < len(self.plan) - 1:
            here = here[-1:]  # stopped by a cap before the last fidelity: the current model is the output
        best = None
        if here:
            top = max(here, key=lambda h: (h["win_freq"], -h["t"]))
            best = {"t": top["t"], "candidate": top["candidate"], "fidelity": m, "win_freq": top["win_freq"],
                    "radius": top["radius"]}
        state["exits"][str(m)] = {"t": best["t"] if best else state["t"], "candidate": best["candidate"] if best
                                  else state["names"][str(state["t"])], "reason": reason,
                                  "Lambda": paper_lambda(state["ledger"])}
        state.update(done=True, stop_reason=reason, best=best)
        self._say(f"stop: {reason}; best {best['candidate'] if best else None}")


def run_multifidelity(config: RunConfig, backend: Backend, judge, prompts: Prompts, folder: str | Path, *,
                      progress: bool = True) -> RunResult:
    """Algorithm 2 over ``config.fidelities``; state in ``folder/mf`` (resumes if present)."""
    folder = Path(folder)
    return _Runner(name="mf", mode="mf", plan=list(range(1, len(config.fidelities) + 1)), config=config,
                   backend=backend, judge=judge, prompts=prompts, folder=folder / "mf", shared=folder / "shared",
                   progress=progress).run()


def run_vanilla(config: RunConfig, fidelity: int, budget: float, backend: Backend, judge, prompts: Prompts,
                folder: str | Path, *, progress: bool = True) -> RunResult:
    """DPO against g^(fidelity) only, buying expert responses until ``budget`` (Lambda) is spent (the
    last batch may be partial); the best trained iteration on validation is its output."""
    if not 1 <= fidelity <= len(config.fidelities):
        raise ValueError(f"fidelity must be in 1..{len(config.fidelities)}, got {fidelity}")
    if not budget > 0:
        raise ValueError(f"budget must be > 0, got {budget}")
    folder = Path(folder)
    return _Runner(name=f"vanilla-m{fidelity}", mode="vanilla", plan=[fidelity], config=config, backend=backend,
                   judge=judge, prompts=prompts, folder=folder / f"vanilla-m{fidelity}", shared=folder / "shared",
                   budget=float(budget), progress=progress).run()


# ----------------------------------------------------------------------------------------------
# A trace: the multi-fidelity run, its vanilla baselines at equal budget, and the test comparison
# ----------------------------------------------------------------------------------------------

@dataclass
class TraceResult:
    label: str
    batch_size: int
    trace: int
    config: RunConfig
    folder: Path
    mf: RunResult
    vanilla: dict[int, RunResult]
    test: pd.DataFrame
    expert_pairs: pd.DataFrame
    extra_ledger: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings_extra: dict[str, float] = field(default_factory=dict)

    @property
    def ledger(self) -> pd.DataFrame:
        parts = [self.mf.ledger] + [v.ledger for v in self.vanilla.values()] + [ledger_frame(self.extra_ledger)]
        out = pd.concat([p for p in parts if len(p)], ignore_index=True)
        return out.assign(label=self.label, batch_size=self.batch_size, trace=self.trace)

    @property
    def timings(self) -> dict[str, float]:
        total: dict[str, float] = dict(self.timings_extra)
        for run in [self.mf, *self.vanilla.values()]:
            for k, v in run.timings.items():
                total[k] = total.get(k, 0.0) + v
        return total


def trace_folder(root: str | Path, config: RunConfig, judge, backend=None) -> Path:
    """``<root>/B<B>-seed<seed>-<hash>``: the hash covers every parameter, the models (backend key) and
    the judge identity, so changed parameters never resume someone else's run."""
    ident = json.dumps({"config": config.model_dump(), "judge": getattr(judge, "identity", lambda: {})(),
                        "backend": getattr(backend, "key", type(backend).__name__)}, sort_keys=True, default=str)
    return Path(root) / f"B{config.batch_size}-seed{config.seed}-{hashlib.sha256(ident.encode()).hexdigest()[:10]}"


def _cached_responses(path: Path, make) -> list[str]:
    if path.is_file():
        return json.loads(path.read_text())["responses"]
    responses = make()
    write_json(path, {"responses": responses})
    return responses


def run_trace(config: RunConfig, backend: Backend, judge, prompts: Prompts, root: str | Path, *,
              vanilla_fidelities: Sequence[int] = (), n_test: int = 500, test_sampling: SamplingParams | None = None,
              label: str | None = None, trace: int = 1, progress: bool = True) -> TraceResult:
    """One trace of Tables 2-3 plus its Table 4 row: Algorithm 2, vanilla(m) at the budget the
    multi-fidelity run spent through fidelity m, and test-set WinFreq of the multi-fidelity model at
    the end of fidelity m (the chosen best for m = M) against vanilla(m)'s best model."""
    folder = trace_folder(root, config, judge, backend)
    label = label or f"B={config.batch_size} trace {trace}"
    mf = run_multifidelity(config, backend, judge, prompts, folder, progress=progress)
    vanilla, notes = {}, []
    for m in vanilla_fidelities:
        if str(m) not in mf.state["exits"]:
            notes.append(f"vanilla(m={m}) skipped: the multi-fidelity run ended before finishing fidelity {m}")
            continue
        budget = mf.expert_cost(through_fidelity=m)
        if budget < config.fidelities[m - 1].cost:
            notes.append(f"vanilla(m={m}) skipped: the multi-fidelity run spent Lambda = {budget:g} through "
                         f"fidelity {m}, less than one g^({m}) response")
            continue
        vanilla[m] = run_vanilla(config, m, budget, backend, judge, prompts, folder, progress=progress)

    extra: list[dict] = []
    timings: dict[str, float] = {}
    start = time.perf_counter()
    expert_pairs = _expert_pairs(config, backend, judge, prompts, folder, mf, extra)
    timings["analysis"] = time.perf_counter() - start
    start = time.perf_counter()
    test = _test_comparisons(config, backend, judge, prompts, folder, mf, vanilla, n_test,
                             test_sampling or config.sampling, extra)
    timings["test"] = time.perf_counter() - start
    test = test.assign(label=label, batch_size=config.batch_size, trace=trace) if len(test) else test
    return TraceResult(label, config.batch_size, trace, config, folder, mf, vanilla, test, expert_pairs,
                       extra, notes, timings)


def _expert_pairs(config, backend, judge, prompts, folder, mf: RunResult, ledger: list[dict]) -> pd.DataFrame:
    """WinRate(g^(m), g^(m')) on the validation prompts for every m > m' >= 0 (g^(0): the initial
    student), from the responses the run already has (Theorem 5's gaps and Assumption 3's beta)."""
    shared = RunStore(folder / "shared")
    responses = {0: RunStore(mf.folder).read_journal("validation_t0000")["responses"]}
    for m, fid in enumerate(config.fidelities, 1):
        data = shared.read_journal(f"validation_{fid.role}")
        if data is not None:
            responses[m] = data["responses"]
    val = list(prompts.validation[: config.n_validation])
    rows = []
    names = {0: f"{config.student} (initial)", **{m: f.role for m, f in enumerate(config.fidelities, 1)}}
    for hi in sorted(responses):
        for lo in sorted(responses):
            if lo >= hi:
                continue
            outcomes, asked = judge_pairs(judge, val, responses[hi], responses[lo], config.judge_retries)
            counts = _counts(outcomes)
            n = counts["wins"] + counts["ties"] + counts["losses"]
            ledger.append(ledger_row("analysis", 0, "analysis", hi, "judge", "judge", asked, config.judge_cost))
            rows.append({"m": hi, "m_prime": lo, "better": names[hi], "worse": names[lo], **counts, "n": n,
                         "win_rate": _win_freq(counts),
                         "radius": float(stats.hoeffding_radius(n, config.delta)) if n else math.nan})
    return pd.DataFrame(rows)


def _test_comparisons(config, backend, judge, prompts, folder, mf: RunResult, vanilla: dict[int, RunResult],
                      n_test: int, sampling: SamplingParams, ledger: list[dict]) -> pd.DataFrame:
    """Table 4: test WinFreq of the multi-fidelity candidate against vanilla(m)'s best, and of both
    against the top expert.  Test responses are generated once (cached in ``folder/test``)."""
    if not vanilla:
        return pd.DataFrame()
    if len(prompts.test) < n_test:
        raise ValueError(f"parameter 'n_test': {n_test} > {len(prompts.test)} test prompts available")
    test = list(prompts.test[:n_test])
    top = config.fidelities[-1]
    seed = derive_seed(config.seed, "test")
    store = folder / "test" / hashlib.sha256(sampling.model_dump_json().encode()).hexdigest()[:8]

    def model_responses(run: RunResult, t: int) -> list[str]:
        def make():
            backend.load_policy(run.adapter(t))
            return backend.generate_student(test, seed, sampling)
        return _cached_responses(store / f"{run.name}_t{t:04d}_n{n_test}.json", make)

    top_responses = _cached_responses(store / f"expert_{top.role}_n{n_test}.json",
                                      lambda: backend.generate_expert(top.role, test, seed, sampling))
    ledger.append(ledger_row("test", 0, "test", len(config.fidelities), "expert", top.role, n_test, top.cost))
    charged: set[tuple[str, int]] = set()

    def charge(run: RunResult, t: int):
        if (run.name, t) not in charged:
            charged.add((run.name, t))
            ledger.append(ledger_row("test", t, "test", None, "student", config.student, n_test, config.student_cost))

    def judged(a, b):
        outcomes, asked = judge_pairs(judge, test, a, b, config.judge_retries)
        ledger.append(ledger_row("test", 0, "test", None, "judge", "judge", asked, config.judge_cost))
        c = _counts(outcomes)
        n = c["wins"] + c["ties"] + c["losses"]
        r = float(stats.hoeffding_radius(n, config.delta)) if n else math.nan
        w = _win_freq(c)
        return {**c, "n": n, "win_rate": w, "radius": r, "low": max(0.0, w - r), "high": min(1.0, w + r)}

    rows = []
    for m, van in vanilla.items():
        if van.best is None:
            continue
        mf_t = mf.exits[m]["t"]
        van_t = van.best["t"]
        a, b = model_responses(mf, mf_t), model_responses(van, van_t)
        charge(mf, mf_t)
        charge(van, van_t)
        row = {"baseline": f"vanilla(m={m})", "candidate": mf.candidate_name(mf_t), "candidate_t": mf_t,
               "baseline_candidate": van.candidate_name(van_t), "baseline_t": van_t,
               "candidate_Lambda": mf.expert_cost(through_fidelity=m), "baseline_Lambda": van.expert_cost(),
               **judged(a, b)}
        row["verdict"] = ("multi-fidelity better" if row["low"] > 0.5 else "vanilla better" if row["high"] < 0.5
                          else "not resolved (interval contains 0.5)")
        vs_top_mf, vs_top_van = judged(a, top_responses), judged(b, top_responses)
        row.update({"candidate_vs_top": vs_top_mf["win_rate"], "baseline_vs_top": vs_top_van["win_rate"],
                    "vs_top_radius": vs_top_mf["radius"]})
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

def trace_rows(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Tables 2-3 in long form: every look of the multi-fidelity run, then vanilla(m)'s best model
    (its validation WinFreq against g^(m)) under fidelity m.  Radii: Lemma 1 at ``delta``."""
    rows = []
    for tr in traces:
        h = tr.mf.history
        for m, fid in enumerate(tr.config.fidelities, 1):
            for _, r in h[h["fidelity"] == m].iterrows():
                rows.append({"label": tr.label, "batch_size": tr.batch_size, "trace": tr.trace, "fidelity": m,
                             "role": fid.role, "cost": fid.cost, "candidate": r["candidate"], "kind": r["kind"],
                             "t": r["t"], "n": r["n"], "failed": r["failed"], "win_rate": r["win_freq"],
                             "radius": r["radius"], "low": r["low"], "high": r["high"], "Lambda": r["Lambda"],
                             "action": r["action"], "reason": r["reason"]})
            van = tr.vanilla.get(m)
            if van is not None and van.best is not None:
                b = van.history[van.history["t"] == van.best["t"]].iloc[-1]
                rows.append({"label": tr.label, "batch_size": tr.batch_size, "trace": tr.trace, "fidelity": m,
                             "role": fid.role, "cost": fid.cost, "candidate": f"vanilla(m={m})", "kind": "vanilla",
                             "t": b["t"], "n": b["n"], "failed": b["failed"], "win_rate": b["win_freq"],
                             "radius": b["radius"], "low": b["low"], "high": b["high"],
                             "Lambda": van.expert_cost(), "action": "", "reason": f"best of {van.history['kind'].eq('train').sum()} "
                             f"iterations ({b['candidate']})"})
    return pd.DataFrame(rows)


def paper_layout(rows: pd.DataFrame, batch_size: int, value: str = "win_rate", radius: str | None = "radius",
                 names: dict[int, str] | None = None) -> pd.DataFrame:
    """Tables 2-3's shape: one block of rows per fidelity, one (candidate, WinRate) column pair per
    trace, shorter traces padded with '-'."""
    sub = rows[rows["batch_size"] == batch_size]
    traces = list(dict.fromkeys(sub["trace"]))
    title = {k: f"trace {k}" if isinstance(k, (int, np.integer)) else str(k) for k in traces}
    blocks = []
    for m in sorted(sub["fidelity"].unique()):
        per = {k: sub[(sub["trace"] == k) & (sub["fidelity"] == m)].reset_index(drop=True) for k in traces}
        height = max(len(p) for p in per.values())
        role = sub.loc[sub["fidelity"] == m, "role"].iloc[0]
        label = (names or {}).get(m, f"g^({m}): {role}")
        for i in range(height):
            line = {("", "fidelity"): label}
            for k in traces:
                p = per[k]
                if i < len(p):
                    text = f"{p.loc[i, value]:.3f}"
                    if radius and radius in p and pd.notna(p.loc[i, radius]):
                        text += f" ± {p.loc[i, radius]:.3f}"
                    line[(title[k], "candidate")] = p.loc[i, "candidate"]
                    line[(title[k], "WinRate")] = text
                else:
                    line[(title[k], "candidate")] = "-"
                    line[(title[k], "WinRate")] = "-"
            blocks.append(line)
    out = pd.DataFrame(blocks)
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out


PAPER_FIDELITIES = {1: "Llama", 2: "Mistral", 3: "Qwen"}


def paper_reference_rows(batch_size: int) -> pd.DataFrame:
    """The paper's Table 2 (B=1024) or 3 (B=512) from mfnb.reference, in ``trace_rows``' long form."""
    from mfnb import reference

    ref = reference.load("mf_traces")
    ref = ref[ref["batch_size"] == batch_size].copy()
    ref["fidelity"] = ref["fidelity"].map({v: k for k, v in PAPER_FIDELITIES.items()})
    ref["role"] = ref["fidelity"].map(PAPER_FIDELITIES)
    ref["radius"] = math.nan  # the paper reports none
    return ref


def paper_layout_with_reference(rows: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """Our traces and the paper's (labelled "paper trace k (reference)") side by side, fidelity blocks
    aligned; the paper's rows have no radius because it reports none."""
    ours = rows[rows["batch_size"] == batch_size].assign(trace=lambda f: "ours trace " + f["trace"].astype(str))
    ref = paper_reference_rows(batch_size)
    ref = ref.assign(trace="paper trace " + ref["trace"].astype(str) + " (reference)")
    roles = ours.groupby("fidelity")["role"].first().to_dict()
    names = {m: f"g^({m}): {roles.get(m, '?')} | paper: {PAPER_FIDELITIES.get(m, '-')}" for m in
             sorted(set(ours["fidelity"]) | set(ref["fidelity"]))}
    cols = ["batch_size", "trace", "fidelity", "role", "candidate", "win_rate", "radius"]
    return paper_layout(pd.concat([ours[cols], ref[cols]], ignore_index=True), batch_size, names=names)


def decision_table(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Every look of every multi-fidelity run and the decision it led to, with whether the validation
    set supports it: |WinFreq - gamma| > Lemma 1 radius for threshold decisions, |WinFreq - previous|
    > the paired-difference radius (paper constant) for declines.  Caps and convergence are not
    statistical decisions (supported = NA)."""
    rows = []
    for tr in traces:
        c = tr.config
        for _, r in tr.mf.history.iterrows():
            n = int(r["n"])
            rad = float(stats.hoeffding_radius(n, c.delta))
            drad = float(stats.difference_radius(n, c.delta, tight=False))
            gamma_ok = abs(r["win_freq"] - c.gamma) > rad
            prev = r["prev"]
            has_prev = prev is not None and not (isinstance(prev, float) and math.isnan(prev))
            decline_ok = abs(r["win_freq"] - prev) > drad if has_prev else None
            reason = r["reason"]
            if reason == "reached gamma" or (reason == "below gamma" and not r["final_fidelity"]):
                test, supported, against, radius = "WinFreq vs gamma", gamma_ok, c.gamma, rad
            elif reason == "declined":
                test, supported, against, radius = "WinFreq vs previous look", decline_ok, prev, drad
            elif reason == "below gamma":  # continue at the last fidelity: below gamma and no decline
                both = gamma_ok and (decline_ok if has_prev else True)
                test, supported, against, radius = ("below gamma and no decline" if has_prev else "WinFreq vs gamma",
                                                    both, prev if has_prev else c.gamma, drad if has_prev else rad)
            else:
                test, supported, against, radius = "not statistical (" + reason + ")", pd.NA, math.nan, math.nan
            flag = ("" if supported is pd.NA else "supported" if supported else
                    "NOT statistically supported (within the radius)")
            rows.append({"label": tr.label, "batch_size": tr.batch_size, "trace": tr.trace, "fidelity": r["fidelity"],
                         "role": r["role"], "candidate": r["candidate"], "win_rate": r["win_freq"], "n": n,
                         "action": r["action"], "reason": reason, "test": test, "compared_to": against,
                         "radius_used": radius, "supported": supported, "flag": flag})
    return pd.DataFrame(rows)


def table4(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Table 4: test WinFreq of the multi-fidelity model against vanilla(m), with Lemma 1 intervals,
    and the paper's number for the same cell beside it (labelled as the paper's)."""
    from mfnb import reference

    frames = [tr.test for tr in traces if len(tr.test)]
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    ref = reference.load("mf_table4")
    ref_map = {(str(r.sample_size), r.baseline): r.win_rate for r in ref.itertuples()}
    out["paper_sample_size"] = [f"{b}" if k == 1 else f"{b}-{k}" for b, k in zip(out["batch_size"], out["trace"])]
    out["paper_win_rate (reference)"] = [ref_map.get((s, b), math.nan)
                                         for s, b in zip(out["paper_sample_size"], out["baseline"])]
    cols = ["label", "batch_size", "trace", "baseline", "candidate", "baseline_candidate", "candidate_Lambda",
            "baseline_Lambda", "n", "failed", "wins", "ties", "losses", "win_rate", "radius", "low", "high", "verdict",
            "candidate_vs_top", "baseline_vs_top", "paper_win_rate (reference)"]
    return out[cols]


def beat_statement(t4: pd.DataFrame) -> str:
    """A sentence computed from Table 4: did the multi-fidelity model beat vanilla at equal budget?"""
    if t4 is None or not len(t4):
        return "No test comparison was run (no vanilla baseline had a budget)."
    n = len(t4)
    higher = int((t4["win_rate"] > 0.5).sum())
    mf_sig = int((t4["verdict"] == "multi-fidelity better").sum())
    van_sig = int((t4["verdict"] == "vanilla better").sum())
    parts = [f"In {higher} of {n} comparisons the multi-fidelity model's test WinFreq against vanilla at equal "
             f"budget was above 0.5 (mean {t4['win_rate'].mean():.3f})."]
    parts.append(f"The Lemma 1 interval (delta as configured) excludes 0.5 in favour of multi-fidelity in {mf_sig} "
                 f"of {n}, in favour of vanilla in {van_sig} of {n}, and is unresolved in {n - mf_sig - van_sig}.")
    for base, sub in t4.groupby("baseline"):
        parts.append(f"Against {base}: WinFreq " + ", ".join(f"{w:.3f} ± {r:.3f} ({lab})" for w, r, lab in
                                                               zip(sub["win_rate"], sub["radius"], sub["label"])) + ".")
    if mf_sig == n:
        verdict = "Multi-fidelity beat vanilla at equal budget in every comparison, each supported by its interval."
    elif mf_sig > 0 and van_sig == 0:
        verdict = "Multi-fidelity beat vanilla where the data resolve it; no comparison significantly favours vanilla."
    elif van_sig > 0 and mf_sig == 0:
        verdict = "Vanilla was better where the data resolve it: our runs do not reproduce the paper's claim."
    elif mf_sig == 0 and van_sig == 0:
        verdict = "No comparison is resolved at this test-set size: our runs neither confirm nor refute the claim."
    else:
        verdict = "Mixed: some comparisons significantly favour multi-fidelity, others vanilla."
    return " ".join(parts + [verdict])


def iterations_table(traces: Sequence[TraceResult]) -> pd.DataFrame:
    frames = []
    for tr in traces:
        for run in [tr.mf, *tr.vanilla.values()]:
            if len(run.iterations):
                frames.append(run.iterations.assign(label=tr.label, batch_size=tr.batch_size, trace=tr.trace))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def estimate_alpha_beta(tr: TraceResult, backend: Backend) -> dict:
    """Lemma 2's alpha and Assumption 3's beta as the largest ratios seen in this run (the smallest
    constants under which the assumptions hold on these models) - estimates, noisy at n_validation.

    alpha: ||theta_exit - theta_entry|| / |WinFreq(exit, g^(m)) - WinFreq(entry, g^(m))| per fidelity
    with training (the proof's step (a)).  beta: |WinFreq(theta, g^(m)) - WinFreq(theta, g^(m'))| /
    WinRate(g^(m), g^(m')) over every evaluated model and every m > m' >= 1.
    """
    h, ev = tr.mf.history, tr.mf.evals
    win = {(int(r.t), int(r.fidelity)): r.win_freq for r in ev.itertuples()}
    alphas = []
    for m in sorted(h["fidelity"].unique()):
        looks = h[h["fidelity"] == m]
        if not (looks["kind"] == "train").any():
            continue
        t0, t1 = int(looks.iloc[0]["t"]), int(looks.iloc[-1]["t"])
        dist = float(np.linalg.norm(backend.policy_vector(tr.mf.adapter(t1)) - backend.policy_vector(tr.mf.adapter(t0))))
        dw = abs(win[(t1, m)] - win[(t0, m)])
        alphas.append({"fidelity": m, "param_distance": dist, "winfreq_change": dw,
                       "ratio": dist / dw if dw > 0 else math.inf})
    gaps = {(int(r.m), int(r.m_prime)): r.win_rate for r in tr.expert_pairs.itertuples()}
    betas = []
    for t in sorted({k[0] for k in win}):
        for (hi, lo), g in gaps.items():
            if lo >= 1 and (t, hi) in win and (t, lo) in win and g > 0:
                betas.append(abs(win[(t, hi)] - win[(t, lo)]) / g)
    finite = [a["ratio"] for a in alphas if math.isfinite(a["ratio"])]
    return {"alpha": max(finite) if finite else math.nan, "alpha_parts": alphas,
            "beta": max(betas) if betas else math.nan, "beta_median": float(np.median(betas)) if betas else math.nan,
            "n_beta_ratios": len(betas)}


def theorem5_table(traces: Sequence[TraceResult], backend: Backend) -> pd.DataFrame:
    """Measured |D^(m)| and cost per fidelity beside Eq. 2's term lambda^(m) (log((2 a rad + a b gap_m) /
    (1 - gamma - rad)) + B), with alpha, beta estimated from the run (``estimate_alpha_beta``) and
    gap_m = WinRate(g^(m), g^(m-1)) measured on validation (g^(0) = initial student).  O(.) constants
    are dropped, so only the shape (which fidelity dominates, how terms scale) is comparable."""
    rows = []
    for tr in traces:
        c = tr.config
        ab = estimate_alpha_beta(tr, backend)
        rad = float(stats.hoeffding_radius(c.n_validation, c.delta))
        gaps_df = tr.expert_pairs
        gap = {int(r.m): r.win_rate for r in gaps_df.itertuples() if r.m_prime == r.m - 1}
        led = tr.mf.ledger
        for m, fid in enumerate(c.fidelities, 1):
            sel = (led["phase"] == "train") & (led["payer"] == "expert") & (led["fidelity"] == m)
            d_size = int(led.loc[sel, "n"].sum())
            iters = int((tr.mf.history["fidelity"].eq(m) & tr.mf.history["kind"].eq("train")).sum())
            row = {"label": tr.label, "batch_size": tr.batch_size, "trace": tr.trace, "fidelity": m, "role": fid.role,
                   "cost": fid.cost, "iterations": iters, "D_size": d_size, "measured_cost": d_size * fid.cost,
                   "gap_winrate": gap.get(m, math.nan), "rad": rad, "alpha_hat": ab["alpha"], "beta_hat": ab["beta"]}
            if math.isfinite(ab["alpha"]) and math.isfinite(ab["beta"]) and m in gap and 1 - c.gamma - rad > 0:
                terms = stats.theorem5_cost_terms([fid.cost], [gap[m]], ab["alpha"], ab["beta"], c.gamma, rad,
                                                  c.batch_size)
                row.update(log_term=float(terms["log_term"].iloc[0]), batch_term=float(c.batch_size),
                           bound_term=float(terms["term"].iloc[0]))
                row["measured_over_term"] = row["measured_cost"] / row["bound_term"] if row["bound_term"] > 0 else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def time_shares(timings: dict[str, float]) -> pd.DataFrame:
    """Seconds and share of the total per activity (generation, judging, dpo, evaluation, ...)."""
    total = sum(timings.values()) or 1.0
    frame = pd.DataFrame({"activity": list(timings), "seconds": list(timings.values())})
    frame["share"] = frame["seconds"] / total
    return frame.sort_values("seconds", ascending=False).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------

def _errors(win, low, high):
    """Asymmetric error bars clipped to [0, 1] (a radius can reach past either end)."""
    win, low, high = (np.asarray(x, dtype=float) for x in (win, low, high))
    return [win - low, high - win]


def _cost_axis(ax, batch_size: int) -> None:
    # costs grow 1:4:16, so the cheap fidelities would be squeezed against 0 on a linear axis
    ax.set_xscale("symlog", linthresh=batch_size, linscale=0.6)
    ax.set_xlim(left=-0.08 * batch_size)
    ax.set_xlabel(f"cumulative expert cost Lambda (symlog, linear below {batch_size})")


def _figure_legend(fig, axes) -> None:
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(text, handle)
    fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=min(4, len(seen)), fontsize="small")


def _panel_grid(traces: Sequence[TraceResult], width: float = 6.0, height: float = 4.0):
    import matplotlib.pyplot as plt

    batches = list(dict.fromkeys(tr.batch_size for tr in traces))
    ntr = max(sum(tr.batch_size == b for tr in traces) for b in batches)
    fig, axes = plt.subplots(len(batches), ntr, figsize=(width * ntr, height * len(batches)), squeeze=False,
                             constrained_layout=True)
    where = {}
    for i, b in enumerate(batches):
        for j, tr in enumerate([tr for tr in traces if tr.batch_size == b]):
            where[id(tr)] = axes[i][j]
    for ax in axes.ravel():
        if ax not in where.values():
            ax.set_visible(False)
    return fig, where


def plot_traces(traces: Sequence[TraceResult]):
    """Validation WinFreq (vs the expert being trained against, Lemma 1 interval) against cumulative
    Lambda; dotted lines mark fidelity switches, dashed curves are vanilla(m) at equal budget, stars
    the chosen models."""
    import seaborn as sns

    fig, where = _panel_grid(traces)
    colours = sns.color_palette(n_colors=max(len(tr.config.fidelities) for tr in traces))
    for tr in traces:
        ax = where[id(tr)]
        h = tr.mf.history
        for m, fid in enumerate(tr.config.fidelities, 1):
            sub = h[h["fidelity"] == m]
            if len(sub):
                ax.errorbar(sub["Lambda"], sub["win_freq"], yerr=_errors(sub["win_freq"], sub["low"], sub["high"]),
                            fmt="-o", ms=4, capsize=2, color=colours[m - 1],
                            label=f"multi-fidelity vs g^({m}) {fid.role}")
            van = tr.vanilla.get(m)
            if van is not None:
                vh = van.history
                ax.plot(vh["Lambda"], vh["win_freq"], ls="--", marker="s", ms=3, color=colours[m - 1], alpha=0.8,
                        label=f"vanilla(m={m}) vs g^({m}) {fid.role}")
                if van.best:
                    bh = vh[vh["t"] == van.best["t"]].iloc[-1]
                    ax.scatter([bh["Lambda"]], [bh["win_freq"]], marker="*", s=140, color=colours[m - 1],
                               edgecolors="black", zorder=4)
        switches = [(m, ex) for m, ex in sorted(tr.mf.exits.items()) if m < len(tr.config.fidelities)
                    and any(h["fidelity"] == m + 1)]
        for i, (m, ex) in enumerate(switches):
            ax.axvline(ex["Lambda"], color="grey", ls=":", lw=1)
            ax.annotate(f"-> g^({m + 1})", (ex["Lambda"], 0.97 - 0.07 * i), xycoords=("data", "axes fraction"),
                        fontsize="x-small", ha="left", va="top", xytext=(3, 0), textcoords="offset points")
        if tr.mf.best:
            b = h[(h["t"] == tr.mf.best["t"]) & (h["fidelity"] == tr.mf.best["fidelity"])].iloc[-1]
            ax.scatter([b["Lambda"]], [b["win_freq"]], marker="*", s=200, color=colours[int(b["fidelity"]) - 1],
                       edgecolors="black", zorder=5, label="chosen model (star)")
        ax.axhline(tr.config.gamma, color="red", ls="--", lw=1, label=f"gamma = {tr.config.gamma:g}")
        ax.set_title(tr.label, fontsize="small")
        _cost_axis(ax, tr.batch_size)
        ax.set_ylabel("validation WinFreq vs current expert")
        ax.set_ylim(0, max(0.6, float(h["high"].max()) + 0.05))
    _figure_legend(fig, where.values())
    fig.suptitle("Multi-fidelity traces (Algorithm 2) and vanilla baselines at equal budget")
    return fig


def plot_cost_quality(traces: Sequence[TraceResult]):
    """Quality (validation WinFreq vs the top expert g^(M)) against cumulative Lambda: every model of the
    multi-fidelity run vs the high-fidelity-only run (vanilla(m=M)) at the same total budget."""
    import seaborn as sns

    fig, where = _panel_grid(traces)
    colours = sns.color_palette(n_colors=3)
    for tr in traces:
        ax = where[id(tr)]
        M = len(tr.config.fidelities)
        runs = [("multi-fidelity", tr.mf, colours[0])]
        if M in tr.vanilla:
            runs.append((f"high-fidelity only (vanilla m={M})", tr.vanilla[M], colours[1]))
        for name, run, colour in runs:
            ev = run.evals
            ev = ev[ev["fidelity"] == M]
            cost = {0: 0.0}
            for it in run.iterations.itertuples():
                cost[int(it.t)] = paper_lambda([r for r in run.state["ledger"] if r["t"] <= it.t])
            ev = ev.assign(Lambda=ev["t"].map(cost)).dropna(subset=["Lambda"]).sort_values("t")
            rad = np.array([float(stats.hoeffding_radius(max(1, w + ti + lo), tr.config.delta))
                            for w, ti, lo in zip(ev["wins"], ev["ties"], ev["losses"])])
            win = ev["win_freq"].to_numpy(dtype=float)
            ax.errorbar(ev["Lambda"], win, yerr=_errors(win, np.clip(win - rad, 0, 1), np.clip(win + rad, 0, 1)),
                        fmt="-o", ms=4, capsize=2, color=colour, label=name)
        ax.set_title(tr.label, fontsize="small")
        _cost_axis(ax, tr.batch_size)
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"validation WinFreq vs g^({M}) {tr.config.fidelities[-1].role}")
    _figure_legend(fig, where.values())
    fig.suptitle("Cost vs quality: multi-fidelity vs high-fidelity-only alignment")
    return fig


def theorem5_summary(t5: pd.DataFrame, traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Per trace: Eq. 2 summed (multi-fidelity) vs Eq. 3 (high-fidelity only, gap WinRate(g^(M), g^(0))
    measured), beside the measured Lambda, and which fidelity dominates each."""
    rows = []
    for tr in traces:
        sub = t5[t5["label"] == tr.label]
        c = tr.config
        M = len(c.fidelities)
        row = {"label": tr.label, "alpha_hat": sub["alpha_hat"].iloc[0], "beta_hat": sub["beta_hat"].iloc[0],
               "measured_Lambda": tr.mf.expert_cost(),
               "measured_dominant": sub.loc[sub["measured_cost"].idxmax(), "role"]}
        gap_top = tr.expert_pairs.query("m == @M and m_prime == 0")["win_rate"]
        if "bound_term" in sub and sub["bound_term"].notna().all() and len(gap_top):
            rad = float(sub["rad"].iloc[0])
            row.update(mf_bound=float(sub["bound_term"].sum()),
                       bound_dominant=sub.loc[sub["bound_term"].idxmax(), "role"],
                       hf_gap=float(gap_top.iloc[0]),
                       hf_bound=stats.hf_cost_bound(c.fidelities[-1].cost, float(gap_top.iloc[0]), row["alpha_hat"],
                                                    row["beta_hat"], c.gamma, rad, c.batch_size))
            row["mf_bound_below_hf_bound"] = row["mf_bound"] < row["hf_bound"]
        rows.append(row)
    return pd.DataFrame(rows)


def fidelity_gaps(traces: Sequence[TraceResult]) -> pd.DataFrame:
    """Measured WinRate between consecutive models of the ladder (mean over traces) beside the paper's
    Table 1 (Vicuna -> Llama -> Mistral -> Qwen), labelled as the paper's."""
    from mfnb import reference

    frames = [tr.expert_pairs.assign(label=tr.label) for tr in traces]
    pairs = pd.concat(frames, ignore_index=True)
    consecutive = pairs[pairs["m"] - pairs["m_prime"] == 1]
    out = consecutive.groupby(["m", "better", "worse"], as_index=False).agg(
        win_rate_mean=("win_rate", "mean"), win_rate_min=("win_rate", "min"), win_rate_max=("win_rate", "max"),
        n=("n", "first"), traces=("label", "nunique"))
    ref = reference.load("mf_table1")
    names = [f"{b} > {a}" for a, b in zip(ref["baseline"], ref["candidate"])]
    pad = max(0, len(out) - len(ref))
    out["paper_pair (reference)"] = (names + [""] * pad)[: len(out)]
    out["paper_win_rate (reference)"] = (list(ref["win_rate"]) + [math.nan] * pad)[: len(out)]
    return out


def theorem5_lines(t5: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """Plain statements of the Theorem 5 check: estimated alpha and beta, which fidelity dominates the
    measured cost and the bound, Eq. 2 vs Eq. 3, and measured cost over the bound's term per fidelity."""
    lines = []
    for r in summary.itertuples():
        text = f"{r.label}: alpha ~ {r.alpha_hat:.3g}, beta ~ {r.beta_hat:.3g}; measured cost is dominated by {r.measured_dominant}"
        if isinstance(getattr(r, "bound_dominant", None), str):
            text += (f", Eq. 2's terms by {r.bound_dominant}; Eq. 2 summed {r.mf_bound:.4g} "
                     f"{'<' if r.mf_bound_below_hf_bound else '>='} Eq. 3 (HF only) {r.hf_bound:.4g}")
        lines.append("- " + text)
    per_fid = t5.groupby("fidelity")["measured_over_term"].mean() if "measured_over_term" in t5 else pd.Series(dtype=float)
    lines.append("- measured cost / bound term, mean over traces by fidelity: "
                 + ", ".join(f"m={m}: {v:.2f}" for m, v in per_fid.items())
                 + " (the bound adds B once per fidelity; the algorithm pays B per iteration, so this ratio tracks the "
                 "number of iterations spent there)")
    return lines
