"""The tiny world's task: short word instructions with a known answer and a graded quality function.

Each task type has one *habit*: a plausible systematic mistake (echo the words instead of sorting them,
say them once instead of twice, count every word instead of only the animals, ...). Models of the tiny
world differ by which habits they have, so a better model is better in a way a judge can see and a
preference update has a clear direction to move in.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

ANIMALS = ["cat", "dog", "cow", "fox", "owl", "pig", "bee", "hen", "ant", "elk"]
COLORS = ["red", "blue", "green", "pink", "gray", "gold", "tan", "black", "white", "brown"]
FRUITS = ["apple", "pear", "plum", "fig", "lime", "kiwi", "grape", "lemon", "mango", "peach"]
CONTENT_WORDS = ANIMALS + COLORS + FRUITS
KINDS = {"animals": ANIMALS, "colors": COLORS, "fruits": FRUITS}
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

# instruction text -> task name; the prompt is "<instruction>: <words> . answer:"
INSTRUCTIONS = {
    "sort": "sort these words",
    "reverse": "reverse these words",
    "repeat": "repeat twice",
    "count": "count the {kind} in",
    "last": "say the last word of",
    "pick": "pick the {kind} from",
}
TASKS = tuple(INSTRUCTIONS)
ANSWER_CUE = ". answer:"


@dataclass(frozen=True)
class Example:
    task: str
    words: tuple[str, ...]
    kind: str | None = None

    @property
    def prompt(self) -> str:
        instruction = INSTRUCTIONS[self.task].format(kind=self.kind)
        return f"{instruction}: {' '.join(self.words)} {ANSWER_CUE}"

    def answer(self, habit: bool = False) -> str:
        """The correct answer, or the task's habitual mistake."""
        words = list(self.words)
        if self.task in ("sort", "reverse"):
            out = words if habit else (sorted(words) if self.task == "sort" else words[::-1])
        elif self.task == "repeat":
            out = words if habit else words + words
        elif self.task == "count":
            n = len(words) if habit else sum(w in KINDS[self.kind] for w in words)
            out = [NUMBERS[n]]
        elif self.task == "last":
            out = [words[0] if habit else words[-1]]
        elif self.task == "pick":
            out = words if habit else [w for w in words if w in KINDS[self.kind]]
        else:
            raise ValueError(f"unknown task {self.task!r}")
        return " ".join(out)

    @property
    def vocabulary(self) -> list[str]:
        return self.prompt.replace(":", " :").replace(".", " .").split()


def sample_example(rng: random.Random, tasks: tuple[str, ...] = TASKS, min_words: int = 3,
                   max_words: int = 5) -> Example:
    task = rng.choice(tasks)
    n = rng.randint(min_words, max_words)
    if task in ("count", "pick"):
        kind = rng.choice(sorted(KINDS))
        # make sure the asked kind is present and the habit (counting/echoing everything) is wrong
        n_kind = rng.randint(1, n - 1)
        others = [w for w in CONTENT_WORDS if w not in KINDS[kind]]
        words = rng.sample(KINDS[kind], n_kind) + rng.sample(others, n - n_kind)
        rng.shuffle(words)
        return Example(task, tuple(words), kind)
    words = rng.sample(CONTENT_WORDS, n)
    if task in ("sort",) and words == sorted(words):
        words = words[::-1]
    if task == "reverse" and words == words[::-1]:
        words = rng.sample(CONTENT_WORDS, n)
    return Example(task, tuple(words))


def parse_prompt(prompt: str) -> Example:
    """Recover the example from its prompt text (the quality function needs nothing else)."""
    text = prompt.strip()
    if not text.endswith(ANSWER_CUE):
        raise ValueError(f"not a tiny-world prompt (no {ANSWER_CUE!r} cue): {prompt!r}")
    head, _, tail = text[: -len(ANSWER_CUE)].partition(":")
    words = tuple(tail.split())
    for task, instruction in INSTRUCTIONS.items():
        if "{kind}" in instruction:
            for kind in KINDS:
                if head == instruction.format(kind=kind):
                    return Example(task, words, kind)
        elif head == instruction:
            return Example(task, words)
    raise ValueError(f"not a tiny-world prompt (unknown instruction {head!r}): {prompt!r}")


def _edit_distance(a: list[str], b: list[str]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def quality(prompt: str, response: str) -> float:
    """Graded quality in [0, 1]: 1 for the correct answer, partial credit for near misses.

    Word answers score 1 - edit distance / length (in words); counts score by how far off they are.
    """
    example = parse_prompt(prompt)
    target = example.answer().split()
    said = response.lower().replace(".", " ").split()
    if example.task == "count":
        if len(said) != 1 or said[0] not in NUMBERS:
            return 0.0
        return max(0.0, 1.0 - abs(NUMBERS.index(said[0]) - NUMBERS.index(target[0])) / 4)
    longest = max(len(said), len(target), 1)
    return 1.0 - _edit_distance(said, target) / longest


def vocabulary() -> list[str]:
    words = set(CONTENT_WORDS) | set(NUMBERS) | {":", "."}
    for instruction in INSTRUCTIONS.values():
        for kind in KINDS:
            words.update(instruction.format(kind=kind).split())
    words.update(ANSWER_CUE.replace(".", " .").replace(":", " :").split())
    return sorted(words)


SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>"]


def build_tokenizer():
    """A word-level tokenizer over the task's closed vocabulary (built locally, no download)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<bos>", eos_token="<eos>", padding_side="left")
    return tokenizer
