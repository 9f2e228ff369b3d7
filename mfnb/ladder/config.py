"""Notebook 01's parameters: the fidelity ladder to judge and the judge check beside it."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from mfnb.core.params import Params
from mfnb.judges import JudgeSpec
from mfnb.models import SamplingParams
from mfnb.worlds import WorldSpec


class AgreementParams(Params):
    """Notebook 01's judge check: parse rate and agreement with the world's checker, per judge, on Table 1's pairs."""

    judges: dict[str, JudgeSpec] = Field(default_factory=dict)   # extra judges by name (specs like `judge`), beside it
    max_pairs: int | None = Field(default=None, ge=1)        # per judge; None: every pair of Table 1
    tie_margin: float = Field(default=0.05, ge=0)            # checker differences within it are ties (not counted)


class FidelityWinratesParams(Params):
    """Notebook 01: the paper's Table 1 (win rate of each adjacent pair of the fidelity ladder)."""

    profile: str
    world: WorldSpec
    judge: JudgeSpec
    sampling: SamplingParams
    chain: list[str] = Field(min_length=2)
    split: Literal["validation", "test"] = "validation"
    sampling_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    delta: float = Field(default=0.05, gt=0, lt=1)
    torch_threads: int | None = Field(default=1, ge=1)
    agreement: AgreementParams = AgreementParams()
