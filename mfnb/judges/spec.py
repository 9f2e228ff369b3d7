"""Factory: judge specs (``{"kind": ..., **kwargs}``) checked by the params schemas and built by
:func:`make_judge`."""
from __future__ import annotations

import inspect
from typing import Annotated, Any, Callable, Mapping

from pydantic import AfterValidator

from mfnb.judges.cache import CachedJudge
from mfnb.judges.llm import OpenAIJudge
from mfnb.judges.oracle import OracleJudge
from mfnb.judges.protocol import PairwiseJudge
from mfnb.judges.reward_model import RewardModelJudge

_KINDS: dict[str, type[PairwiseJudge]] = {"oracle": OracleJudge, "reward_model": RewardModelJudge,
                                          "openai": OpenAIJudge}


def check_judge_spec(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """Refuse a judge spec whose kind is unknown, whose fields its judge does not take (a typo such as
    ``tie_margn``) or that lacks a required field, naming the field; returns the spec unchanged.  The params
    schemas call it, so a typo stops ``python -m mfnb run --check`` and the notebook's first cell."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a judge spec is a mapping with a 'kind', got {type(spec).__name__}")
    values = {k: v for k, v in spec.items() if v is not None}
    kind = values.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"judge spec field 'kind': expected one of {sorted(_KINDS)}, got {kind!r}")
    cls = _KINDS[kind]
    values.pop("cache", None)
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "quality_fn")]
    for field in values:
        if field not in accepted:
            raise ValueError(f"judge spec field {field!r}: not a parameter of the {kind!r} judge "
                             f"({cls.__name__}); allowed: {accepted + ['cache']}")
    if kind == "reward_model" and "model_or_path" not in values:
        raise ValueError("judge spec field 'model_or_path': required for the 'reward_model' judge")
    if kind == "openai" and "model" not in values:
        raise ValueError("judge spec field 'model': required for the 'openai' judge")
    return spec


def _checked_judge_spec(spec: Mapping[str, Any]) -> dict:
    return dict(check_judge_spec(spec))


# a params field holding a judge spec: checked when the params are validated, before anything runs
JudgeSpec = Annotated[dict, AfterValidator(_checked_judge_spec)]


def make_judge(spec: Mapping[str, Any] | Any, quality_fn: Callable[[str, str], float] | None = None) -> PairwiseJudge:
    """Build a judge from ``{"kind": "oracle"|"reward_model"|"openai", **constructor kwargs}`` (a dict
    or a pydantic model; None values mean "default").  ``cache``: a path, or True for the default cache
    file, wraps the judge in :class:`CachedJudge`.  The oracle takes ``quality_fn`` from the argument."""
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump()
    if not isinstance(spec, Mapping):
        raise TypeError(f"make_judge: spec must be a mapping or a pydantic model, got {type(spec).__name__}")
    check_judge_spec(spec)
    values = {k: v for k, v in spec.items() if v is not None}
    kind = values.pop("kind")
    cls = _KINDS[kind]
    cache = values.pop("cache", None)
    if kind == "oracle":
        if quality_fn is None:
            raise ValueError("judge spec kind 'oracle' needs make_judge(..., quality_fn=...)")
        values["quality_fn"] = quality_fn
    try:
        judge = cls(**values)
    except TypeError as err:
        raise ValueError(f"judge spec ({kind}): {err}") from None
    if cache is False or cache is None:
        return judge
    return CachedJudge(judge, None if cache is True else cache)
