"""A tiny-world alignment tax: demonstrations and preferences that partly pull apart (notebook 04).

HbAT is about the conflict between instruction-following alignment (SFT on demonstrations) and
human-preference alignment (DPO on comparisons): the second stage can undo what the first taught. The
tiny world's version:

* **Demonstrations** answer each word instruction correctly and plainly (``" fox cat owl"``).
* **Preferences** prefer a *style* the demonstrations never show: a marker word, by default an opening
  ``"."`` (``" . fox cat owl"``). The chosen response always carries it, the rejected one never does;
  both have the correct answer. So the objectives pull apart on the first token only -- SFT's likelihood
  says "start with the answer", the preference says "start with the marker" -- and agree on the content.
  A styled, correct answer satisfies both, so the conflict can be resolved.
* Plain DPO nevertheless pays an alignment tax: to raise chosen over rejected it also pushes down the
  likelihood of the plain correct answer, and that spills over to the styled answer's content (the
  "likelihood displacement" of DPO): instruction-following quality falls while the style is learned.
* Optionally (``chosen_habit_rate`` > 0) the rater's styled examples also carry a task's habitual mistake
  on ``conflict_tasks``, a data-level conflict like raters who prefer confident, polished but less
  accurate answers.

Two scores per model, both known exactly:

* ``quality``: the world's own quality function (``tasks.quality``) on the response with the style
  marker removed (the marker is not part of the answer; for ``"."`` removal changes nothing, as the
  quality function ignores full stops anyway). This is instruction following.
* ``reward``: the preference reward, 1 if the response carries the style marker, else 0.

A third, the **win rate against the reference responses** (the correct plain answers, as the paper's
GPT-4 win rate is against the test set's references), uses an oracle judge on
``overall = (1 - style_weight) * quality + style_weight * reward``: a correct styled answer beats the
reference, a correct plain one ties, a wrong one loses unless the style makes up for a small error.
"""
from __future__ import annotations

import random
from typing import Literal, Sequence

from pydantic import Field, field_validator

from mfnb.core.params import Params
from mfnb.worlds.shared.conflict import ConflictScoring
from mfnb.worlds.tiny import task as tasks


class ConflictParams(Params):
    """How the demonstrations and the preference data are made (see the module docstring)."""

    style: str = "."                                  # marker the preference favours; demos never show it
    style_position: Literal["end", "start"] = "start"  # an opening marker or a closing one
    conflict_tasks: list[str] = Field(default_factory=lambda: ["repeat", "pick", "last"])
    chosen_habit_rate: float = Field(default=0.0, ge=0.0, le=1.0)    # on conflict tasks
    rejected_habit_rate: float = Field(default=0.0, ge=0.0, le=1.0)  # on conflict tasks
    style_weight: float = Field(default=1 / 3, ge=0.0, le=1.0)       # the judge's weight on style
    n_sft: int = Field(default=2000, ge=1)            # demonstrations
    n_pref: int = Field(default=2000, ge=1)           # preference pairs (disjoint prompts)

    @field_validator("conflict_tasks")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(tasks.TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {list(tasks.TASKS)}")
        return value

    @field_validator("style")
    @classmethod
    def _style_in_vocabulary(cls, value: str) -> str:
        words = value.replace(".", " . ").replace(":", " : ").split()
        missing = [w for w in words if w not in tasks.vocabulary()]
        if not words or missing:
            raise ValueError(f"style {value!r} must be words of the tiny vocabulary (missing {missing}); "
                             "the word-level tokenizer would turn anything else into <unk>")
        return value


def _strip_style(response: str, style: str, position: str = "end") -> tuple[str, bool]:
    text = response.strip()
    if position == "end" and text.endswith(style):
        return text[: -len(style)].strip(), True
    if position == "start" and text.startswith(style):
        return text[len(style):].strip(), True
    return text, False


class ConflictWorld(ConflictScoring):
    """Data sets and scores of the conflict, on a tiny world's training prompts."""

    def __init__(self, params: ConflictParams | None = None):
        self.params = params or ConflictParams()

    # -- data -----------------------------------------------------------------------------------

    def sft_rows(self, prompts: Sequence[str]) -> list[dict]:
        """Demonstrations: the correct answer, plain (never styled)."""
        return [{"prompt": q, "completion": " " + tasks.parse_prompt(q).answer()} for q in prompts]

    def preference_rows(self, prompts: Sequence[str], seed: int) -> list[dict]:
        """(prompt, chosen, rejected): chosen styled (habit-ridden at ``chosen_habit_rate`` on conflict
        tasks), rejected plain (habit at ``rejected_habit_rate``)."""
        p = self.params
        rng = random.Random(seed)
        rows = []
        for q in prompts:
            example = tasks.parse_prompt(q)
            conflict = example.task in p.conflict_tasks
            chosen_habit = conflict and rng.random() < p.chosen_habit_rate
            rejected_habit = conflict and rng.random() < p.rejected_habit_rate
            rows.append({"prompt": q, "chosen": " " + self.styled(example.answer(habit=chosen_habit)),
                         "rejected": " " + example.answer(habit=rejected_habit)})
        return rows

    def styled(self, answer: str) -> str:
        p = self.params
        return f"{answer} {p.style}" if p.style_position == "end" else f"{p.style} {answer}"

    def references(self, prompts: Sequence[str]) -> list[str]:
        """The reference responses of the win rate: the correct plain answers."""
        return [tasks.parse_prompt(q).answer() for q in prompts]

    # -- scores ---------------------------------------------------------------------------------

    def quality(self, prompt: str, response: str) -> float:
        """Instruction following: the world's quality function on the answer without the style marker."""
        return tasks.quality(prompt, _strip_style(response, self.params.style, self.params.style_position)[0])

    def reward(self, prompt: str, response: str) -> float:
        """The preference reward: 1 when the response ends with the style marker."""
        return float(_strip_style(response, self.params.style, self.params.style_position)[1])

    @property
    def judge_name(self) -> str:
        return f"hbat_conflict.overall(style={self.params.style!r},w={self.params.style_weight:.6g})"
