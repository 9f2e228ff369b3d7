"""The papers' hub models: a hub name or a local folder standing in for it, checked before anything loads.

:func:`resolve` turns a params value into a local folder: an existing folder as it is; a hub name through
``huggingface_hub.snapshot_download`` (downloaded once into the hub cache when the hub is reachable; taken
from the cache when ``HF_HUB_OFFLINE=1``). A name that cannot be reached, a folder that does not exist, a
model that is not what the field needs (a causal LM for a role, a one-logit sequence classifier for a
reward model) or one that needs its own code while ``trust_remote_code`` is off is one
:class:`HubModelError` naming the params field, the name, and what to do.

Chat templates (:func:`chat_template`): each role renders the dataset's prompt with ``auto`` (its
tokenizer's own template), ``plain`` (the dataset's prompt text, e.g. for a base model such as LLaMA-2),
a named template (:data:`TEMPLATES`, e.g. ``vicuna``: Vicuna v1.5 ships without one) or a Jinja string.
Prompts carry their special tokens (BOS) as text, because every sampler and TRL trainer here tokenizes
with ``add_special_tokens=False``.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, Sequence

from mfnb.models import ModelLoadError
from mfnb.models.loading import _looks_local

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
# Vicuna v1.1-v1.5's conversation format (FastChat's "vicuna_v1.1": a system line, "USER: ... ASSISTANT: ...</s>").
VICUNA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
          "{% set messages = messages[1:] %}{% else %}A chat between a curious user and an artificial intelligence "
          "assistant. The assistant gives helpful, detailed, and polite answers to the user's questions."
          "{% endif %} {% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
          "{% else %}ASSISTANT: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
TEMPLATES = {"vicuna": VICUNA}
KEYWORDS = ("auto", "plain")
# what a role needs of a hub repository (weights in safetensors when the repository has them, else .bin)
_CONFIG_PATTERNS = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*"]


class HubModelError(ModelLoadError):
    """A model named in the params that cannot be used; the message names the field, the name and the fix."""


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _download_hint(name: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (f"on a machine with network run `hf download {name}{rev}` (it fills the hub cache, "
            f"$HF_HOME/hub, which you can copy here) or `hf download {name}{rev} --local-dir <folder>` and put the "
            f"folder in the params instead of the name")


def _weight_patterns(name: str, revision: str | None) -> list[str]:
    """safetensors if the repository has them, else PyTorch .bin (never both, never GGUF/ONNX/original/)."""
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(name, revision=revision)
    if any(f.endswith(".safetensors") and "/" not in f for f in files):
        return ["*.safetensors"]
    return ["*.bin"]


def resolve(name: str, *, revision: str | None = None, field: str, trust_remote_code: bool = False,
            download: bool = True) -> Path:
    """The local folder behind ``name`` (a folder, or a hub name in or fetched into the hub cache)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    if _looks_local(name):
        relative = "" if folder.is_absolute() else f" (relative to {Path.cwd()})"
        raise HubModelError(f"{field}: model folder not found: {name}{relative}")
    local_only = offline() or not download
    try:
        if local_only:
            path = snapshot_download(name, revision=revision, local_files_only=True)
        else:
            patterns = _CONFIG_PATTERNS + _weight_patterns(name, revision) + (["*.py"] if trust_remote_code else [])
            path = snapshot_download(name, revision=revision, allow_patterns=patterns)
    except GatedRepoError:
        raise HubModelError(f"{field}: hub model {name!r} is gated: accept its licence on its hub page and log in "
                            f"(`hf auth login`, or HF_TOKEN in the environment), then run again") from None
    except RevisionNotFoundError:
        raise HubModelError(f"{field}: hub model {name!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise HubModelError(f"{field}: no hub model {name!r} (check the name; a private one needs `hf auth login`), "
                            f"and no local folder of that name under {Path.cwd()}") from None
    except Exception as err:  # offline and not cached, or the hub out of reach (httpx / OSError / HTTP errors)
        why = ("the hub is offline here (HF_HUB_OFFLINE=1) and the model is not in the hub cache"
               if local_only else f"the hub cannot be reached or refused ({type(err).__name__}: {err})")
        raise HubModelError(f"{field}: hub model {name!r}{f' (revision {revision})' if revision else ''} cannot be "
                            f"loaded: {why}; {_download_hint(name, revision)}") from None
    return Path(path)


def read_config(folder: Path, *, name: str, field: str) -> dict:
    file = folder / "config.json"
    if not file.is_file():
        raise HubModelError(f"{field}: {name} is not a transformers model (no config.json in {folder})")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise HubModelError(f"{field}: {file} does not parse: {err}") from None
    if not isinstance(config, dict):
        raise HubModelError(f"{field}: {file} is not a JSON object")
    return config


def _custom_code(config: dict, auto_class: str, *, name: str, field: str, trust_remote_code: bool) -> bool:
    """Whether the model needs its own code for ``auto_class``; an error when it does and that is not allowed."""
    from transformers import CONFIG_MAPPING

    known = config.get("model_type") in CONFIG_MAPPING
    if known:
        return False
    if auto_class in (config.get("auto_map") or {}):
        if not trust_remote_code:
            owner = field.rsplit(".", 1)[0]
            raise HubModelError(f"{field}: {name} runs its own Python code (auto_map) and {owner}.trust_remote_code "
                                f"is off; read that code, then set {owner}.trust_remote_code: true to run it")
        return True
    raise HubModelError(f"{field}: {name} has model_type {config.get('model_type')!r}, which this transformers "
                        f"version does not know and the model ships no code for")


def check_causal_lm(folder: Path, *, name: str, field: str, trust_remote_code: bool = False) -> dict:
    """The config of a causal LM (a role's model), or an error naming what the model is instead."""
    config = read_config(folder, name=name, field=field)
    if _custom_code(config, "AutoModelForCausalLM", name=name, field=field, trust_remote_code=trust_remote_code):
        return config
    architectures = config.get("architectures") or []
    if architectures and not any(a.endswith(CAUSAL_SUFFIXES) for a in architectures):
        hint = (" (a reward model: name it in reward_model, not as a role)"
                if any(a.endswith("ForSequenceClassification") for a in architectures) else "")
        raise HubModelError(f"{field}: {name} is not a causal LM: its architectures are {architectures}{hint}; a role "
                            f"needs a model with a language-model head (...ForCausalLM)")
    return config


def check_reward_model(folder: Path, *, name: str, field: str, trust_remote_code: bool = False) -> dict:
    """The config of a one-logit sequence classifier (a reward model), or an error naming what it is instead."""
    config = read_config(folder, name=name, field=field)
    if _custom_code(config, "AutoModelForSequenceClassification", name=name, field=field,
                    trust_remote_code=trust_remote_code):
        return config
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise HubModelError(f"{field}: {name} is not a reward model: its architectures are {architectures or 'not given'}; "
                            f"a reward model is a ...ForSequenceClassification with one output")
    labels = config.get("num_labels", len(config.get("id2label") or {}) or 2)
    if labels != 1:
        raise HubModelError(f"{field}: {name} has {labels} outputs; a reward model has one (num_labels: 1)")
    return config


def fingerprint(folder: Path) -> str:
    """A cheap identity of a local folder's model: config.json and the names and sizes of its weight files."""
    h = hashlib.sha256()
    config = folder / "config.json"
    h.update(config.read_bytes() if config.is_file() else b"")
    for file in sorted(folder.glob("*")):
        if file.suffix in (".safetensors", ".bin"):
            h.update(f"{file.name}:{file.stat().st_size}".encode())
    return h.hexdigest()[:16]


def count_parameters(folder: Path) -> int | None:
    """Parameters in a folder's safetensors files, from their headers (no weights read); None without them."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for key, value in header.items():
            if key != "__metadata__":
                n = 1
                for d in value["shape"]:
                    n *= d
                total += n
    return total


# --------------------------------------------------------------------------------------------- templates


def chat_template(value: str, tokenizer, *, name: str, field: str) -> str | None:
    """The Jinja template a role renders prompts with; None for ``plain`` (the dataset's own prompt text)."""
    if value == "plain":
        return None
    if value == "auto":
        own = getattr(tokenizer, "chat_template", None)
        if not own:
            raise HubModelError(f"{field}: the tokenizer of {name} has no chat template; set {field} to plain (the "
                                f"dataset's prompt text, e.g. for a base model), one of {sorted(TEMPLATES)}, or a Jinja "
                                "template")
        return own if isinstance(own, str) else own.get("default", next(iter(own.values())))
    if value in TEMPLATES:
        return TEMPLATES[value]
    if "{{" in value or "{%" in value:
        return value
    raise HubModelError(f"{field}: unknown chat template {value!r}; use auto, plain, one of {sorted(TEMPLATES)} or a "
                        "Jinja template")


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts a BOS token in front of text by itself (so a plain prompt must carry it)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    return tokenizer("a")["input_ids"][:1] == [bos]


def render(tokenizer, template: str | None, text: str, messages: Sequence[dict[str, str]]) -> str:
    """A prompt ready for sampling: the template over ``messages`` (with the assistant's turn opened), or for a
    plain role ``text`` with the tokenizer's BOS in front when the tokenizer would add one."""
    if template is None:
        return (tokenizer.bos_token if adds_bos(tokenizer) else "") + text
    return tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False,
                                         add_generation_prompt=True)


def template_digest(template: str | None) -> str:
    return "plain" if template is None else hashlib.sha256(template.encode()).hexdigest()[:16]


def describe_source(name: str, revision: str | None) -> dict[str, Any]:
    """JSON identity of a params model name (a folder gets a fingerprint of its files)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return {"folder": str(folder.resolve()), "fingerprint": fingerprint(folder)}
    return {"hub": name, "revision": revision or "main"}
