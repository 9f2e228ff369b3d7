"""ExPO's aligned models for notebook 03: LoRA DPO adapters on the SFT model, one per fraction of one
preference set, each trained once and cached by everything that changes it.

The SFT model is one of the world's roles (the tiny world's habit-ridden student); every aligned model is
the SFT model plus an adapter, so every ExPO model is the SFT model plus a *scaled* adapter and a whole alpha
sweep runs on one loaded PeftModel (:mod:`mfnb.expo.lora`).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from mfnb.core import paths
from mfnb.core.atomic import atomic_dir, write_json
from mfnb.models import attach_lora, load_adapter
from mfnb.training.dpo import dpo_update, preference_dataset
from mfnb.worlds import require

if TYPE_CHECKING:
    from mfnb.expo.config import ExpoParams, PreferenceDataParams

EXPO_VERSION = 1  # bump when the data recipe or training changes meaning, so cached adapters are not reused


def preference_rows(world, data: PreferenceDataParams, train_seed: int = 0) -> list[dict]:
    """The full preference set, in a seeded order: fraction f trains on the first ``ceil(f * n)`` rows,
    so a larger fraction contains every pair of a smaller one (as subsampling one dataset does). The
    world makes the pairs (its ``preference_pairs`` capability).  Every training seed draws its own order
    (and so its own subsets, and its own ``n_pairs`` prompts when they are fewer than the world's); seed 0
    keeps the order of ``data.seed`` alone."""
    pairs = require(world, "preference_pairs", field="preference.source", notebook="03")
    prompts = list(world.prompts["train"])
    n = len(prompts) if data.n_pairs is None else data.n_pairs
    if n > len(prompts):
        raise ValueError(f"preference.n_pairs={n} exceeds the world's {len(prompts)} training prompts")
    random.Random(f"expo-preference-{data.seed}" + (f"-train{train_seed}" if train_seed else "")).shuffle(prompts)
    return pairs(prompts[:n], data.source)


def length_bias(rows: Sequence[dict]) -> float:
    """Mean words of the chosen minus the rejected answer per pair: how much the data alone teaches length."""
    return float(np.mean([len(r["chosen"].split()) - len(r["rejected"].split()) for r in rows]))


def fraction_rows(rows: Sequence[dict], fraction: float) -> list[dict]:
    return list(rows[: max(1, math.ceil(fraction * len(rows) - 1e-9))])


def fraction_label(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _dpo_settings(params: ExpoParams, lr: float | None, epochs: float | None):
    """``params.dpo`` with the learning rate and/or epochs of a control run (Figure 6) replaced."""
    update = {k: v for k, v in (("lr", lr), ("epochs", epochs)) if v is not None}
    return params.dpo.model_copy(update=update) if update else params.dpo


def adapter_key(world, params: ExpoParams, fraction: float, lr: float | None = None,
                epochs: float | None = None, seed: int = 0) -> str:
    """Everything that changes the adapter: world, SFT role, data, fraction, DPO and LoRA settings, the
    training seed (which also draws the data's order)."""
    dpo = _dpo_settings(params, lr, epochs).model_dump()
    blob = json.dumps({"version": EXPO_VERSION, "world": world.key, "sft": params.sft_role,
                       "data": params.preference.model_dump(), "fraction": fraction, "dpo": dpo,
                       "lora": params.lora.model_dump(), "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def adapter_path(world, params: ExpoParams, fraction: float, lr: float | None = None,
                 cache_root: str | Path | None = None, epochs: float | None = None, seed: int = 0) -> Path:
    root = Path(cache_root or paths.cache_dir("expo_adapters"))
    key = adapter_key(world, params, fraction, lr, epochs, seed)
    return root / f"{world.key}-{params.sft_role}-{fraction:g}-{key}"


def train_dpo_adapter(world, params: ExpoParams, fraction: float, *, lr: float | None = None,
                      epochs: float | None = None, cache_root: str | Path | None = None,
                      rows: Sequence[dict] | None = None, seed: int = 0) -> Path:
    """The LoRA DPO adapter for one data fraction and training seed, trained only when not cached; ``lr`` /
    ``epochs`` replace ``params.dpo``'s (the learning-rate probe and the Figure 6 control); ``rows``: the
    seed's preference set (:func:`preference_rows`), read here when not given.

    The adapter and its ``dpo.json`` (metrics, seconds) are written in one atomic rename, so a killed run
    leaves nothing that looks finished and a rerun trains exactly the adapters that are missing.
    """
    import time

    target = adapter_path(world, params, fraction, lr, cache_root, epochs, seed)
    if (target / "dpo.json").is_file():
        return target
    start = time.perf_counter()
    rows = fraction_rows(rows if rows is not None else preference_rows(world, params.preference, seed), fraction)
    model, tokenizer = world.load(params.sft_role)
    torch.manual_seed(seed)
    policy = attach_lora(model, params.lora)
    dpo = _dpo_settings(params, lr, epochs)
    data = preference_dataset([r["prompt"] for r in rows], [r["chosen"] for r in rows],
                              [r["rejected"] for r in rows], drop_identical=dpo.drop_identical)
    metrics = dpo_update(policy, tokenizer, data, dpo, seed=seed, launch=params.launch)
    info = {"fraction": fraction, "train_seed": seed, "pairs": len(rows), "lr": dpo.lr, "epochs": dpo.epochs,
            "steps": dpo_steps(len(rows), dpo), "world": world.key, "sft_role": params.sft_role,
            "seconds": round(time.perf_counter() - start, 1),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    with atomic_dir(target) as tmp:
        policy.save_pretrained(tmp)
        write_json(tmp / "dpo.json", info)
    return target


def dpo_steps(pairs: int, dpo) -> int:
    """Optimizer steps of one DPO run (the Trainer's ceil(epochs * ceil(pairs / global batch)))."""
    per_epoch = math.ceil(pairs / (dpo.batch_size * dpo.grad_accum))
    return math.ceil(dpo.epochs * per_epoch)


def adapter_info(path: str | Path) -> dict:
    file = Path(path) / "dpo.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def load_aligned(world, sft_role: str, adapter: str | Path):
    """(PeftModel = SFT model + DPO adapter, tokenizer), frozen, in eval mode."""

    model, tokenizer = world.load(sft_role)
    return load_adapter(model, adapter, trainable=False).eval(), tokenizer
