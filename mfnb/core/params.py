"""Typed, validated notebook parameters.

One YAML per notebook and profile (``params/<profile>/<notebook>.yaml``); the notebook's papermill
``parameters`` cell holds the same keys.  Schemas are pydantic models, so a typo'd key, a wrong type or
an out-of-range value is rejected with the field's name and the file it came from.  The same check runs
inside the notebook (:meth:`Params.from_namespace`), so a variable that papermill injected but the schema
does not know (``-p gama 0.5``) stops the run there instead of being ignored.
"""
from __future__ import annotations

import ast
import difflib
import re
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from mfnb.core import paths

S = TypeVar("S", bound="Params")

PROFILES = ("tiny", "smol", "paper")


class ParamsError(ValueError):
    """A parameter file or parameter cell that does not fit its schema."""


# --------------------------------------------------------------------------------------------------- YAML

# PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: ``1e-4`` would be the string
# "1e-4".  Parameter files are read with this loader, which also takes 1e-4, 5E3 and 1.5e3 as floats.
_SCIENTIFIC = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")
_YAML11_FLOAT = re.compile(r"^([-+]?)([0-9]+)(?:\.([0-9]*))?[eE]([-+]?)([0-9]+)$")


class ParamsLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float and refuses a key given twice (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {seen[key].line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", _SCIENTIFIC, list("-+0123456789."))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A parameter file as a dict; missing, empty, unparsable or non-mapping files raise ParamsError
    naming the file (and the line, for syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    text = path.read_text()
    try:
        values = yaml.load(text, Loader=ParamsLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(p) for p in (err.context, err.problem) if p)
        raise ParamsError(f"{path}: not valid YAML{where}: {problem}") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if values is None:
        raise ParamsError(f"{path}: the params file is empty (expected one `name: value` line per parameter)")
    if not isinstance(values, dict):
        raise ParamsError(f"{path}: expected a mapping of parameter names to values, got a {type(values).__name__}")
    return values


def merge_overlay(values: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``overlay`` laid over it (``run --overlay``): mappings merge key by key, anything else is
    replaced; neither input is changed."""
    import copy

    out = copy.deepcopy(values)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_overlay(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_value(text: str) -> Any:
    """A command-line value read as a YAML scalar or flow collection: ``0.5`` -> 0.5, ``1e-4`` -> 0.0001,
    ``true`` -> True, ``null`` -> None, ``[a, b]`` -> ['a', 'b']; anything else stays a string."""
    try:
        return yaml.load(text, Loader=ParamsLoader) if text.strip() else text
    except yaml.YAMLError:
        return text


# ------------------------------------------------------------------------------------------------ schemas


class Params(BaseModel):
    """Base of every notebook's parameter schema: unknown keys and silent coercions are errors.

    A schema with a ``profile`` field accepts only the known profiles (:data:`PROFILES`): a typo there
    would otherwise send every result to ``results/<typo>/``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)

    @field_validator("profile", check_fields=False)
    @classmethod
    def _known_profile(cls, value: Any) -> Any:
        if value not in PROFILES:
            hint = difflib.get_close_matches(str(value), PROFILES, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"must be one of {', '.join(PROFILES)}{suggestion}")
        return value

    @classmethod
    def validate_mapping(cls: type[S], values: Mapping[str, Any], source: str = "<parameters>") -> S:
        try:
            return cls.model_validate(dict(values))
        except ValidationError as err:
            raise ParamsError(_describe(err, source, cls)) from None

    @classmethod
    def from_yaml(cls: type[S], path: str | Path) -> S:
        return cls.validate_mapping(load_yaml(path), source=str(path))

    @classmethod
    def from_namespace(cls: type[S], namespace: Mapping[str, Any], source: str = "parameters cell") -> S:
        """Collect this schema's fields from a notebook's globals (the papermill parameters cell).

        Refuses variables that the parameters cell or papermill's injected cell defines but the schema
        does not know (``-p gama 0.5``, a key of another notebook in ``-f file.yaml``).  In a Jupyter
        kernel those cells are found in the input history (``In``): cells made only of ``name = value``
        lines that set a schema field or start with papermill's ``# Parameters`` comment, from the latest
        one that sets a field on (so earlier edits of the cell and later cells do not count).  A plain
        mapping is checked whole: every data value (not a module, function or class) is a parameter."""
        fields = set(cls.model_fields)
        unknown, injected = _unknown_names(namespace, fields)
        if unknown:
            where = "parameters injected by papermill (-p / -f)" if injected else source
            lines = [f"{where}: unknown parameter {name!r}{did_you_mean(name, fields)}" for name in unknown]
            lines.append(f"(this notebook's parameters: {', '.join(cls.model_fields)})")
            raise ParamsError("\n".join(lines))
        missing = [name for name in cls.model_fields if name not in namespace]
        if missing:
            raise ParamsError(f"{source}: missing parameter(s) {missing}")
        return cls.validate_mapping({name: namespace[name] for name in cls.model_fields}, source)

    @classmethod
    def for_profile(cls: type[S], notebook: str, profile: str = "tiny") -> S:
        return cls.from_yaml(paths.params_file(notebook, profile))


def _describe(err: ValidationError, source: str, schema: type[BaseModel]) -> str:
    lines = []
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            known = _fields_at(schema, item["loc"][:-1])
            lines.append(f"{source}: unknown parameter {field!r}{did_you_mean(str(item['loc'][-1]), known)}")
        else:
            lines.append(f"{source}: parameter {field!r}: {item['msg']} (got {item.get('input')!r})"
                         f"{_number_hint(item)}")
    return "\n".join(lines)


def did_you_mean(name: str, known: set[str]) -> str:
    """`` (did you mean 'gamma'?)`` for a near miss among ``known``, else ''."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fields_at(schema: type[BaseModel], loc: tuple) -> set[str]:
    """The field names of the (nested) model at ``loc`` inside ``schema``; empty where it is not a model."""
    model: Any = schema
    for part in loc:
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            return set()
        options = [info.annotation, *typing.get_args(info.annotation)]
        model = next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)
    return set(getattr(model, "model_fields", ()))


def _number_hint(item: Mapping[str, Any]) -> str:
    """For a number given as a string: how to write it so that YAML (and papermill -f) reads a number."""
    value = item.get("input")
    if not (isinstance(value, str) and item["type"] in ("float_type", "int_type", "float_parsing")):
        return ""
    m = _YAML11_FLOAT.match(value.strip())
    if m:
        sign, whole, frac, exp_sign, exp = m.groups()
        return (f"; YAML reads {value} as a string: write {sign}{whole}.{frac or '0'}e{exp_sign or '+'}{exp} "
                "(python -m mfnb run reads both as numbers)")
    try:
        float(value)
    except ValueError:
        return ""
    return f"; write {value} without quotes"


_IGNORED_PREFIXES = ("_", "PAPERMILL_")
_DATA = (bool, int, float, str, bytes, type(None), list, dict, tuple, set)


def _assigned_names(source: str) -> list[str] | None:
    """The names a cell assigns when it is only ``name = value`` lines (a parameters cell), else None."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    names: list[str] = []
    for node in body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            names += [t.id for t in node.targets]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
        else:
            return None
    return names or None


def _unknown_names(namespace: Mapping[str, Any], fields: set[str]) -> tuple[list[str], bool]:
    """Names set as parameters that are not schema fields, and whether papermill's injected cell set one."""
    history = namespace.get("In")
    if isinstance(history, list) and history and all(isinstance(c, str) for c in history):
        cells = []
        for cell in history:
            names = _assigned_names(cell)
            if names and (fields & set(names) or cell.lstrip().startswith("# Parameters")):
                cells.append((cell, names))
        anchor = max((i for i, (_, names) in enumerate(cells) if fields & set(names)), default=None)
        if anchor is None:
            return [], False
        origin = {name: cell for cell, names in cells[anchor:] for name in names}
    else:  # a plain mapping (a script's globals(), a dict): every data value counts
        origin = {name: "" for name, value in namespace.items() if isinstance(value, _DATA)}
    unknown = [name for name in origin
               if name not in fields and name in namespace and not name.startswith(_IGNORED_PREFIXES)]
    injected = any(origin[name].startswith("# Parameters\n") for name in unknown)
    return sorted(unknown), injected
