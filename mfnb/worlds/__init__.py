"""Worlds: where prompts, the student, the fidelity experts and (optionally) a known quality come from.

A world offers ``prompts[split]``, ``roles``, ``costs``, ``load(role) -> (model, tokenizer)``, ``key`` and,
when the truth is known (the synthetic ``tiny`` world), ``quality(prompt, response)``.
"""
from __future__ import annotations

from typing import Any, Mapping

from mfnb.params import ParamsError


def make_world(spec: Mapping[str, Any] | Any):
    """Build a world from its params (``kind`` picks the world; the rest are that world's fields)."""
    from mfnb.worlds.tiny import TinyWorld, TinyWorldParams

    if isinstance(spec, TinyWorldParams):
        return TinyWorld(spec)
    values = dict(spec)
    kind = values.get("kind", "tiny")
    if kind == "tiny":
        return TinyWorld(TinyWorldParams.validate_mapping(values, source="world"))
    raise ParamsError(f"world: unknown kind {kind!r}; known: ['tiny']")
