"""Tokens per second that turn the counts into GPU (or CPU) hours: measured where a file gives them, else stated
defaults, each with its source.

A measured-throughput file is a CSV with ``kind,tokens_per_second,source[,profile]`` (a row with a profile
applies to that profile only; kind: ``sampling``, ``training``
for LoRA steps, ``training_full`` for full fine-tuning), or ``benchmarks/gpu_scale.py``'s own ``gpu_scale.csv``
(``part,variant,status,...,tokens_per_s``, for the paper profile: its ``sample`` rows give sampling, its ``dpo``
rows training).
:data:`MEASURED` is where the estimate looks when no file is named: copy a GPU machine's ``gpu_scale.csv``
there (``make gpu-check`` writes it to ``$OUT``).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from mfnb.core import paths

#: Where a measured file is read from when none is named (relative to the project root).
MEASURED = Path("benchmarks") / "throughput.csv"
KINDS = ("sampling", "training", "training_full")

# On CPU: the project's own measurements (benchmarks/README.md). On GPUs none has been measured yet (no GPU lent
# so far): stated assumptions, to be replaced by gpu_scale.py's numbers.
_CPU = {
    "sampling": (140.8, "measured: benchmarks/README.md, bench_trained_sampling.py, SmolLM2-135M LoRA-merged, "
                        "bf16, 2 threads, 2-core CPU, 2026-12-04"),
    "training": (81.6, "measured: benchmarks/README.md, bench_smol_dpo.py, SmolLM2-135M LoRA DPO, 2,595 tokens "
                       "in 31.8 s, 2 threads, 2-core CPU, 2026-12-04"),
    "training_full": (81.6, "assumed equal to the LoRA step (no full fine-tuning measured on CPU)"),
}
# the tiny world's models are far smaller than SmolLM2 and its sequences far shorter than max_length: no tokens/s
# of its own was measured, so SmolLM2's stand, and its hours are far too high (an upper bound only)
_TINY = {kind: (rate, source + "; SmolLM2's rate for the much smaller tiny models: their hours are far overestimated")
         for kind, (rate, source) in _CPU.items()}
_GPU = {
    "sampling": (2000.0, "assumed (not measured: gpu_scale.py has not run on a GPU yet): a 7B model, batch 64, "
                         "one GPU"),
    "training": (3000.0, "assumed (not measured: gpu_scale.py has not run on a GPU yet): 7B LoRA DPO, 6N FLOPs per "
                         "token at ~20% of an 80 GB card's ~1e15 bf16 FLOP/s, per GPU"),
    "training_full": (2250.0, "assumed (not measured): full fine-tuning at 8N FLOPs per token, 3/4 of the LoRA rate"),
}
DEFAULTS = {"tiny": _TINY, "smol": _CPU, "paper": _GPU}


class ThroughputError(ValueError):
    """A throughput file that cannot be read; the message names the file and the column."""


@dataclass
class Throughput:
    tokens_per_second: float
    source: str


def _read(file: Path, profile: str) -> dict[str, Throughput]:
    try:
        rows = list(csv.DictReader(file.open()))
    except OSError as err:
        raise ThroughputError(f"--throughputs: {file} cannot be read ({err})") from None
    out: dict[str, Throughput] = {}
    columns = set(rows[0]) if rows else set()
    if {"part", "tokens_per_s"} <= columns:  # gpu_scale.csv: the paper profile's shapes on a GPU
        if profile != "paper":
            return out
        for kind, part in (("sampling", "sample"), ("training", "dpo")):
            ok = [float(r["tokens_per_s"]) for r in rows if r["part"] == part and r.get("status", "ok") == "ok"
                  and r["tokens_per_s"] not in ("", None)]
            if ok:
                out[kind] = Throughput(max(ok), f"measured: {file} (gpu_scale.py, part {part!r})")
        return out
    if not {"kind", "tokens_per_second"} <= columns:
        raise ThroughputError(f"--throughputs: {file} needs the columns kind,tokens_per_second[,source] (or "
                              f"gpu_scale.py's part,...,tokens_per_s); it has {sorted(columns)}")
    for i, r in enumerate(rows, 2):
        if r.get("profile") and r["profile"] != profile:
            continue
        if r["kind"] not in KINDS:
            raise ThroughputError(f"--throughputs: {file} line {i}: kind {r['kind']!r} is not one of {KINDS}")
        try:
            value = float(r["tokens_per_second"])
        except ValueError:
            raise ThroughputError(f"--throughputs: {file} line {i}: tokens_per_second {r['tokens_per_second']!r} "
                                  "is not a number") from None
        if not value > 0:
            raise ThroughputError(f"--throughputs: {file} line {i}: tokens_per_second must be > 0, got {value:g}")
        out[r["kind"]] = Throughput(value, f"measured: {file}" + (f" ({r['source']})" if r.get("source") else ""))
    return out


def throughputs(profile: str, file: str | Path | None = None, **given: float | None) -> dict[str, Throughput]:
    """Tokens per second per kind: ``given`` (command-line values) over the file (``file``, else
    :data:`MEASURED` if present) over the profile's defaults."""
    defaults = DEFAULTS.get(profile, _GPU)
    out = {kind: Throughput(*defaults[kind]) for kind in KINDS}
    path = Path(file) if file else paths.project_root() / MEASURED
    if file and not path.is_file():
        raise ThroughputError(f"--throughputs: {path} not found")
    if path.is_file():
        out.update(_read(path, profile))
    for kind, value in given.items():
        if value is not None:
            out[kind] = Throughput(float(value), "given on the command line")
    return out
