"""Objects named by ``"module:attr"`` strings (world kinds, notebook schemas, a launched step's trainer plugin):
the lower layer names what a higher one provides without importing it."""
from __future__ import annotations

import importlib
from typing import Any


def resolve(name: str, field: str) -> Any:
    """The object ``name`` (``"package.module:attr.attr"``) names; an error naming ``field`` when it cannot."""
    module, _, attr = str(name).partition(":")
    if not module or not attr:
        raise ValueError(f"{field}: {name!r} is not of the form 'module:attr'")
    try:
        obj = importlib.import_module(module)
    except ImportError as err:
        raise ValueError(f"{field}: cannot import {module!r} ({err})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{field}: {module!r} has no {attr!r}") from None
    return obj
