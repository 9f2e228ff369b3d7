"""Oracle: the synthetic world's known quality."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from mfnb.judges.protocol import Outcome, PairwiseJudge, Triple, _check_nonneg, _check_unit, _uniform


class OracleJudge(PairwiseJudge):
    """Judges by a known quality function q(prompt, response) in [0, 1].

    Verdict for the first-shown response a against b: tie if |q(a) - q(b)| <= tie_margin, else win or
    lose.  Then ``label_noise`` p flips a win/lose with probability p, and ``position_bias`` b hands a
    non-tie verdict to the first-shown response with probability b.  Both draws hash (seed, prompt,
    first, second), so verdicts are identical across reruns, instances and resumed runs.  A quality
    that is NaN or outside [0, 1] gives FAILED.  ``name`` identifies the quality function in the cache
    key (default: its module-qualified name): give a new name when the world's quality changes.
    """

    def __init__(self, quality_fn: Callable[[str, str], float], tie_margin: float = 0.05,
                 label_noise: float = 0.0, position_bias: float = 0.0, seed: int = 0,
                 name: str | None = None, cost_per_call: float = 0.0, batch_size: int | None = None,
                 progress: bool | None = None):
        super().__init__(seed=seed, cost_per_call=cost_per_call, batch_size=batch_size, progress=progress)
        if not callable(quality_fn):
            raise ValueError(f"OracleJudge: quality_fn must be callable, got {quality_fn!r}")
        self.quality_fn = quality_fn
        self.tie_margin = _check_nonneg("OracleJudge", "tie_margin", tie_margin)
        self.label_noise = _check_unit("OracleJudge", "label_noise", label_noise)
        self.position_bias = _check_unit("OracleJudge", "position_bias", position_bias)
        if name is None:
            name = f"{getattr(quality_fn, '__module__', '?')}.{getattr(quality_fn, '__qualname__', repr(quality_fn))}"
        self.name = str(name)

    def _params(self) -> dict[str, Any]:
        return {"name": self.name, "tie_margin": self.tie_margin, "label_noise": self.label_noise,
                "position_bias": self.position_bias, "seed": self.seed}

    @property
    def order_symmetric(self) -> bool:
        return self.label_noise == 0.0 and self.position_bias == 0.0

    def _judge_presented(self, batch: Sequence[Triple]) -> list[Outcome]:
        out = []
        for prompt, a, b in batch:
            qa, qb = float(self.quality_fn(prompt, a)), float(self.quality_fn(prompt, b))
            if not (0.0 <= qa <= 1.0 and 0.0 <= qb <= 1.0):  # also catches NaN
                out.append(Outcome.FAILED)
                continue
            diff = qa - qb
            if abs(diff) <= self.tie_margin:
                out.append(Outcome.TIE)
                continue
            verdict = Outcome.WIN if diff > 0 else Outcome.LOSE
            if self.label_noise and _uniform(self.seed, "noise", prompt, a, b) < self.label_noise:
                verdict = verdict.flipped()
            if self.position_bias and _uniform(self.seed, "position", prompt, a, b) < self.position_bias:
                verdict = Outcome.WIN
            out.append(verdict)
        self._count_calls(len(batch))
        return out
