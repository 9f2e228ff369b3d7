"""Notebook 03's parameters: the preference set, the data fractions, DPO and LoRA, the alpha grid, the
reward model and the judge (``params/<profile>/03_expo_alpha_curves.yaml``).

Imported on first use by :mod:`mfnb.expo` (DPO, LoRA and sampling settings pull in TRL and transformers,
~5 s, which the weight arithmetic never needs).
"""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from mfnb.core.params import Params, ParamsError
from mfnb.judges import JudgeSpec
from mfnb.expo.off_the_shelf import OffTheShelfPair, check_pairs
from mfnb.judges.alpaca_eval import AlpacaEvalSpec
from mfnb.models import LoraParams, SamplingParams
from mfnb.training.config import DPOParams, LaunchParams
from mfnb.worlds import WorldSpec, require

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class PreferenceDataParams(Params):
    """The full ("100%") preference set; each data fraction trains on a nested prefix of it.

    The world makes the pairs (its ``preference_pairs`` capability). ``correct_vs_habit`` (tiny world): for a
    training prompt, chosen = the correct answer and rejected = the answer with the task's habit (the
    student's systematic mistake), both known to the world. ``checker_best_vs_worst`` (smol world): the best
    and worst of a few SmolLM2 samples under IFEval's checker. ``dataset`` (paper world): the dataset's own
    pairs (UltraFeedback binarized's chosen / rejected). The world names what it does not make.
    ``n_pairs: null``: every training prompt's pair.
    """

    source: str = "correct_vs_habit"
    n_pairs: int | None = Field(default=4096, ge=1)
    seed: int = 0


class Figure6Params(Params):
    """The paper's Figure 6 control: DPO trained harder on the same data fraction (a larger learning rate,
    or more epochs), each model swept over alpha like the default ones. Every fraction here must be one of
    ``fractions`` (the control is compared with that fraction's default model + ExPO). Empty lists skip
    the control."""

    fractions: list[Fraction] = Field(default_factory=list)
    lrs: list[PositiveFloat] = Field(default_factory=list)     # each with dpo.epochs
    epochs: list[PositiveFloat] = Field(default_factory=list)  # each with dpo.lr

    @field_validator("fractions", "lrs", "epochs")
    @classmethod
    def _distinct(cls, value: list[float], info) -> list[float]:
        if len(set(value)) != len(value):
            raise ValueError(f"figure6.{info.field_name} must be distinct, got {value}")
        return value


class ExpoParams(Params):
    """Notebook 03: reward, quality and length vs alpha per data fraction (Figure 5) and Table 1."""

    profile: str
    world: WorldSpec
    sft_role: str = "student"
    preference: PreferenceDataParams = PreferenceDataParams()
    fractions: list[Fraction] = Field(min_length=1)
    dpo: DPOParams
    lora: LoraParams = LoraParams()
    lr_probe: list[PositiveFloat] = Field(default_factory=list)
    alphas: list[FiniteFloat] = Field(min_length=1)
    reward_model: dict
    sampling: SamplingParams
    figure6: Figure6Params = Figure6Params()
    sweep_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    n_select: int | None = Field(default=None, ge=1)
    n_report: int | None = Field(default=None, ge=1)
    judge: JudgeSpec
    # AlpacaEval 2.0 as the paper scored it (paper profile): Table 1 judged by alpaca_eval's own annotator, its LC
    # win rate beside ours, the outputs written in its format; ``judge`` is then not used. None: ``judge``.
    alpaca_eval: AlpacaEvalSpec | None = None
    # Table 2: off-the-shelf SFT / aligned pairs (roles of the world) extrapolated in full weights; [] skips it
    off_the_shelf: list[OffTheShelfPair] = Field(default_factory=list)
    baseline_role: str = "g2"
    report_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    n_boot: int = Field(default=2000, ge=100)     # bootstrap replicates over prompts for every interval
    boot_seed: int = 0
    # training seeds: each trains every DPO model again on its own draw of the data (order and subsets), and
    # every interval crosses them with the prompts; the first is the one the learning-rate probe uses
    train_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    torch_threads: int | None = Field(default=None, ge=1)
    delta: float = Field(default=0.05, gt=0, lt=1)
    launch: LaunchParams | None = None   # DPO steps under accelerate launch (mfnb.training.launch); None: here

    @field_validator("fractions", "alphas", "sweep_seeds", "report_seeds", "lr_probe", "train_seeds")
    @classmethod
    def _distinct(cls, value: list, info) -> list:
        if len(set(value)) != len(value):
            repeated = sorted({v for v in value if value.count(v) > 1})
            raise ValueError(f"{info.field_name} must be distinct, got {value} ({repeated} repeated)")
        return value

    @field_validator("figure6")
    @classmethod
    def _control_fractions(cls, value: Figure6Params, info) -> Figure6Params:
        fractions = info.data.get("fractions") or []
        unknown = [f for f in value.fractions if f not in fractions]
        if unknown:
            raise ValueError(f"figure6.fractions {unknown} are not in fractions {fractions} (the control is "
                             "compared with that fraction's default DPO model)")
        if value.fractions and not (value.lrs or value.epochs):
            raise ValueError("figure6 gives fractions but neither lrs nor epochs (nothing to train)")
        return value

    def check_world(self, world) -> None:
        """Fail now, naming the field, if ``world`` lacks what these parameters ask of it: preference data,
        a reward model of its own (unless ``reward_model.path`` names one), the SFT and baseline roles (the
        judge is checked by :func:`mfnb.evaluation.world_judge`)."""
        require(world, "preference_pairs", field="preference.source", notebook="03")
        if "path" not in self.reward_model:
            require(world, "reward_model", field="reward_model", notebook="03")
        check_pairs(world, self.off_the_shelf)
        for field, role in (("sft_role", self.sft_role), ("baseline_role", self.baseline_role)):
            if role not in world.roles:
                raise ParamsError(f"parameter {field!r}: {role!r} is not a role of this world (roles: {world.roles})")
