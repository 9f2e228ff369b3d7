"""The paper's Figure 6 control for notebook 03: DPO trained *harder* on the same data fraction (a larger
learning rate, or more epochs), so that a small data fraction is no longer also a small weight change.

If the optimal alpha only falls with the data because a small fraction barely moves the weights (and alpha
makes up for it), the harder-trained models need a smaller alpha too; whether they then match the default
model + ExPO tells whether the amount of data, not only the size of the update, shapes the direction.
"""
from __future__ import annotations

from dataclasses import dataclass

from mfnb.expo.training import fraction_label


# the arm that tests ExPO apart from its reward model: alpha chosen on the validation prompts by the world's known
# quality (tiny: the quality function; smol: IFEval's checker), then judged on the test prompts like every row
ORACLE = " (oracle alpha)"


@dataclass(frozen=True)
class Variant:
    """One DPO model: a data fraction, trained with the default settings or with a replaced ``lr`` /
    ``epochs`` (None: the parameters' own)."""

    fraction: float
    lr: float | None = None
    epochs: float | None = None

    @property
    def is_default(self) -> bool:
        return self.lr is None and self.epochs is None

    @property
    def change(self) -> str:
        """What differs from the default model: '' (nothing), 'lr 0.005' or '10 epochs'."""
        parts = ([f"lr {self.lr:g}"] if self.lr is not None else []) + \
                ([f"{self.epochs:g} epochs"] if self.epochs is not None else [])
        return ", ".join(parts)

    @property
    def key(self) -> str:
        """The sweep's label: '5%' for the default model, '5%, lr 0.005' for a control."""
        return ", ".join([fraction_label(self.fraction)] + ([self.change] if self.change else []))

    def name(self, expo: bool = False, oracle: bool = False) -> str:
        """The model's row name in the test tables: 'DPO(5% data)', 'DPO(5% data, lr 0.005)+ExPO', and with
        ``oracle`` the ExPO model at the alpha the world's known quality chose: 'DPO(5% data)+ExPO (oracle alpha)'."""
        extra = f", {self.change}" if self.change else ""
        return f"DPO({fraction_label(self.fraction)} data{extra})" + ("+ExPO" if expo or oracle else "") + \
            (ORACLE if oracle else "")

    @property
    def default(self) -> "Variant":
        return Variant(self.fraction)


def control_variants(params) -> list[Variant]:
    """The Figure 6 models of ``params.figure6``: per fraction, each larger lr, then each epoch count."""
    f6 = params.figure6
    return [Variant(f, lr=lr) for f in f6.fractions for lr in f6.lrs] + \
           [Variant(f, epochs=e) for f in f6.fractions for e in f6.epochs]
