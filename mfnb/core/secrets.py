"""One redaction for secrets: every error message or log line that could carry an API key goes through
:func:`redact` before it is raised, printed or written (hence before it can reach a notebook output).

Keys come from the environment only.  Redacted are the values of the known key variables
(``OPENAI_API_KEY``, Hugging Face tokens, any variable whose name ends in ``API_KEY``, ``TOKEN``, ``SECRET``
or ``PASSWORD``, and any variable a judge names with ``api_key_env``), values registered with
:func:`register_value`, and anything that looks like a key whatever its source: ``Bearer <token>`` and
OpenAI-style ``sk-...`` / Hugging Face ``hf_...`` tokens.  The values are read from the environment at each
call, so a key exported after import is still covered.
"""
from __future__ import annotations

import os
import re

MASK = "***"
MIN_LENGTH = 8  # shorter values ("1", "true") are not secrets and would mangle ordinary text

_KEY_VARIABLES = {"OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}
_KEY_SUFFIXES = ("API_KEY", "TOKEN", "SECRET", "PASSWORD")
_registered_variables: set[str] = set()
_registered_values: set[str] = set()

_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s'\",;]+"), rf"\1 {MASK}"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), f"sk-{MASK}"),
    (re.compile(r"\bhf_[A-Za-z0-9]{10,}"), f"hf_{MASK}"),
]


def register_variable(name: str) -> None:
    """Treat the value of environment variable ``name`` as a secret from now on (e.g. a judge's api_key_env)."""
    _registered_variables.add(name)


def register_value(value: str) -> None:
    """Treat ``value`` itself as a secret from now on (a key that did not come from a known variable)."""
    if isinstance(value, str) and len(value) >= MIN_LENGTH:
        _registered_values.add(value)


def secret_values() -> list[str]:
    """Every current secret value, longest first (so a key containing another is masked whole)."""
    names = _KEY_VARIABLES | _registered_variables
    names |= {n for n in os.environ if n.upper().endswith(_KEY_SUFFIXES)}
    values = {os.environ.get(n, "") for n in names} | _registered_values
    return sorted((v for v in values if len(v) >= MIN_LENGTH), key=len, reverse=True)


def redact(text: object) -> str:
    """``str(text)`` with every secret value and key-like token replaced by ``***``."""
    out = str(text)
    for value in secret_values():
        out = out.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        out = pattern.sub(replacement, out)
    return out
