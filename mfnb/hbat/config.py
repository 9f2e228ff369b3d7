"""HbAT's parameters (notebook 04's among them): the modified EWC, one SFT stage, one run (Algorithm 1), and the Table 4 methods as
presets of one run.

Where our defaults and the authors' released code differ (as it was described to us; we have not read
or copied that code) -- each is a field of :class:`EWCParams`, and ``EWCParams.released_code()`` selects
all three at once:

* ``reduce``: the code *sums* the squared changes over a tensor's elements; Eq. 7 averages (default).
* ``change_scale``: the code multiplies the changes by 1e10 before the softmax; Eq. 6 does not (default 1).
  With realistic changes (mean squares of 1e-10..1e-4) the unscaled softmax is practically uniform,
  F_i ~ fmax / #tensors, i.e. a plain L2 anchor; with the 1e10 scale it is practically an argmax, all
  of fmax on the single most-changed tensor. Neither is what Eq. 6 suggests; we report both.
* ``lam_placement``: the code puts lambda inside the square, ``(F_i / 2) ||lambda (theta_i - theta*_i)||^2``,
  i.e. lambda^2 where Eq. 5 has lambda. Identical at the paper's lambda = 1.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mfnb.core.params import Params, ParamsError
from mfnb.models import LoraParams, SamplingParams
from mfnb.training.config import DPOParams, LaunchParams, TrainingLogs, dump_with_logs
from mfnb.worlds import WorldSpec

OBJECTIVES = ("sft", "dpo")


class HbatError(ValueError):
    """Bad HbAT input; the message names the field."""


class EWCParams(Params):
    """The modified EWC. Defaults follow the paper's equations; see the module docstring for the code's."""

    importance: Literal["changes", "fisher", "uniform"] = "changes"  # changes: the modified EWC (Eqs. 6-7, 9-10);
    # fisher: the original EWC, the diagonal empirical Fisher per element (Appendix B, mfnb.hbat.fisher);
    # uniform: F_i = fmax / #tensors for every tensor, a plain L2 anchor of the modified EWC's total strength (not in
    # the paper: the control that tells whether the importance weighting matters)
    fisher_scale: Literal["raw", "fmax"] = "raw"  # raw: as estimated (classic EWC, the paper's original);
    # fmax: rescaled to the modified EWC's mean weight per element, fmax / #tensors (same lambda, same overall
    # strength; only where the weight goes differs)
    fisher_batch: int = Field(default=32, ge=1)  # per-example gradients computed this many at a time
    # (torch.func.vmap); 1: one backward pass per example, for models whose per-example gradients do not fit
    lam: float = Field(default=1.0, ge=0)          # lambda, Eqs. 5 and 8 (paper: 1)
    fmax: float = Field(default=100.0, gt=0)       # F_max, Eq. 6 (paper: 100 dialogue, 50 summarization)
    reduce: Literal["mean", "sum"] = "mean"        # Eq. 7: mean over a tensor's elements (code: sum)
    change_scale: float = Field(default=1.0, gt=0)  # multiplies AC before the softmax (code: 1e10)
    lam_placement: Literal["outside", "inside"] = "outside"  # (lam/2) F ||d||^2 vs (F/2) ||lam d||^2
    accumulate: bool = True                        # Eq. 10: AC = sum of C over the objective's stages
    min_fraction: float = Field(default=1e-6, ge=0, lt=1)     # skip tensors with F_i < min_fraction * fmax
    freeze_fraction: float = Field(default=0.2, gt=0, le=1)   # HbAT-Freeze: top 20% of tensors (paper)

    @classmethod
    def released_code(cls, **overrides) -> "EWCParams":
        """The variant of the authors' released code: summed changes, x1e10 before softmax, lambda inside."""
        values = dict(reduce="sum", change_scale=1e10, lam_placement="inside")
        values.update(overrides)
        return cls.validate_mapping(values, source="EWCParams.released_code")

    def coefficient(self, importance):
        """Weight c_i of the penalty 1/2 sum_i c_i ||theta_i - theta*_i||^2 (a number per tensor, or a tensor of
        per-element weights for the Fisher)."""
        lam = self.lam if self.lam_placement == "outside" else self.lam ** 2
        return lam * importance


class SFTStageParams(TrainingLogs):
    """One SFT stage (paper: lr 1e-5, batch 64, 3 epochs). ``report_to`` / ``logging_dir``: its training curves, as
    in :class:`mfnb.training.config.SFTParams` (left out of dumps, so of the stage keys)."""

    lr: float = Field(default=1e-5, gt=0)
    batch_size: int = Field(default=64, ge=1)
    epochs: float = Field(default=3.0, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=512, ge=8)
    # as in DPOParams: batch_size x grad_accum examples per optimizer step; activations recomputed in the backward.
    # Left out of dumps at their defaults, so stage keys made before they existed stay the same
    grad_accum: int = Field(default=1, ge=1, exclude_if=lambda v: v == 1)
    gradient_checkpointing: bool = Field(default=False, exclude_if=lambda v: not v)


def _paper_dpo() -> DPOParams:
    # paper Appendix A: batch 64, lr 1e-6, 2 epochs; the reference is the policy at the stage's start
    return DPOParams(lr=1e-6, batch_size=64, epochs=2.0, reference="previous")


class HbatParams(Params):
    """One HbAT-family run. The Table 4 methods are presets of it (:data:`METHODS`)."""

    n_splits: int = Field(default=2, ge=1)         # N (paper: 2 for dialogue in Sec. 5.2; 10 in App. A)
    preference: bool = True                        # False: SFT only (the SFT baseline)
    constraint: Literal["ewc", "freeze", "none"] = "ewc"
    ewc: EWCParams = EWCParams()
    sft: SFTStageParams = SFTStageParams()
    dpo: DPOParams = Field(default_factory=_paper_dpo)
    select_by: Literal["reward", "win_rate", "quality", "last"] = "reward"   # paper: best Reward
    select_over: Literal["dpo", "all"] = "dpo"     # which stage checkpoints are candidates

    @model_validator(mode="after")
    def _fisher_needs_the_penalty(self):
        if self.ewc.importance in ("fisher", "uniform") and self.constraint == "freeze":
            raise ValueError(f"ewc.importance {self.ewc.importance!r} is a penalty that does not rank tensors; "
                             "constraint 'freeze' needs importance 'changes'")
        return self


# Table 4 (plus HbAT-Freeze of Table 1 and the original EWC of Table 7) as changes to one HbatParams.
METHODS: dict[str, dict[str, Any]] = {
    "SFT": dict(preference=False, n_splits=1, constraint="none", select_over="all"),
    "DPO": dict(n_splits=1, constraint="none"),
    "HbAT": {},
    "w/o EWC": dict(constraint="none"),
    "w/o alternating": dict(n_splits=1),
    "HbAT-Freeze": dict(constraint="freeze"),
    "HbAT w/ original EWC": dict(ewc=dict(importance="fisher")),   # Table 7: the Fisher instead of Eqs. 6-7
    # not in the paper: does the importance weighting matter? (mfnb.hbat.mechanism)
    "HbAT w/ uniform anchor": dict(ewc=dict(importance="uniform")),  # every tensor fmax / #tensors
    "HbAT w/ released importance": dict(ewc=dict(reduce="sum", change_scale=1e10)),  # the authors' code's F_i
}


def for_method(params: HbatParams, method: str) -> HbatParams:
    """``params`` turned into one of the Table 4 methods (see :data:`METHODS`)."""
    if method not in METHODS:
        raise HbatError(f"method: unknown method {method!r}; known: {list(METHODS)}")
    values = dump_with_logs(params)  # the stages' report_to / logging_dir, which a dump leaves out, kept
    for key, change in METHODS[method].items():
        values[key] = {**values[key], **change} if isinstance(change, dict) else change
    return HbatParams.validate_mapping(values, source=f"method {method!r}")


def method_params(params: HbatParams, method: str, **ewc_or_top) -> HbatParams:
    """One run's params: a Table 4 method (:func:`for_method`) with changes to its ``ewc`` block or top-level
    fields (the grids of Figure 2 and the lambda runs: ``n_splits``, ``fmax``, ``lam``...)."""
    params = for_method(params, method)
    if not ewc_or_top:
        return params
    values = dump_with_logs(params)  # the stages' report_to / logging_dir, which a dump leaves out, kept
    for key, value in ewc_or_top.items():
        if key in values["ewc"]:
            values["ewc"][key] = value
        else:
            values[key] = value
    return HbatParams.validate_mapping(values, source=f"{method} {ewc_or_top}")


class HbatNotebookParams(Params):
    """Parameters of notebook 04 (``params/<profile>/04_hbat_ablations.yaml``).

    ``hbat`` defaults to the paper's setting (:class:`mfnb.hbat.HbatParams`); a profile's YAML states
    its departures as overrides. ``world`` names the world and ``conflict`` its alignment-tax recipe
    (validated by the world's ``conflict`` capability)."""

    profile: str = "tiny"
    world: WorldSpec
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)       # Table 4
    grid_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)  # Figure 2
    torch_threads: int = Field(default=1, ge=0)      # 0: torch's default
    init_role: str = "student"                       # the "pre-trained LLM" of Algorithm 1
    lora: LoraParams | None = None                   # None: full fine-tuning
    conflict: dict = Field(default_factory=dict)
    hbat: HbatParams = HbatParams()
    methods: list[str] = Field(default_factory=lambda: list(METHODS), min_length=1)
    n_grid: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    fmax_grid: list[float] = Field(default_factory=lambda: [1.0, 50.0, 100.0, 150.0, 200.0])
    lam_grid: list[float] = Field(default_factory=list)   # lambda sweep at hbat's N and Fmax (grid_seeds)
    sampling: SamplingParams = SamplingParams(temperature=0.75, top_p=0.95, max_new_tokens=16)  # paper: 0.75 / 0.95
    n_validation: int = Field(default=200, ge=1)
    n_test: int = Field(default=500, ge=1)
    tie_margin: float = Field(default=0.05, ge=0)
    delta: float = Field(default=0.05, gt=0, lt=1)
    efficiency_repeats: int = Field(default=1, ge=0)  # Table 7 measurements per method (0: skip)
    keep_weights: bool = False                        # keep stage weights after the notebook (resume only)
    launch: LaunchParams | None = None                # training stages under accelerate launch (mfnb.training.launch)

    @field_validator("seeds", "grid_seeds", "methods", "n_grid", "fmax_grid", "lam_grid")
    @classmethod
    def _distinct(cls, values: list, info) -> list:
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            raise ValueError(f"{info.field_name}: {repeated} repeated in {values} (each value is run once)")
        return values

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, values: list[str]) -> list[str]:
        unknown = [m for m in values if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; known: {list(METHODS)}")
        return values

    @field_validator("lam_grid")
    @classmethod
    def _lambda(cls, values: list[float]) -> list[float]:
        bad = [x for x in values if not x >= 0]
        if bad:
            raise ValueError(f"lam_grid: lambda must be >= 0, got {bad}")
        return values

    @model_validator(mode="after")
    def _check(self):
        for name, values in (("hbat.n_splits", [self.hbat.n_splits]), ("n_grid", self.n_grid)):
            bad = [n for n in values if n < 1]
            if bad:
                raise ValueError(f"{name}: N = {bad} must be >= 1")
        bad = [f for f in self.fmax_grid if not f > 0]
        if bad:
            raise ValueError(f"fmax_grid: Fmax must be > 0, got {bad}")
        return self

    def check_sizes(self, n_sft: int, n_pref: int) -> None:
        """N must fit the smaller of the conflict's data sets (each of the N parts needs an example)."""
        smaller = min(n_sft, n_pref)
        for name, values in (("hbat.n_splits", [self.hbat.n_splits]), ("n_grid", self.n_grid)):
            bad = [n for n in values if n > smaller]
            if bad:
                raise ParamsError(f"parameter {name!r}: N = {bad} must be between 1 and the smaller data set "
                                  f"(conflict.n_sft = {n_sft}, conflict.n_pref = {n_pref})")
