"""What the paper-world tests add to the rehearsal's stand-ins (:mod:`mfnb.rehearsal.stand_ins`): a tiny Llama with
a chosen chat template, and the paper params' world spec pointed at local folders."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import yaml

from mfnb.rehearsal import stand_ins


def save_llama(folder: Path, *, chat_template: str | None, seed: int, classifier: bool = False) -> Path:
    """A tiny Llama (hidden 32) with Llama-2's tokens and ``chat_template``; a one-logit classifier if asked."""
    family = replace(stand_ins.LLAMA2, chat_template=chat_template, classifier=classifier, pad="<pad>")
    return stand_ins.save_model(folder, family, seed=seed, hidden=32)


def paper_world_spec(notebook: str, root: Path, **sources: str) -> dict:
    """``world`` of ``params/paper/<notebook>.yaml`` with its dataset paths pointed at local folders."""
    values = yaml.safe_load((root / "params" / "paper" / f"{notebook}.yaml").read_text())
    world = json.loads(json.dumps(values["world"]))
    for key, path in sources.items():  # e.g. source=..., alpaca_eval=..., instructions=...
        world["data"][key] = {**world["data"].get(key, {}), "path": path}
    return world
