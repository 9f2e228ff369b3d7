"""Tokens per second that turn the counts into GPU (or CPU) hours: measured where a file gives them, else stated
defaults, each with its source.

A measured-throughput file is a CSV with ``kind,tokens_per_second,source[,profile,engine,benchmark,variant,date,
machine]`` (a row with a profile applies to that profile only; kind: ``sampling``, ``training`` for LoRA steps,
``training_full`` for full fine-tuning; engine: the sampling engine measured, ``hf`` for our decode loop or
``vllm``), or ``benchmarks/gpu_scale.py``'s own ``gpu_scale.csv`` (``part,variant,status,...,tokens_per_s``, for
the paper profile: its ``sample`` rows give sampling, its ``dpo`` rows training). Where several rows give a kind
to a profile, a sampling row of the engine the profile's notebooks sample with (:data:`ENGINES`) wins, then the
last row.

:data:`MEASURED` is where the estimate looks when no file is named. The project's benchmarks write their measured
rates there with :func:`record` (each replaces its own earlier row: same benchmark, variant, kind and profile),
with the date and the machine (:func:`machine`); ``benchmarks/gpu_scale.py`` also writes a copy beside its
``gpu_scale.csv`` in ``--out`` (``$OUT`` on a lent GPU machine: copy it here).
"""
from __future__ import annotations

import csv
import datetime
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from mfnb.core import paths
from mfnb.core.machine import cpu_model

#: Where a measured file is read from when none is named (relative to the project root).
MEASURED = Path("benchmarks") / "throughput.csv"
KINDS = ("sampling", "training", "training_full")
#: The sampling engine each profile's notebooks sample with (a measured row of that engine is preferred).
ENGINES = {"tiny": "hf", "smol": "hf", "paper": "vllm"}
#: The columns :func:`record` writes.
FIELDS = ("kind", "tokens_per_second", "profile", "engine", "source", "benchmark", "variant", "date", "machine")

# On CPU: the project's own measurements (benchmarks/README.md). On GPUs none has been measured yet (no GPU lent
# so far): stated assumptions, to be replaced by gpu_scale.py's numbers.
_CPU = {
    "sampling": (140.8, "measured: benchmarks/README.md, bench_trained_sampling.py, SmolLM2-135M LoRA-merged, "
                        "bf16, 2 threads, 2-core CPU, 2026-12-04"),
    "training": (81.6, "measured: benchmarks/README.md, bench_smol_dpo.py, SmolLM2-135M LoRA DPO, 2,595 tokens "
                       "in 31.8 s, 2 threads, 2-core CPU, 2026-12-04"),
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
}
#: Full fine-tuning's rate where none was measured, as a share of the LoRA training rate in use: it computes the
#: weight gradients LoRA skips (about 8N FLOPs per token against 6N), so about 3/4 of the rate
FULL_FT_SHARE = 0.75
DEFAULTS = {"tiny": _TINY, "smol": _CPU, "paper": _GPU}


class ThroughputError(ValueError):
    """A throughput file that cannot be read; the message names the file and the column."""


@dataclass
class Throughput:
    tokens_per_second: float
    source: str
    engine: str = ""   # the sampling engine measured, where a row says


@dataclass
class Measured:
    """One rate a benchmark measured, as :func:`record` writes it: ``source`` says what was timed (model, dtype,
    batch, lengths), ``variant`` tells the benchmark's rows of one kind apart."""

    kind: str
    tokens_per_second: float
    benchmark: str
    source: str
    variant: str = ""
    profile: str = ""
    engine: str = ""


def machine(threads: int | None = None, device: str | None = None) -> str:
    """This machine in words: the GPU's name when ``device`` is a CUDA device, else the CPU model (from
    /proc/cpuinfo, else :func:`platform.processor`), its logical cores, and ``threads`` when given."""
    if device and str(device).startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        return f"{torch.cuda.get_device_name(index)} ({torch.cuda.device_count()} visible)"
    cores = f"{os.cpu_count()} logical cores"
    return f"{cpu_model()}, {cores}" + (f", {threads} threads" if threads else "")


def record(rows: Iterable[Measured], file: str | Path | None = None, *, date: str | None = None,
           machine_text: str | None = None) -> Path:
    """Write ``rows`` into the measured-throughput file (``file``, else :data:`MEASURED` under the project root),
    each replacing an earlier row of the same benchmark, variant, kind and profile and keeping every other row,
    with ``date`` (default: today, UTC) and ``machine_text`` (default: :func:`machine`). Returns the file."""
    from mfnb.core.atomic import write_text

    path = Path(file) if file else paths.project_root() / MEASURED
    new = [r for r in rows]
    for r in new:
        if r.kind not in KINDS:
            raise ThroughputError(f"record: kind {r.kind!r} is not one of {KINDS}")
        if not r.tokens_per_second > 0:
            raise ThroughputError(f"record: {r.benchmark} {r.variant or r.kind}: tokens_per_second must be > 0, "
                                  f"got {r.tokens_per_second!r}")
    kept = []
    if path.is_file():
        with path.open() as f:
            kept = list(csv.DictReader(f))
    keys = {(r.benchmark, r.variant, r.kind, r.profile) for r in new}
    kept = [k for k in kept if (k.get("benchmark") or "", k.get("variant") or "", k.get("kind") or "",
                                k.get("profile") or "") not in keys]
    date = date or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    machine_text = machine_text or machine()
    for r in new:
        kept.append({"kind": r.kind, "tokens_per_second": f"{float(r.tokens_per_second):.6g}", "profile": r.profile,
                     "engine": r.engine, "source": f"{r.benchmark}: {r.source}", "benchmark": r.benchmark,
                     "variant": r.variant, "date": date, "machine": machine_text})
    columns = list(FIELDS) + sorted({c for k in kept for c in k if c and c not in FIELDS})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: k.get(c) or "" for c in columns} for k in kept)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text.getvalue())
    return path


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
    preferred = ENGINES.get(profile)
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
        said = "; ".join(x for x in (r.get("source"), r.get("date"), r.get("machine")) if x)
        engine = r.get("engine") or ""
        if r["kind"] == "sampling" and r["kind"] in out and engine != preferred and \
                getattr(out[r["kind"]], "engine", "") == preferred:
            continue  # a row of the engine this profile samples with stays
        out[r["kind"]] = Throughput(value, f"measured: {file}" + (f" ({said})" if said else ""), engine)
    return out


def throughputs(profile: str, file: str | Path | None = None, **given: float | None) -> dict[str, Throughput]:
    """Tokens per second per kind: ``given`` (command-line values) over the file (``file``, else
    :data:`MEASURED` if present) over the profile's defaults."""
    defaults = DEFAULTS.get(profile, _GPU)
    out = {kind: Throughput(*defaults[kind]) for kind in KINDS if kind in defaults}
    path = Path(file) if file else paths.project_root() / MEASURED
    if file and not path.is_file():
        raise ThroughputError(f"--throughputs: {path} not found")
    if path.is_file():
        out.update(_read(path, profile))
    for kind, value in given.items():
        if value is not None:
            out[kind] = Throughput(float(value), "given on the command line")
    if "training_full" not in out:  # follows the LoRA rate in use, measured or not
        lora = out["training"]
        out["training_full"] = Throughput(FULL_FT_SHARE * lora.tokens_per_second,
                                          f"assumed (not measured): {FULL_FT_SHARE:g} of the LoRA training rate, "
                                          f"whose source is: {lora.source}")
    return out


def record_rates(benchmark: str, what: str, rates: Mapping[str, tuple[float, str]], *, kind: str = "sampling",
                 profile: str = "", threads: int | None = None, device: str | None = None,
                 file: str | Path | None = None) -> Path | None:
    """A benchmark's one-line recording: ``rates`` (variant -> (tokens/s, engine)) as :class:`Measured` rows of
    ``kind`` for ``profile``, ``what`` saying what was timed, into ``file`` (default :data:`MEASURED`) with
    :func:`machine` (``threads`` or ``device``). Prints what it wrote; a file that cannot be written is reported,
    not raised (the benchmark's printed figures stand). Returns the file, or None."""
    rows = [Measured(kind, rate, benchmark, f"{what}, {variant}", variant=variant, profile=profile, engine=engine)
            for variant, (rate, engine) in rates.items() if rate and rate > 0]
    if not rows:
        return None
    try:
        path = record(rows, file, machine_text=machine(threads=threads, device=device))
    except (OSError, ThroughputError) as err:
        print(f"{benchmark}: the measured rates were not recorded ({err})", flush=True)
        return None
    print(f"{benchmark}: {len(rows)} measured rate(s) recorded in {path} for the cost estimate", flush=True)
    return path
