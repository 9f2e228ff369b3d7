"""Verifiable instructions in the style of IFEval, made offline and checked by IFEval's own checker code.

A prompt is a short writing request on a topic ("Write a short poem about the ocean.") followed by one to
three verifiable constraints, each an IFEval instruction id with its kwargs, rendered with IFEval's own
description text ("Answer with less than 40 words.", "In your entire response, refrain from the use of any
commas."). Quality is the fraction of a prompt's constraints the response follows (IFEval's
instruction-level accuracy on one prompt), strict and loose: IFEval's loose score also accepts the
response with its first and/or last line removed and/or asterisks removed.

Checker package: ``if-verifiable==0.1.2`` rather than ``lm-eval[ifeval]``. Both carry the same Google
IFEval checker classes (``instructions.py``, ``instructions_registry.py``, ``instructions_util.py``; the only
behavioural difference is in a checker the IFEval registry disables) and the same loose transformations.
if-verifiable is a 52 KB wheel whose extra dependencies are nltk, langdetect, immutabledict and two tiny
ones (emoji, syllapy); lm-eval is a 9 MB wheel that pulls evaluate, scikit-learn, sacrebleu, rouge-score,
sqlitedict, pytablewriter and more, none of which we use. Its one cost: it needs Python >= 3.11.
Its ``evaluate_instructions`` silently skips an instruction id it does not know; we reject unknown ids
before (:class:`UnknownInstructionError`), so a typo never turns into a perfect score.

Prompts map back to their constraints through a registry keyed by the prompt text (every split is
generated at construction from the seed, so a world rebuilt from its params knows every prompt), and
:meth:`Task.to_ifeval` / :func:`read_jsonl` use IFEval's own ``input_data.jsonl`` row format, so the
official IFEval evaluation can be run on our prompts and our checker on IFEval's.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, NamedTuple, Sequence

from pydantic import Field, field_validator, model_validator

from mfnb.core.atomic import write_text
from mfnb.core.params import Params
from mfnb.worlds.smol.punkt_data import ensure_punkt

CHECKER_PACKAGE = "if-verifiable"
CHECKER_PIN = "if-verifiable==0.1.2"
GENERATOR_VERSION = 1  # bump when prompts generated from the same params change


class InstructionCheckerError(RuntimeError):
    """IFEval's checkers cannot be imported; the message names the package and how to install it."""


class UnknownInstructionError(ValueError):
    """An instruction id that IFEval's registry (or our prompt generator) does not know."""


# ------------------------------------------------------------------------------------- IFEval's code


@functools.lru_cache(maxsize=None)
def _ifeval() -> tuple[dict, dict, Callable]:
    """(INSTRUCTION_DICT, symmetric INSTRUCTION_CONFLICTS, evaluate_instructions), with the NLTK data and
    langdetect's seed in place so every check is offline and repeatable."""
    try:
        from if_verifiable.common import evaluate_instructions
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS, INSTRUCTION_DICT
    except ImportError as err:
        raise InstructionCheckerError(
            f"IFEval's instruction checkers come from the PyPI package {CHECKER_PACKAGE!r}, which cannot be "
            f"imported ({err}): pip install {CHECKER_PIN} (make venv installs it)") from None
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0  # langdetect is random otherwise: the same response could pass and fail
    ensure_punkt()
    conflicts = {k: set(v) for k, v in INSTRUCTION_CONFLICTS.items()}
    for key, others in list(conflicts.items()):  # IFEval's conflict_make: symmetric and reflexive
        for other in others:
            conflicts.setdefault(other, set()).add(key)
        others.add(key)
    return dict(INSTRUCTION_DICT), conflicts, evaluate_instructions


def checker_version() -> str:
    try:
        return importlib.metadata.version(CHECKER_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        _ifeval()  # raises the install message
        raise


def known_instruction_ids() -> list[str]:
    """Every instruction id IFEval's registry checks."""
    return sorted(_ifeval()[0])


def check_instruction_ids(ids: Iterable[str]) -> None:
    """Raise one :class:`UnknownInstructionError` naming every id IFEval's registry does not know."""
    known = _ifeval()[0]
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise UnknownInstructionError(f"unknown IFEval instruction id(s) {unknown}; known: {sorted(known)}")


def describe(instruction_id: str, kwargs: dict[str, Any]) -> str:
    """IFEval's own description text of one instruction with these kwargs."""
    check_instruction_ids([instruction_id])
    checker = _ifeval()[0][instruction_id](instruction_id)
    return checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})


# ---------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """One prompt and its constraints, in IFEval's ``input_data.jsonl`` terms."""

    key: int
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict, ...] = field(compare=True)

    def __post_init__(self):
        if len(self.instruction_id_list) != len(self.kwargs):
            raise ValueError(f"task {self.key}: {len(self.instruction_id_list)} instruction ids but "
                             f"{len(self.kwargs)} kwargs")
        check_instruction_ids(self.instruction_id_list)

    def to_ifeval(self) -> dict:
        return {"key": self.key, "prompt": self.prompt, "instruction_id_list": list(self.instruction_id_list),
                "kwargs": [dict(k) for k in self.kwargs]}

    @classmethod
    def from_ifeval(cls, row: dict) -> "Task":
        return cls(key=int(row["key"]), prompt=row["prompt"], instruction_id_list=tuple(row["instruction_id_list"]),
                   kwargs=tuple(dict(k) for k in row["kwargs"]))


def write_jsonl(tasks: Iterable[Task], path: str | Path) -> Path:
    """Tasks as IFEval's ``input_data.jsonl`` (atomically)."""
    write_text(path, "".join(json.dumps(t.to_ifeval(), sort_keys=True) + "\n" for t in tasks))
    return Path(path)


def read_jsonl(path: str | Path) -> list[Task]:
    """Tasks from an IFEval-format JSONL file (ours or IFEval's own ``input_data.jsonl``)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [Task.from_ifeval(r) for r in rows]


class Score(NamedTuple):
    """Fraction of constraints followed, strict and loose, and which ones (in the task's order)."""

    strict: float
    loose: float
    followed_strict: tuple[bool, ...]
    followed_loose: tuple[bool, ...]


def check(task: Task, response: str) -> Score:
    """IFEval's checkers on one response (``if_verifiable.common.evaluate_instructions``)."""
    _, _, evaluate = _ifeval()
    results, _ = evaluate(response=response, instruction_id_list=list(task.instruction_id_list),
                          kwargs_list=[dict(k) for k in task.kwargs], prompt=task.prompt,
                          instruction_registry=_ifeval()[0])
    n = len(task.instruction_id_list)
    if not results:  # an empty response follows nothing
        return Score(0.0, 0.0, (False,) * n, (False,) * n)
    strict = tuple(r.strict_pass for r in results)
    loose = tuple(r.loose_pass for r in results)
    return Score(sum(strict) / n, sum(loose) / n, strict, loose)


# ------------------------------------------------------------------------------ prompt generation

# Topics with a few words a response about them naturally uses (forbidden words and keyword counts
# draw from these, so the constraint bites).
TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("the ocean", ("ocean", "water", "waves")), ("a rainy day", ("rain", "umbrella", "wet")),
    ("city life", ("city", "traffic", "people")), ("the moon", ("moon", "night", "sky")),
    ("learning to cook", ("cook", "food", "kitchen")), ("a visit to the zoo", ("zoo", "animals", "lion")),
    ("winter mornings", ("winter", "snow", "cold")), ("a summer holiday", ("summer", "beach", "sun")),
    ("friendship", ("friend", "friends", "together")), ("your first job", ("job", "work", "boss")),
    ("coffee", ("coffee", "cup", "morning")), ("gardening", ("garden", "plants", "flowers")),
    ("a long train journey", ("train", "journey", "window")), ("the history of bicycles", ("bicycle", "wheels", "ride")),
    ("a small village", ("village", "houses", "quiet")), ("recycling", ("recycle", "waste", "plastic")),
    ("a birthday party", ("birthday", "cake", "party")), ("space travel", ("space", "rocket", "stars")),
    ("dogs", ("dog", "dogs", "pet")), ("cats", ("cat", "cats", "pet")),
    ("a good night's sleep", ("sleep", "bed", "night")), ("the internet", ("internet", "online", "computer")),
    ("a mountain hike", ("mountain", "hike", "trail")), ("music", ("music", "song", "sound")),
    ("reading books", ("book", "books", "read")), ("a thunderstorm", ("storm", "thunder", "rain")),
    ("healthy breakfasts", ("breakfast", "healthy", "eggs")), ("the first day of school", ("school", "teacher", "class")),
    ("a local market", ("market", "fruit", "buy")), ("saving money", ("money", "save", "budget")),
    ("the desert", ("desert", "sand", "hot")), ("a lighthouse", ("lighthouse", "light", "sea")),
    ("playing chess", ("chess", "game", "move")), ("autumn leaves", ("autumn", "leaves", "trees")),
    ("a new smartphone", ("phone", "screen", "app")), ("public libraries", ("library", "books", "quiet")),
    ("volunteering", ("volunteer", "help", "community")), ("a football match", ("football", "team", "goal")),
    ("baking bread", ("bread", "flour", "oven")), ("electric cars", ("car", "electric", "battery")),
    ("a wedding", ("wedding", "love", "ceremony")), ("the rainforest", ("forest", "trees", "rain")),
    ("time management", ("time", "plan", "work")), ("a museum visit", ("museum", "art", "history")),
    ("learning a language", ("language", "words", "learn")), ("a camping trip", ("camping", "tent", "fire")),
    ("honey bees", ("bees", "honey", "flowers")), ("an old photograph", ("photo", "memory", "old")),
)

REQUESTS: tuple[str, ...] = (
    "Write a short poem about {topic}.", "Write a short story about {topic}.",
    "Describe {topic} in a few sentences.", "Write a short blog post about {topic}.",
    "Write a short email to a friend about {topic}.", "Give some advice about {topic}.",
    "Explain {topic} to a child.", "Write a diary entry about {topic}.",
    "Write a short speech about {topic}.", "Write a few facts about {topic}.",
)

ENDINGS = ("Any other questions?", "Is there anything else I can help with?", "That is all.",
           "Thank you for reading.")

Sampler = Callable[[random.Random, tuple[str, ...]], dict]


def _relation(rng: random.Random, less: tuple[int, int], at_least: tuple[int, int]) -> tuple[str, int]:
    if rng.random() < 0.5:
        return "less than", rng.randint(*less)
    return "at least", rng.randint(*at_least)


def _words(rng, topic_words):
    rel, n = _relation(rng, (20, 80), (20, 60))
    return {"relation": rel, "num_words": 5 * round(n / 5)}


def _sentences(rng, topic_words):
    rel, n = _relation(rng, (2, 5), (2, 5))
    return {"relation": rel, "num_sentences": n}


def _keyword_frequency(rng, topic_words):
    rel, n = _relation(rng, (2, 3), (2, 3))
    return {"keyword": rng.choice(topic_words), "relation": rel, "frequency": n}


def _letter_frequency(rng, topic_words):
    rel, n = _relation(rng, (3, 10), (3, 10))
    return {"letter": rng.choice("abcdefghilmnoprstuwy"), "let_relation": rel, "let_frequency": n}


def _capital_words(rng, topic_words):
    rel, n = _relation(rng, (2, 5), (2, 5))
    return {"capital_relation": rel, "capital_frequency": n}


def _keywords(rng, topic_words):
    from if_verifiable.ifeval.instructions_util import WORD_LIST  # IFEval's own keyword pool

    return {"keywords": rng.sample(WORD_LIST, rng.randint(1, 2))}


# IFEval instruction id -> how its kwargs are drawn. Ranges suit short responses (a small model, tens of
# words); everything else is IFEval's. Left out: language:response_language (a 135M model writes little
# but English), detectable_format:constrained_response (needs yes/no questions),
# length_constraints:nth_paragraph_first_word (needs long multi-paragraph answers).
SAMPLERS: dict[str, Sampler] = {
    "keywords:existence": _keywords,
    "keywords:frequency": _keyword_frequency,
    "keywords:forbidden_words": lambda rng, tw: {"forbidden_words": rng.sample(tw, rng.randint(1, 2))},
    "keywords:letter_frequency": _letter_frequency,
    "length_constraints:number_words": _words,
    "length_constraints:number_sentences": _sentences,
    "length_constraints:number_paragraphs": lambda rng, tw: {"num_paragraphs": rng.randint(2, 3)},
    "detectable_content:postscript": lambda rng, tw: {"postscript_marker": rng.choice(("P.S.", "P.P.S"))},
    "detectable_content:number_placeholders": lambda rng, tw: {"num_placeholders": rng.randint(1, 3)},
    "detectable_format:number_bullet_lists": lambda rng, tw: {"num_bullets": rng.randint(2, 5)},
    "detectable_format:title": lambda rng, tw: {},
    "detectable_format:json_format": lambda rng, tw: {},
    "detectable_format:number_highlighted_sections": lambda rng, tw: {"num_highlights": rng.randint(1, 3)},
    "detectable_format:multiple_sections": lambda rng, tw: {"section_spliter": rng.choice(("Section", "SECTION")),
                                                            "num_sections": rng.randint(2, 3)},
    "change_case:english_lowercase": lambda rng, tw: {},
    "change_case:english_capital": lambda rng, tw: {},
    "change_case:capital_word_frequency": _capital_words,
    "punctuation:no_comma": lambda rng, tw: {},
    "startend:end_checker": lambda rng, tw: {"end_phrase": rng.choice(ENDINGS)},
    "startend:quotation": lambda rng, tw: {},
    "combination:two_responses": lambda rng, tw: {},
    "combination:repeat_prompt": lambda rng, tw: {},  # prompt_to_repeat is filled in from the prompt
}
DEFAULT_IDS: tuple[str, ...] = tuple(SAMPLERS)
REPEAT = "combination:repeat_prompt"
# Followed by none of 32 SmolLM2-135M-Instruct samples (temperature 0.7) on any of the validation prompts
# that carried them (benchmarks/smol_ladder.py): they only add ties to every comparison on that model, so
# the smol profile leaves them out (a stated departure from IFEval's set).
NEVER_FOLLOWED_BY_SMOLLM2: tuple[str, ...] = ("combination:two_responses", "change_case:english_lowercase",
                                              "change_case:english_capital", "startend:quotation")


def sample_task(rng: random.Random, instruction_ids: Sequence[str], min_constraints: int = 1,
                max_constraints: int = 3) -> Task:
    """One request with ``min..max`` mutually compatible constraints (IFEval's conflict table)."""
    _, conflicts, _ = _ifeval()
    topic, topic_words = rng.choice(TOPICS)
    request = rng.choice(REQUESTS).format(topic=topic)
    wanted = rng.randint(min_constraints, max_constraints)
    ids: list[str] = []
    for _ in range(20 * wanted):
        candidate = rng.choice(list(instruction_ids))
        if all(candidate not in conflicts.get(i, {i}) for i in ids):
            ids.append(candidate)
        if len(ids) == wanted:
            break
    if REPEAT in ids:  # IFEval: the request to repeat is the whole prompt but the repeat instruction itself
        ids.remove(REPEAT)
        ids.append(REPEAT)
    kwargs = [SAMPLERS[i](rng, topic_words) for i in ids]
    parts = [request]
    for i, kw in zip(ids, kwargs):
        if i == REPEAT:
            kw["prompt_to_repeat"] = " ".join(parts)
        parts.append(describe(i, kw))
    prompt = " ".join(parts)
    key = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=6).digest(), "big")
    return Task(key=key, prompt=prompt, instruction_id_list=tuple(ids), kwargs=tuple(kwargs))


def generate_tasks(n: int, seed: int | str, instruction_ids: Sequence[str] = DEFAULT_IDS, *,
                   min_constraints: int = 1, max_constraints: int = 3,
                   exclude: Iterable[str] = ()) -> list[Task]:
    """``n`` distinct tasks, a pure function of the arguments; prompts in ``exclude`` are skipped."""
    unknown = [i for i in instruction_ids if i not in SAMPLERS]
    if unknown:
        check_instruction_ids(unknown)  # an id IFEval does not know: that error first
        raise UnknownInstructionError(f"no prompt generator for IFEval instruction id(s) {unknown}; "
                                      f"generated ids: {sorted(SAMPLERS)}")
    rng = random.Random(f"mfnb-instructions-v{GENERATOR_VERSION}-{seed}")
    taken = set(exclude)
    out: list[Task] = []
    for _ in range(50 * n + 100):
        if len(out) == n:
            return out
        task = sample_task(rng, instruction_ids, min_constraints, max_constraints)
        if task.prompt not in taken:
            taken.add(task.prompt)
            out.append(task)
    raise ValueError(f"could only generate {len(out)} distinct prompts of {n} asked "
                     f"(instruction ids {list(instruction_ids)}); allow more instruction ids or constraints")


# --------------------------------------------------------------------------------------- the set


class InstructionParams(Params):
    """How the verifiable-instruction prompts are made (all of it is part of :attr:`InstructionSet.key`)."""

    seed: int = 0
    n_train: int = Field(default=2000, ge=0)
    n_validation: int = Field(default=200, ge=0)
    n_test: int = Field(default=500, ge=0)
    instruction_ids: list[str] = Field(default_factory=lambda: list(DEFAULT_IDS), min_length=1)
    min_constraints: int = Field(default=1, ge=1)
    max_constraints: int = Field(default=3, ge=1)
    quality: Literal["strict", "loose"] = "strict"  # which of IFEval's two scores is the world's quality

    @field_validator("instruction_ids")
    @classmethod
    def _generated_ids(cls, value: list[str]) -> list[str]:
        unknown = [i for i in value if i not in SAMPLERS]
        if unknown:
            raise ValueError(f"unknown or not generated IFEval instruction id(s) {unknown}; "
                             f"known: {sorted(SAMPLERS)}")
        return value

    @model_validator(mode="after")
    def _range(self):
        if self.min_constraints > self.max_constraints:
            raise ValueError(f"min_constraints {self.min_constraints} > max_constraints {self.max_constraints}")
        return self


SPLITS = ("test", "validation", "train")  # generated in this order, each excluding the ones before


def user_message(prompt: str) -> str:
    """The user turn of a ChatML-templated prompt (SmolLM2's template), else the prompt itself."""
    start = "<|im_start|>user\n"
    if start in prompt:
        return prompt.split(start, 1)[1].split("<|im_end|>", 1)[0]
    return prompt


class InstructionSet:
    """The seeded train / validation / test tasks, a registry from prompt text to task, and the checker.

    Each split has its own random stream and excludes the splits generated before it (test, then
    validation, then train), so growing ``n_train`` never changes the validation or test prompts.
    """

    def __init__(self, params: InstructionParams | None = None):
        self.params = params or InstructionParams()
        p = self.params
        self.splits: dict[str, list[Task]] = {}
        self._registry: dict[str, Task] = {}
        sizes = {"test": p.n_test, "validation": p.n_validation, "train": p.n_train}
        for split in SPLITS:
            self.splits[split] = self.generate(split, sizes[split])

    @property
    def key(self) -> str:
        blob = json.dumps({"generator": GENERATOR_VERSION, "checker": f"{CHECKER_PACKAGE}=={checker_version()}",
                           **self.params.model_dump()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def prompts(self) -> dict[str, list[str]]:
        return {split: [t.prompt for t in tasks] for split, tasks in self.splits.items()}

    def generate(self, name: str, n: int) -> list[Task]:
        """``n`` tasks of a named stream, none of them a prompt already known here; registered.

        Beside the three splits, worlds draw held-out sets this way (e.g. the reward model's prompts).
        """
        p = self.params
        tasks = generate_tasks(n, f"{p.seed}-{name}", p.instruction_ids, min_constraints=p.min_constraints,
                               max_constraints=p.max_constraints, exclude=self._registry)
        for t in tasks:
            self._registry[t.prompt] = t
        return tasks

    def task(self, prompt: str) -> Task:
        """The task of a prompt (plain, or ChatML-templated by the model's chat template)."""
        task = self._registry.get(prompt) or self._registry.get(user_message(prompt))
        if task is None:
            raise KeyError(f"prompt not generated by this instruction set ({len(self._registry)} known): "
                           f"{prompt[:120]!r}")
        return task

    def score(self, prompt: str, response: str) -> Score:
        return _cached_check(self.task(prompt), response)

    def quality(self, prompt: str, response: str) -> float:
        """Fraction of the prompt's constraints followed (``params.quality``: IFEval strict or loose)."""
        score = self.score(prompt, response)
        return score.strict if self.params.quality == "strict" else score.loose

    def mean_scores(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
        """Mean strict and loose instruction-level scores, and IFEval's prompt-level (all followed) ones."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        scores = [self.score(p, r) for p, r in zip(prompts, responses)]
        n = max(len(scores), 1)
        return {"strict": sum(s.strict for s in scores) / n, "loose": sum(s.loose for s in scores) / n,
                "prompt_strict": sum(all(s.followed_strict) for s in scores) / n,
                "prompt_loose": sum(all(s.followed_loose) for s in scores) / n, "n": len(scores)}


class _TaskKey:
    """Hashable wrapper so checks are cached per (task, response)."""

    __slots__ = ("task", "_h")

    def __init__(self, task: Task):
        self.task = task
        self._h = hash((task.prompt, task.instruction_id_list))

    def __hash__(self):
        return self._h

    def __eq__(self, other):
        return isinstance(other, _TaskKey) and other.task == self.task


@functools.lru_cache(maxsize=1 << 16)
def _check_cached(key: _TaskKey, response: str) -> Score:
    return check(key.task, response)


def _cached_check(task: Task, response: str) -> Score:
    return _check_cached(_TaskKey(task), response)
