"""Parameters of notebooks/05_hoeffding_bounds.ipynb."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from mfnb.core.params import Params

# ----------------------------------------------------------------------------------------------
# Notebook 05 parameters
# ----------------------------------------------------------------------------------------------

Prob = Annotated[float, Field(gt=0, lt=1)]
UnitClosed = Annotated[float, Field(ge=0, le=1)]


class HoeffdingParams(Params):
    """Parameters of notebooks/05_hoeffding_bounds.ipynb."""

    profile: str
    seed: int = Field(ge=0)
    deltas: list[Prob] = Field(min_length=1)
    delta: Prob
    n_max: int = Field(ge=10)
    n_reps: int = Field(ge=1)
    coverage_ns: list[Annotated[int, Field(ge=2)]] = Field(min_length=1)
    true_win_rates: list[Prob] = Field(min_length=1)
    tie_rates: list[Annotated[float, Field(ge=0, lt=1)]] = Field(min_length=1)
    gamma: float = Field(gt=0, lt=1)
    batch_size: int = Field(ge=1)
    n_batches: int = Field(ge=1)
    n_validation: int = Field(ge=1)
    flip_probs: list[Annotated[float, Field(ge=0, lt=0.5)]] = Field(min_length=1)
    noise_n: int = Field(ge=1)
    t5_alphas: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)
    t5_beta: float = Field(gt=0)
    t5_batches: list[Annotated[float, Field(ge=0)]] = Field(min_length=1)
    t5_n_fidelities: int = Field(ge=1)
    t5_cost_ratios: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)
    t5_step_winrates: list[Annotated[float, Field(gt=0, lt=1)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _reachable(self):
        for mu in self.true_win_rates:
            for tie in self.tie_rates:
                if mu - tie / 2 < 0 or 1 - mu - tie / 2 < 0:
                    raise ValueError(f"true win rate {mu} is not reachable with tie rate {tie}")
        return self
