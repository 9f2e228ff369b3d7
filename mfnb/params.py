"""Typed, validated notebook parameters.

One YAML per notebook and profile (``params/<profile>/<notebook>.yaml``); the notebook's papermill
``parameters`` cell holds the same keys.  Schemas are pydantic models, so a typo'd key, a wrong type or
an out-of-range value is rejected with the field's name and the file it came from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mfnb import paths

S = TypeVar("S", bound="Params")

PROFILES = ("tiny", "smol", "paper")


class ParamsError(ValueError):
    """A parameter file or parameter cell that does not fit its schema."""


class Params(BaseModel):
    """Base of every notebook's parameter schema: unknown keys and silent coercions are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)

    @classmethod
    def validate_mapping(cls: type[S], values: Mapping[str, Any], source: str = "<parameters>") -> S:
        try:
            return cls.model_validate(dict(values))
        except ValidationError as err:
            raise ParamsError(_describe(err, source)) from None

    @classmethod
    def from_yaml(cls: type[S], path: str | Path) -> S:
        path = Path(path)
        if not path.is_file():
            raise ParamsError(f"params file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ParamsError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ParamsError(f"{path}: expected a mapping of parameter names to values")
        return cls.validate_mapping(values, source=str(path))

    @classmethod
    def from_namespace(cls: type[S], namespace: Mapping[str, Any], source: str = "parameters cell") -> S:
        """Collect this schema's fields from a notebook's globals (the papermill parameters cell)."""
        missing = [name for name in cls.model_fields if name not in namespace]
        if missing:
            raise ParamsError(f"{source}: missing parameter(s) {missing}")
        return cls.validate_mapping({name: namespace[name] for name in cls.model_fields}, source)

    @classmethod
    def for_profile(cls: type[S], notebook: str, profile: str = "tiny") -> S:
        return cls.from_yaml(paths.params_file(notebook, profile))


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown parameter {field!r}")
        else:
            lines.append(f"{source}: parameter {field!r}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)
