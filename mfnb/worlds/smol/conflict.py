"""The smol world's alignment tax (HbAT, notebook 04): instruction-following demonstrations versus preferences
for something they lack, judged by a real scorer.

* **Demonstrations** (SFT): for each prompt, SmolLM2's best-of-k sample under IFEval's checker (the
  instruction-following alignment the paper's first stage teaches).
* **Preferences** (DPO): ``pref_samples`` SmolLM2 samples of each prompt scored by VADER sentiment
  (``vaderSentiment``, a rule-based lexicon scorer): chosen = the most positive, rejected = the least
  (``tone='negative'``: the other way round), pairs closer than ``min_reward_gap`` skipped. The rater cares about tone only, never about the
  constraints; with ``conflict_rate`` > 0 a share of the pairs is drawn, where possible, among pairs whose
  more positive response also follows *fewer* constraints (raters who prefer a warm answer over a correct
  one: a data-level conflict, as the tiny world's ``chosen_habit_rate``).

Two scores per response, both known exactly: ``quality`` = the checker's strict fraction of constraints
followed (instruction following), ``reward`` = (VADER compound + 1) / 2 in [0, 1] (the preference). The
win rate against the references (the demonstrations, as the paper's is against the test set's references)
uses an oracle judge on ``overall = (1 - style_weight) * quality + style_weight * reward``.

Same interface as :mod:`mfnb.worlds.tiny.conflict` (``split_prompts``, ``sft_rows``, ``preference_rows``,
``references``, ``quality``, ``reward``, ``overall``, ``judge``, ``scores``); the rows hold the raw prompt and
response text, and the world applies the chat template when it trains.
"""
from __future__ import annotations

import functools
import random
from typing import Literal, Sequence

from pydantic import Field

from mfnb.core.params import Params
from mfnb.worlds.shared.conflict import ConflictScoring

PACKAGE_PIN = "vaderSentiment==3.3.2"


@functools.lru_cache(maxsize=1)
def _vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise ImportError(f"the smol conflict's reward is VADER sentiment from the PyPI package 'vaderSentiment': "
                          f"pip install {PACKAGE_PIN} (make venv installs it)") from None
    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """VADER's compound score mapped to [0, 1] (0.5 neutral)."""
    return (_vader().polarity_scores(text)["compound"] + 1.0) / 2.0


class SmolConflictParams(Params):
    """How the demonstrations and the preference data are made (see the module docstring)."""

    n_sft: int = Field(default=1000, ge=1)
    n_pref: int = Field(default=1000, ge=1)
    demo_k: int = Field(default=8, ge=1)          # demonstrations: best-of-demo_k under the checker
    pref_samples: int = Field(default=4, ge=2)    # preferences: most vs least positive of this many samples
    min_reward_gap: float = Field(default=0.05, ge=0.0, le=1.0)
    conflict_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    style_weight: float = Field(default=1 / 3, ge=0.0, le=1.0)
    # the tone the rater prefers. SmolLM2-135M-Instruct already writes warmly (mean reward 0.89 on validation
    # prompts, measured), yet "negative" (a matter-of-fact tone) pays no tax: DPO toward it made SmolLM2
    # follow *more* constraints; "positive" with conflict_rate 1 does (params/smol/04 records the runs)
    tone: Literal["positive", "negative"] = "positive"


class SmolConflict(ConflictScoring):
    """Data sets and scores of the conflict, on the smol world's training prompts.

    ``tasks``: the :class:`mfnb.worlds.smol.task.InstructionSet` (the checker); ``sampler``: a
    :class:`mfnb.worlds.shared.best_of_k.BestOfK` over SmolLM2 (its store holds every sample drawn here).
    """

    def __init__(self, tasks, sampler, params: SmolConflictParams | None = None):
        self.tasks, self.sampler = tasks, sampler
        self.params = params or SmolConflictParams()

    # -- data -----------------------------------------------------------------------------------

    def sft_rows(self, prompts: Sequence[str], *, show_progress: bool = False) -> list[dict]:
        """Demonstrations: the best-of-``demo_k`` sample under the checker."""
        choices = self.sampler.respond(list(prompts), self.params.demo_k, show_progress=show_progress)
        return [{"prompt": q, "completion": c.text} for q, c in zip(prompts, choices)]

    def preference_rows(self, prompts: Sequence[str], seed: int, *, show_progress: bool = False) -> list[dict]:
        """(prompt, chosen, rejected): the most and least positive of ``pref_samples`` samples."""
        p = self.params
        rng = random.Random(f"smol-conflict-{seed}")
        samples = self.sampler.candidates(list(prompts), p.pref_samples, show_progress=show_progress)
        rows = []
        for prompt, cands in zip(prompts, samples):
            scored = [(self.reward(prompt, c.text), self.quality(prompt, c.text), c.text) for c in cands]
            pairs = [(a, b) for a in scored for b in scored if a[0] - b[0] >= max(p.min_reward_gap, 1e-9)]
            if not pairs:
                continue
            conflicting = [(a, b) for a, b in pairs if a[1] < b[1]]
            if conflicting and rng.random() < p.conflict_rate:
                chosen, rejected = max(conflicting, key=lambda ab: ab[0][0] - ab[1][0])
            else:
                chosen, rejected = max(scored), min(scored)
            rows.append({"prompt": prompt, "chosen": chosen[2], "rejected": rejected[2],
                         "reward_gap": chosen[0] - rejected[0], "quality_gap": chosen[1] - rejected[1]})
        return rows

    def references(self, prompts: Sequence[str]) -> list[str]:
        """The references of the win rate: the demonstrations (best-of-``demo_k`` under the checker)."""
        return [c.text for c in self.sampler.respond(list(prompts), self.params.demo_k)]

    # -- scores ---------------------------------------------------------------------------------

    def quality(self, prompt: str, response: str) -> float:
        """Instruction following: IFEval's strict fraction of the prompt's constraints followed."""
        return self.tasks.quality(prompt, response)

    def reward(self, prompt: str, response: str) -> float:
        """The preference reward: VADER sentiment of the response in [0, 1] (reversed for ``tone='negative'``)."""
        value = sentiment(response)
        return value if self.params.tone == "positive" else 1.0 - value

    @property
    def judge_name(self) -> str:
        return f"smol_conflict.overall(vader-{self.params.tone},w={self.params.style_weight:.6g})"
