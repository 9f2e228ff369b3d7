"""ExPO on off-the-shelf models (the paper's Section 4, Table 2): an SFT checkpoint and the aligned model released
from it, both full models, extrapolated in weight space with no training.

Each pair names two roles of the world (their hub models, in the paper world). For every alpha of the pair's
search range the extrapolated model is written by :func:`mfnb.expo.extrapolation.extrapolate` (streamed,
tensor chunk by tensor chunk: a 7B pair never sits in memory), loaded once to sample, and its folder deleted
again; only the responses are kept (cached by pair, alpha, prompts, sampling and seed), so at most one
extrapolated model exists at a time, on disk and in memory. alpha = 0 is the aligned model itself. The alpha
is chosen by the reward model's mean on the validation prompts (the paper's Section 4.1), then the aligned
model and its chosen extrapolation are scored on the test prompts like Table 1.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Annotated, Sequence

from pydantic import Field, field_validator

from mfnb.core import paths
from mfnb.core.atomic import write_json
from mfnb.core.params import Params, ParamsError
from mfnb.expo.extrapolation import ExpoError, extrapolate

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class OffTheShelfPair(Params):
    """One row of Table 2: ``name`` (the paper's row), the SFT checkpoint's role and the aligned model's role
    (both roles of the world), the alpha search range (the paper's Table 3) and the dtype to sample in."""

    name: str
    sft_role: str
    aligned_role: str
    alphas: list[PositiveFloat] = Field(min_length=1)
    dtype: str = "bfloat16"

    @field_validator("alphas")
    @classmethod
    def _distinct(cls, value: list[float]) -> list[float]:
        if len(set(value)) != len(value):
            raise ValueError(f"alphas must be distinct, got {value}")
        return sorted(value)


def check_pairs(world, pairs: Sequence[OffTheShelfPair], field: str = "off_the_shelf") -> None:
    """Fail now, naming the field, if a pair's role is not a role of the world, two pairs share a name, or the
    world cannot give model folders (only the paper world's roles are hub models on disk)."""
    names = [p.name for p in pairs]
    if len(set(names)) != len(names):
        raise ParamsError(f"parameter {field!r}: pair names must be distinct, got {names}")
    if pairs and getattr(world, "folder", None) is None:
        raise ParamsError(f"parameter {field!r}: world kind {getattr(world, 'kind', '?')!r} has no model folders "
                          "to extrapolate (the paper world's roles have them); set off_the_shelf: []")
    for i, pair in enumerate(pairs):
        for what in ("sft_role", "aligned_role"):
            role = getattr(pair, what)
            if role not in world.roles:
                raise ParamsError(f"parameter '{field}[{i}].{what}' ({pair.name}): {role!r} is not a role of this "
                                  f"world (roles: {world.roles})")


def _folder(world, pair: OffTheShelfPair, role: str) -> Path:
    return Path(world.folder(role))


def pair_key(world, pair: OffTheShelfPair) -> str:
    """The pair's models (each role's identity in the world) and the sampling dtype."""
    blob = json.dumps({"sft": world.identity(pair.sft_role), "aligned": world.identity(pair.aligned_role),
                       "dtype": pair.dtype}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _cache_file(folder: Path, alpha: float, prompts: Sequence[str], sampling, seed: int) -> Path:
    blob = json.dumps({"alpha": alpha, "sampling": sampling.model_dump(), "seed": seed,
                       "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest()}, sort_keys=True)
    return folder / f"alpha{alpha:g}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"


def _rendered(world, role: str, prompts: Sequence[str]) -> list[str]:
    """The prompts in the aligned model's own chat template (the pair's models share their family's)."""
    if getattr(world, "render", None) is None:
        return list(prompts)
    query = getattr(world, "query", None) or (lambda p: p)
    return [world.render(role, query(p)) for p in prompts]


def _device(device: str) -> str | None:
    import torch

    if device == "cpu":
        return None
    if device == "cuda" or torch.cuda.is_available():
        return "cuda"
    return None


def pair_responses(world, pair: OffTheShelfPair, alphas: Sequence[float], prompts: Sequence[str], sampling, *,
                   seeds: Sequence[int] = (0,), device: str = "auto", work: Path | None = None,
                   progress: bool = False) -> dict[float, dict[int, list[str]]]:
    """alpha -> seed -> responses to ``prompts`` of the aligned model extrapolated by alpha (0: the aligned model
    itself); cached under ``$MFNB_CACHE/expo/off_the_shelf/<pair key>/``. An extrapolated model is written,
    sampled for every seed and deleted before the next alpha."""
    from mfnb.models import sample_folder

    cache = work or paths.cache_dir("expo", "off_the_shelf", pair_key(world, pair))
    cache.mkdir(parents=True, exist_ok=True)
    rendered = _rendered(world, pair.aligned_role, prompts)
    out: dict[float, dict[int, list[str]]] = {}
    for alpha in alphas:
        alpha = float(alpha)
        files = {s: _cache_file(cache, alpha, rendered, sampling, s) for s in seeds}
        if all(f.is_file() for f in files.values()):
            out[alpha] = {s: json.loads(f.read_text())["responses"] for s, f in files.items()}
            continue
        strong = _folder(world, pair, pair.aligned_role)
        folder = strong
        if alpha != 0:
            folder = cache / f"model-alpha{alpha:g}"
            shutil.rmtree(folder, ignore_errors=True)  # a folder left by a killed run
            try:
                extrapolate(_folder(world, pair, pair.sft_role), strong, alpha, folder, progress=progress)
            except ExpoError as err:
                raise ExpoError(f"off_the_shelf {pair.name!r} ({pair.sft_role} -> {pair.aligned_role}): {err}") from None
        try:
            todo = [s for s in seeds if not files[s].is_file()]
            drawn = sample_folder(folder, rendered, sampling, todo, dtype=pair.dtype, device=_device(device),
                                  show_progress=progress)  # vLLM serving the folder where sampling.engine says so
            out[alpha] = {}
            for s in seeds:
                if s in drawn:
                    write_json(files[s], {"pair": pair.name, "alpha": alpha, "seed": s, "responses": drawn[s]})
                out[alpha][s] = drawn[s] if s in drawn else json.loads(files[s].read_text())["responses"]
        finally:
            if folder != strong:
                shutil.rmtree(folder, ignore_errors=True)
    return out


def paper_table2() -> dict[str, dict]:
    """The paper's Table 2 by (row name, with ExPO): reward, win rate and LC win rate as fractions."""
    from mfnb.core import reference

    out = {}
    for row in reference.load("expo_table2").itertuples():
        out[(row.model, False)] = {"paper_reward": row.reward, "paper_win_rate": row.win_rate_pct / 100,
                                   "paper_lc_win_rate": row.lc_win_rate_pct / 100}
        out[(row.model, True)] = {"paper_reward": row.expo_reward, "paper_win_rate": row.expo_win_rate_pct / 100,
                                  "paper_lc_win_rate": row.expo_lc_win_rate_pct / 100}
    return out


def paper_alpha(name: str) -> float | None:
    """The paper's optimal alpha for an off-the-shelf aligned model (its Table 3), or None."""
    from mfnb.core import reference

    t3 = reference.load("expo_table3")
    hit = t3[t3["aligned_model"] == name]
    return float(hit["optimal_alpha"].iloc[0]) if len(hit) else None
