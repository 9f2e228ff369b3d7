"""Notebook 02's parameters: Algorithm 2's inputs (the experts and their costs, gamma, epsilon, B) with our
caps, one run's config, and the notebook's traces (``params/<profile>/02_multifidelity_traces.yaml``).
Defaults are the paper's where it gives them.
"""
from __future__ import annotations

from typing import Sequence

from pydantic import Field, field_validator, model_validator

from mfnb.dpo import DPOParams
from mfnb.models import LoraParams, SamplingParams
from mfnb.params import Params, ParamsError


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
    world: dict
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
