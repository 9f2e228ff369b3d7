"""The papers' datasets, read with ``datasets.load_dataset`` and mapped to the rows the notebooks use.

Every loader returns a :class:`PaperData`: prompts per split, preference rows ``{prompt, chosen,
rejected}``, SFT rows ``{prompt, completion}`` and reference responses, with the papers' split sizes and
seeded draws. Each loader's docstring names the hub schema it expects (columns, splits, files).

A :class:`DataSource` says where one dataset comes from: its hub name (the default), or a local folder
holding the same files (``hf download <name> --repo-type dataset --local-dir <folder>`` on a machine with
network, then ``path: <folder>`` in the params), or files of another builder (``path: json``,
``files: {split: path}``). The same code reads all three. A hub repository that ships only a loading
script (AlpacaFarm, AlpacaEval), which ``datasets`` 4+ no longer runs, is read from its raw JSON files
through ``files``.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from mfnb.core.params import Params


class HubDataError(ValueError):
    """A dataset that cannot be reached or does not have the expected schema; the message says what to do."""


class DataSource(Params):
    """Where one dataset comes from.

    ``path``: a hub name (``Dahoas/rm-static``), a local folder with the same files, or a ``datasets``
    builder (``json``, ``parquet``, ``csv``) whose ``files`` are full paths. ``files`` maps a split to a
    file inside the repository or folder (used where the hub repository has no data configuration of its
    own, only files).
    """

    path: str
    name: str | None = None
    revision: str | None = None
    files: dict[str, str] | None = None


_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_PACKAGED = {"json", "parquet", "csv", "arrow", "text"}

RM_STATIC = DataSource(path="Dahoas/rm-static")
ULTRAFEEDBACK = DataSource(path="HuggingFaceH4/ultrafeedback_binarized")
ALPACA_INSTRUCTIONS = DataSource(path="tatsu-lab/alpaca_farm", files={
    "sft": "alpaca_instructions/sft.json", "preference": "alpaca_instructions/preference.json",
    "unlabeled": "alpaca_instructions/unlabeled.json", "val": "alpaca_instructions/val.json"})
ALPACA_HUMAN_PREFERENCE = DataSource(path="tatsu-lab/alpaca_farm",
                                     files={"preference": "alpaca_human_preference.json"})
ALPACA_FARM_EVALUATION = DataSource(path="tatsu-lab/alpaca_farm", files={"eval": "alpaca_farm_evaluation.json"})
ALPACA_EVAL = DataSource(path="tatsu-lab/alpaca_eval", files={
    "eval": "alpaca_eval.json", "gpt4_baseline": "alpaca_eval_gpt4_baseline.json"})
TLDR_SFT = DataSource(path="trl-lib/tldr")
TLDR_PREFERENCE = DataSource(path="trl-lib/tldr-preference")


@dataclass
class PaperData:
    """One paper's data in the notebooks' schema; every dict is keyed by split."""

    dataset: str
    prompts: dict[str, list[str]] = field(default_factory=dict)
    preference_rows: dict[str, list[dict]] = field(default_factory=dict)
    sft_rows: dict[str, list[dict]] = field(default_factory=dict)
    references: dict[str, list[str]] = field(default_factory=dict)

    def sizes(self) -> dict[str, dict[str, int]]:
        """Row counts, for a notebook's data table."""
        return {kind: {split: len(rows) for split, rows in getattr(self, kind).items()}
                for kind in ("prompts", "preference_rows", "sft_rows", "references") if getattr(self, kind)}


# ----------------------------------------------------------------------------------- reading a split


def _is_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).expanduser().exists()


def _describe(source: DataSource) -> str:
    extra = [f"config {source.name!r}" if source.name else "", f"revision {source.revision!r}" if source.revision else ""]
    return source.path + "".join(f", {e}" for e in extra if e)


def _unreachable(label: str, source: DataSource, err: BaseException) -> HubDataError:
    revision = f" --revision {source.revision}" if source.revision else ""
    return HubDataError(
        f"{label}: dataset {_describe(source)} cannot be reached ({type(err).__name__}: {err}). The Hugging Face "
        f"hub is offline here (HF_HUB_OFFLINE=1) or out of reach. On a machine with network, download it once: "
        f"`hf download {source.path} --repo-type dataset{revision} --local-dir <folder>` (older "
        f"huggingface_hub: `huggingface-cli download ...`), copy the folder here and set {label}.path: <folder> "
        f"in the params; or load it once with network so that it lands in the datasets cache.")


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import LocalEntryNotFoundError

    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, LocalEntryNotFoundError]
    try:
        import httpx

        errors += [httpx.ConnectError, httpx.TimeoutException]
    except ImportError:  # pragma: no cover - huggingface_hub >= 1 depends on httpx
        pass
    return tuple(errors)


def _load_arguments(source: DataSource, split: str, label: str) -> tuple[str, dict[str, Any]]:
    """``(path, kwargs)`` for ``datasets.load_dataset``: the repository itself, or one of its files."""
    kwargs: dict[str, Any] = {"split": split}
    local = _is_local(source.path)
    if local and not Path(source.path).expanduser().exists():
        raise HubDataError(f"{label}.path: local folder {source.path} not found")
    if source.files is None:
        if source.path in _PACKAGED:
            raise HubDataError(f"{label}: builder {source.path!r} needs files: {{split: path}}")
        if source.name:
            kwargs["name"] = source.name
        if source.revision:
            kwargs["revision"] = source.revision
        return str(Path(source.path).expanduser()) if local else source.path, kwargs
    if split not in source.files:
        raise HubDataError(f"{label}.files: no file for split {split!r}; files are given for {sorted(source.files)}")
    file = source.files[split]
    if source.path in _PACKAGED:
        builder, location = source.path, file
    else:
        builder = _BUILDERS.get("".join(Path(file).suffixes[-1:]))
        if builder is None:
            raise HubDataError(f"{label}.files.{split}: cannot tell the format of {file!r}; "
                               f"use one of {sorted(_BUILDERS)}")
        if local:
            location = str(Path(source.path).expanduser() / file)
            if not Path(location).is_file():
                raise HubDataError(f"{label}.files.{split}: {location} not found")
        else:
            at = f"@{source.revision}" if source.revision else ""
            location = f"hf://datasets/{source.path}{at}/{file}"
    kwargs.update(data_files={split: location})
    return builder, kwargs


def load_split(source: DataSource, split: str, columns: Sequence[str], label: str):
    """One split as a ``datasets.Dataset`` holding at least ``columns``; errors name ``label`` (the
    params field), the dataset, and what to do."""
    import datasets

    path, kwargs = _load_arguments(source, split, label)
    try:
        data = datasets.load_dataset(path, **kwargs)
    except _unreachable_errors() as err:
        raise _unreachable(label, source, err) from None
    except datasets.exceptions.DatasetNotFoundError as err:
        raise HubDataError(f"{label}: dataset {_describe(source)} not found ({err}); check the name, or point "
                           f"{label}.path at a local folder with the same files") from None
    except ValueError as err:
        if "Unknown split" in str(err):
            raise HubDataError(f"{label}: dataset {_describe(source)} has no split {split!r} ({err})") from None
        raise
    missing = [c for c in columns if c not in data.column_names]
    if missing:
        raise HubDataError(f"{label}: dataset {_describe(source)}, split {split!r}, lacks the column(s) {missing} "
                           f"(expected {list(columns)}); its columns are {data.column_names}")
    return data


# ---------------------------------------------------------------------------------------- helpers


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _shuffled(items: Sequence, seed: int, salt: str) -> list:
    order = list(items)
    random.Random(f"{salt}-{seed}").shuffle(order)
    return order


def _take(items: list, n: int, label: str, what: str) -> list:
    if n > len(items):
        raise HubDataError(f"{label}: asked for {n} {what}, the dataset holds only {len(items)}")
    return items[:n]


def nested_fractions(rows: Sequence[Any], fractions: Sequence[float]) -> dict[float, list]:
    """ExPO's data fractions: the first ``ceil(f * n)`` rows of one seeded order, so each larger fraction
    contains every pair of a smaller one."""
    out = {}
    for f in fractions:
        if not 0 < f <= 1:
            raise HubDataError(f"fractions: {f} is not in (0, 1]")
        out[f] = list(rows[: max(1, math.ceil(f * len(rows) - 1e-9))])
    return out


_TURN = re.compile(r"\n\n(Human|Assistant):")


def hh_messages(prompt: str) -> list[dict[str, str]]:
    """An Anthropic-HH prompt (``"\\n\\nHuman: ...\\n\\nAssistant:"``) as chat messages, so each model's own
    chat template can format it; the final empty Assistant turn is dropped."""
    parts = _TURN.split(prompt if prompt.startswith("\n\n") else "\n\n" + prompt.lstrip("\n"))
    if len(parts) < 3 or parts[0].strip():
        raise HubDataError(f"not an HH dialogue (no '\\n\\nHuman:' turn): {prompt[:80]!r}")
    messages = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
                for who, text in zip(parts[1::2], parts[2::2])]
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


# ------------------------------------------------------------------------- multi-fidelity: rm-static


def rm_static(source: DataSource = RM_STATIC, *, n_validation: int = 200, n_test: int = 500, seed: int = 0,
              n_train: int | None = None, train_split: str = "train", eval_split: str = "test",
              label: str = "data") -> PaperData:
    """Dahoas/rm-static for the multi-fidelity paper ("we shuffle the dataset and reserve 200 samples for
    validation and 500 samples for testing").

    Hub schema (parquet, splits ``train`` 76,256 and ``test`` 5,103 rows): ``prompt`` (an HH dialogue ending
    in ``"\\n\\nAssistant:"``), ``response``, ``chosen``, ``rejected`` (the responses alone, without the
    prompt). The validation and test prompts are disjoint seeded draws from the distinct prompts of
    ``eval_split``; the training prompts (the alignment prompt set X) are the distinct prompts of
    ``train_split`` not among them, in a seeded order. ``references`` hold the human-chosen response of each
    validation/test prompt; ``preference_rows['train']`` the human preferences (for reward-model or
    preference-data baselines; the paper's own pairs are expert-chosen, student-rejected).
    """
    columns = ("prompt", "chosen", "rejected")
    held = load_split(source, eval_split, columns, label)
    first_chosen: dict[str, str] = {}
    for prompt, chosen in zip(held["prompt"], held["chosen"]):
        first_chosen.setdefault(prompt, chosen)
    drawn = _take(_shuffled(list(first_chosen), seed, "rm-static-eval"), n_validation + n_test, label,
                  f"validation + test prompts (split {eval_split!r}, distinct)")
    validation, test = drawn[:n_validation], drawn[n_validation:]
    train = load_split(source, train_split, columns, label)
    held_out = set(drawn)
    rows = [{"prompt": p, "chosen": c, "rejected": r}
            for p, c, r in zip(train["prompt"], train["chosen"], train["rejected"]) if p not in held_out]
    train_prompts = _shuffled(_unique(r["prompt"] for r in rows), seed, "rm-static-train")
    if n_train is not None:
        train_prompts = _take(train_prompts, n_train, label, f"training prompts (split {train_split!r}, distinct)")
    return PaperData(
        dataset=source.path,
        prompts={"train": train_prompts, "validation": validation, "test": test},
        preference_rows={"train": rows},
        references={"validation": [first_chosen[p] for p in validation], "test": [first_chosen[p] for p in test]})


# ------------------------------------------------------------------------------ ExPO: UltraFeedback


def _last_assistant(messages: Any, label: str, split: str, index: int, column: str) -> str:
    if not (isinstance(messages, list) and messages and isinstance(messages[-1], dict)
            and messages[-1].get("role") == "assistant" and isinstance(messages[-1].get("content"), str)):
        raise HubDataError(f"{label}: split {split!r}, row {index}, column {column!r}: expected a list of "
                           f"{{role, content}} messages ending with the assistant's turn, got {str(messages)[:120]}")
    return messages[-1]["content"]


def _ultrafeedback_rows(data, label: str, split: str) -> list[dict]:
    rows = []
    for i, (prompt, chosen, rejected) in enumerate(zip(data["prompt"], data["chosen"], data["rejected"])):
        rows.append({"prompt": prompt, "chosen": _last_assistant(chosen, label, split, i, "chosen"),
                     "rejected": _last_assistant(rejected, label, split, i, "rejected")})
    return rows


def ultrafeedback(source: DataSource = ULTRAFEEDBACK, *, seed: int = 0, train_split: str = "train_prefs",
                  dev_split: str = "test_prefs", n_train: int | None = None, n_dev: int | None = None,
                  label: str = "data") -> PaperData:
    """HuggingFaceH4/ultrafeedback_binarized for ExPO (DPO on 5/10/20/40/100% of it; alpha chosen on the
    development set).

    Hub schema (parquet; splits ``train_prefs`` ~61k, ``test_prefs`` 2,000, plus ``train_sft``, ``test_sft``,
    ``train_gen``, ``test_gen``): ``prompt`` (text), ``prompt_id``, ``chosen`` and ``rejected`` (lists of
    ``{role, content}`` messages: the user's prompt, then the assistant's response), ``messages``,
    ``score_chosen``, ``score_rejected``. ``preference_rows['train']`` come in one seeded order, so
    :func:`nested_fractions` gives nested subsets; ``prompts['dev']`` (from ``dev_split``) is where alpha is
    chosen by the reward model. The paper speaks of "1K" development preferences; the hub's ``test_prefs``
    holds 2,000 (``n_dev`` draws a seeded subset).
    """
    columns = ("prompt", "chosen", "rejected")
    train = _shuffled(_ultrafeedback_rows(load_split(source, train_split, columns, label), label, train_split),
                      seed, "ultrafeedback-train")
    if n_train is not None:
        train = _take(train, n_train, label, f"preference pairs (split {train_split!r})")
    dev = _ultrafeedback_rows(load_split(source, dev_split, columns, label), label, dev_split)
    if n_dev is not None:
        dev = _take(_shuffled(dev, seed, "ultrafeedback-dev"), n_dev, label, f"pairs (split {dev_split!r})")
    return PaperData(dataset=source.path,
                     prompts={"train": [r["prompt"] for r in train], "dev": [r["prompt"] for r in dev]},
                     preference_rows={"train": train, "dev": dev})


# -------------------------------------------------------------------------- HbAT dialogue: AlpacaFarm

# The Alpaca prompt (AlpacaFarm's default ``v0_inputs_noinputs`` format), with and without an input.
ALPACA_PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n"
                       "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                 "the request.\n\n### Instruction:\n{instruction}\n\n### Response:")


def alpaca_prompt(instruction: str, input: str | None = None, style: str = "alpaca") -> str:
    """The prompt of one Alpaca row: the Alpaca template (``style="alpaca"``) or, for chat models whose own
    template is applied later, the instruction and input as plain text (``style="plain"``)."""
    input = (input or "").strip()
    if style == "plain":
        return f"{instruction}\n\n{input}" if input else instruction
    if style != "alpaca":
        raise HubDataError(f"prompt_style: expected 'alpaca' or 'plain', got {style!r}")
    return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input) if input else \
        ALPACA_PROMPT.format(instruction=instruction)


def _alpaca_prompts(data, style: str) -> list[str]:
    inputs = data["input"] if "input" in data.column_names else [""] * len(data)
    return [alpaca_prompt(i, x, style) for i, x in zip(data["instruction"], inputs)]


def alpaca_farm(instructions: DataSource = ALPACA_INSTRUCTIONS,
                human_preference: DataSource = ALPACA_HUMAN_PREFERENCE,
                evaluation: DataSource = ALPACA_FARM_EVALUATION, *, n_validation: int = 200, seed: int = 0,
                prompt_style: str = "alpaca", label: str = "data") -> PaperData:
    """tatsu-lab/alpaca_farm for HbAT's dialogue task (SFT on the ``sft`` split, preferences from human
    annotations, 200 of the 805 evaluation instructions for validation and the rest for test).

    Hub schema (a script repository; read from its JSON files): ``alpaca_instructions/{sft,preference,
    unlabeled,val}.json`` with ``instruction``, ``input``, ``output`` (10k / 20k / 20k / 2k rows);
    ``alpaca_human_preference.json`` with ``instruction``, ``input``, ``output_1``, ``output_2``,
    ``preference`` (1 or 2: the preferred output); ``alpaca_farm_evaluation.json`` (805 rows) with
    ``instruction``, ``input``, ``output`` (the reference response), ``generator``, ``dataset``,
    ``datasplit``. ``prompts['preference']`` are the 20k instructions of the preference split (HbAT's
    human-preference-alignment prompts); ``references`` the evaluation set's outputs.
    """
    sft = load_split(instructions, "sft", ("instruction", "input", "output"), f"{label}.instructions")
    pref_prompts = load_split(instructions, "preference", ("instruction", "input"), f"{label}.instructions")
    human = load_split(human_preference, "preference", ("instruction", "input", "output_1", "output_2", "preference"),
                       f"{label}.human_preference")
    evaluation_data = load_split(evaluation, "eval", ("instruction", "input", "output"), f"{label}.evaluation")
    pairs = []
    for i, (prompt, a, b, choice) in enumerate(zip(_alpaca_prompts(human, prompt_style), human["output_1"],
                                                   human["output_2"], human["preference"])):
        if choice not in (1, 2):
            raise HubDataError(f"{label}.human_preference: row {i}: preference must be 1 or 2, got {choice!r}")
        pairs.append({"prompt": prompt, "chosen": a if choice == 1 else b, "rejected": b if choice == 1 else a})
    eval_prompts = _alpaca_prompts(evaluation_data, prompt_style)
    eval_references = list(evaluation_data["output"])
    order = _shuffled(range(len(eval_prompts)), seed, "alpaca-farm-eval")
    _take(order, n_validation, f"{label}.evaluation", "validation instructions")
    splits = {"validation": order[:n_validation], "test": order[n_validation:]}
    return PaperData(
        dataset=instructions.path,
        prompts={"preference": _alpaca_prompts(pref_prompts, prompt_style),
                 **{s: [eval_prompts[i] for i in idx] for s, idx in splits.items()}},
        sft_rows={"train": [{"prompt": p, "completion": c}
                            for p, c in zip(_alpaca_prompts(sft, prompt_style), sft["output"])]},
        preference_rows={"train": pairs},
        references={s: [eval_references[i] for i in idx] for s, idx in splits.items()})


# ---------------------------------------------------------------------------- ExPO evaluation: AlpacaEval


def alpaca_eval(source: DataSource = ALPACA_EVAL, *, reference_split: str | None = "gpt4_baseline",
                label: str = "data") -> PaperData:
    """tatsu-lab/alpaca_eval's 805 instructions (ExPO evaluates on AlpacaEval 2.0).

    Hub schema (a script repository; read from its JSON files): ``alpaca_eval.json`` with ``instruction``,
    ``output``, ``generator``, ``dataset``; ``alpaca_eval_gpt4_baseline.json`` with the same columns, holding
    AlpacaEval 2.0's GPT-4 baseline responses, which become ``references['eval']`` (matched by instruction;
    ``reference_split=None`` keeps the ``output`` of ``alpaca_eval.json`` instead).
    """
    data = load_split(source, "eval", ("instruction", "output"), label)
    prompts = list(data["instruction"])
    references = list(data["output"])
    if reference_split is not None:
        baseline = load_split(source, reference_split, ("instruction", "output"), label)
        by_instruction = dict(zip(baseline["instruction"], baseline["output"]))
        missing = [p for p in prompts if p not in by_instruction]
        if missing:
            raise HubDataError(f"{label}: {len(missing)} instruction(s) of 'eval' have no response in "
                               f"{reference_split!r}, e.g. {missing[0][:80]!r}")
        references = [by_instruction[p] for p in prompts]
    return PaperData(dataset=source.path, prompts={"eval": prompts}, references={"eval": references})


# ----------------------------------------------------------------------- HbAT summarization: TL;DR


def tldr(sft: DataSource = TLDR_SFT, preference: DataSource = TLDR_PREFERENCE, *, eval_fraction: float = 0.1,
         seed: int = 0, n_train: int | None = None, label: str = "data") -> PaperData:
    """TL;DR for HbAT's summarization task: the filtered Reddit TL;DR of Stiennon et al. (2020) for SFT, their
    92.9k human comparisons for preferences, and "10% of posts" of the validation and test sets.

    Hub schemas (parquet): ``trl-lib/tldr`` with ``prompt`` (``"SUBREDDIT: r/... TITLE: ... POST: ...
    TL;DR:"``) and ``completion``, splits ``train`` 116,722 / ``validation`` 6,447 / ``test`` 6,553;
    ``trl-lib/tldr-preference`` with ``prompt``, ``chosen``, ``rejected`` (openai/summarize_from_feedback's
    comparisons in the same prompt format), split ``train`` 92,858. Validation/test prompts are seeded
    ``eval_fraction`` draws (645 / 655 at 10%, as in HbAT's Table 5); ``references`` their human summaries.
    """
    if not 0 < eval_fraction <= 1:
        raise HubDataError(f"{label}.eval_fraction: must be in (0, 1], got {eval_fraction}")
    train = load_split(sft, "train", ("prompt", "completion"), f"{label}.sft")
    sft_rows = [{"prompt": p, "completion": c} for p, c in zip(train["prompt"], train["completion"])]
    if n_train is not None:
        sft_rows = _take(_shuffled(sft_rows, seed, "tldr-train"), n_train, f"{label}.sft", "SFT rows")
    prompts, references = {}, {}
    for split in ("validation", "test"):
        data = load_split(sft, split, ("prompt", "completion"), f"{label}.sft")
        n = round(eval_fraction * len(data))
        drawn = data.select(_shuffled(range(len(data)), seed, f"tldr-{split}")[:n])
        prompts[split], references[split] = list(drawn["prompt"]), list(drawn["completion"])
    pref = load_split(preference, "train", ("prompt", "chosen", "rejected"), f"{label}.preference")
    pairs = [{"prompt": p, "chosen": c, "rejected": r}
             for p, c, r in zip(pref["prompt"], pref["chosen"], pref["rejected"])]
    return PaperData(dataset=sft.path, prompts={"train": [r["prompt"] for r in sft_rows], **prompts},
                     sft_rows={"train": sft_rows}, preference_rows={"train": pairs}, references=references)
