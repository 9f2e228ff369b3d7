"""Notebook 02's parameters: Algorithm 2's inputs (the experts and their costs, gamma, epsilon, B) with our
caps, one run's config, and the notebook's traces (``params/<profile>/02_multifidelity_traces.yaml``).
Defaults are the paper's where it gives them.
"""
from __future__ import annotations

from typing import Literal, Sequence

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mfnb.core.params import Params, ParamsError, did_you_mean
from mfnb.judges import JudgeSpec
from mfnb.models import LoraParams, SamplingParams
from mfnb.training.config import DPOParams, LaunchParams, SFTParams, dump_with_logs
from mfnb.worlds import WorldSpec


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
    # how a look's judgements become the number compared with gamma: the paper's Section 5 computes its
    # win rates as wins / total pairs (ties count 0); Section 2's WinFreq counts a tie as 1/2 ("half")
    tie_convention: Literal["wins_over_total", "half"] = "wins_over_total"
    # the paper: move on when the win rate "exceeds" gamma (strict); "at_least" is >=
    gamma_rule: Literal["exceeds", "at_least"] = "exceeds"
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
    sft: SFTParams = SFTParams(lr=5e-4, batch_size=16, epochs=1.0)  # the SFT baseline's step
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


FULL_BUDGET_BASELINES = ("sft", "fixed_ladder")


def vanilla_name(m: int) -> str:
    """The baseline (and run) name of the paper's vanilla(m = m): ``vanilla-m2``.  No "=" in it, so papermill's
    parameter inspection can read a list of them."""
    return f"vanilla-m{m}"


def vanilla_fidelity(name: str) -> int | None:
    """m of a ``vanilla-m<m>`` baseline name, None for another baseline."""
    return int(name[len("vanilla-m"):]) if name.startswith("vanilla-m") and name[len("vanilla-m"):].isdigit() else None


def baseline_names(n_fidelities: int) -> list[str]:
    """Every baseline notebook 02 knows for M fidelities: vanilla-m1..vanilla-mM, sft, fixed_ladder."""
    return [vanilla_name(m) for m in range(1, n_fidelities + 1)] + list(FULL_BUDGET_BASELINES)


class TracesParams(AlgorithmParams):
    """Parameters of notebooks/02_multifidelity_traces.ipynb (one trace per batch size and seed)."""

    profile: str
    world: WorldSpec
    batch_sizes: list[int] = Field(min_length=1)
    trace_seeds: list[int] = Field(min_length=1)
    baselines: list[str] = Field(default_factory=lambda: [vanilla_name(2), vanilla_name(3)])
    # a baseline run only at some batch sizes (default: at every one); e.g. {"vanilla-m1": [512]}
    baseline_batch_sizes: dict[str, list[int]] = Field(default_factory=dict)
    fixed_ladder_iterations: list[int] | None = None   # per fidelity below the top; null = mean of the adaptive runs
    n_test: int = Field(default=500, ge=1)
    test_sampling: SamplingParams = SamplingParams(top_p=0.95, top_k=50)
    # which multi-fidelity iterates answer the test prompts: "all" (every iterate, the spend-to-match curve at
    # every step) or "compared" (the initial student, those Table 4 compares, each fidelity's last one and the
    # run's last one: CPU time on a real LLM)
    test_iterates: Literal["all", "compared"] = "all"
    judge: JudgeSpec = Field(default_factory=lambda: {"kind": "oracle"})
    torch_threads: int | None = Field(default=1, ge=1)
    runs_dir: str | None = None
    launch: LaunchParams | None = None   # DPO / SFT steps under accelerate launch (mfnb.training.launch); None: here

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, values: list[int]) -> list[int]:
        if any(b < 1 for b in values):
            raise ValueError(f"every batch size B must be >= 1, got {values}")
        if len(set(values)) != len(values):
            raise ValueError(f"each batch size may appear once, got {values}")
        return values

    @field_validator("trace_seeds")
    @classmethod
    def _distinct_seeds(cls, values: list[int]) -> list[int]:
        twice = sorted({s for s in values if values.count(s) > 1})
        if twice:
            raise ValueError(f"seed(s) {twice} listed more than once in {values}: a repeated seed repeats the "
                             "same run and would count it twice in every interval over seeds")
        return values

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, values: list[str], info: ValidationInfo) -> list[str]:
        fidelities = info.data.get("fidelities")
        if fidelities is None:  # fidelities failed validation: reported on their own
            return values
        known = baseline_names(len(fidelities))
        for name in values:
            if name not in known:
                raise ValueError(f"unknown baseline {name!r}{did_you_mean(name, set(known))}; known: {', '.join(known)}")
        twice = sorted({b for b in values if values.count(b) > 1})
        if twice:
            raise ValueError(f"{twice} listed more than once")
        return values

    @field_validator("baseline_batch_sizes")
    @classmethod
    def _restricted_baselines(cls, values: dict[str, list[int]], info: ValidationInfo) -> dict[str, list[int]]:
        baselines, batches = info.data.get("baselines"), info.data.get("batch_sizes")
        for name, sizes in values.items():
            if baselines is not None and name not in baselines:
                raise ValueError(f"{name!r} is not in baselines{did_you_mean(name, set(baselines))} "
                                 f"(baselines: {', '.join(baselines)})")
            if batches is not None and not set(sizes) <= set(batches):
                raise ValueError(f"{name!r}: batch sizes {sorted(set(sizes) - set(batches))} are not in batch_sizes "
                                 f"{batches}")
        return values

    @field_validator("fixed_ladder_iterations")
    @classmethod
    def _ladder_counts(cls, values: list[int] | None, info: ValidationInfo) -> list[int] | None:
        fidelities = info.data.get("fidelities")
        if values is not None and fidelities is not None and (len(values) != len(fidelities) - 1
                                                               or any(k < 0 for k in values)):
            raise ValueError(f"expected {len(fidelities) - 1} iteration counts >= 0 (one per fidelity below the "
                             f"top), got {values}")
        return values

    @model_validator(mode="after")
    def _has_an_end(self):
        """Algorithm 2 leaves a fidelity only when a look passes gamma or the weights stop moving; a student that
        does neither trains forever (each iteration's DPO runs on all of D^(m), so it also grows costlier)."""
        if self.max_iters_per_fidelity is None and self.max_iters is None and self.max_budget is None:
            raise ValueError("max_iters_per_fidelity, max_iters and max_budget are all null: Algorithm 2 then has no "
                             "guaranteed end below the top fidelity (a look that never passes gamma while the weights "
                             "keep moving trains forever); set max_iters_per_fidelity (the paper's Tables 2-3 use at "
                             "most 3 iterations at a fidelity) and/or max_iters")
        return self

    def baselines_at(self, batch_size: int) -> list[str]:
        """The baselines run at this batch size (``baseline_batch_sizes`` restricts some)."""
        return [b for b in self.baselines if batch_size in self.baseline_batch_sizes.get(b, [batch_size])]

    @property
    def vanilla_fidelities(self) -> list[int]:
        return [m for m in map(vanilla_fidelity, self.baselines) if m is not None]

    def run_config(self, batch_size: int, seed: int) -> RunConfig:
        # dump_with_logs: the dpo / sft steps' report_to and logging_dir, which a dump leaves out, kept
        fields = {k: v for k, v in dump_with_logs(self).items() if k in AlgorithmParams.model_fields}
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
