"""The machine behind a run, recorded beside its tables: results measured on CPUs differ between machines (other
kernels, other thread counts), so every report names the machine each notebook ran on."""
from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX). Not oneDNN's own "bf16 supported": it says
    yes on any AVX512F CPU, where bf16 is emulated (SmolLM2 sampled 4-5x slower than in fp32 on such a CPU,
    benchmarks/bench_served_lora.py, 2026-12-07)."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # another torch: read the CPU's flags (Linux)
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def machine_record(threads: int | None = None) -> dict[str, Any]:
    """CPU model, logical cores, torch's threads (``threads``: the count the notebook's work runs on, where it
    sets one only around that work; default: torch's count now), whether bf16 is native, the GPUs torch sees,
    the versions of Python and torch, and the date (UTC)."""
    import torch

    gpus = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    return {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "torch_threads": threads or torch.get_num_threads(),
            "native_bf16": cpu_has_native_bf16(), "gpus": gpus, "python": platform.python_version(),
            "torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat()}


def describe(record: dict[str, Any]) -> str:
    """One line: ``Intel(R) Xeon(R) Processor, 2 logical cores, torch 2.13.0 on 2 threads, no native bf16, no GPU``."""
    gpus = record.get("gpus") or []
    return (f"{record.get('cpu', 'unknown CPU')}, {record.get('logical_cores')} logical cores, torch "
            f"{record.get('torch')} on {record.get('torch_threads')} threads, "
            f"{'native' if record.get('native_bf16') else 'no native'} bf16, "
            + (", ".join(gpus) if gpus else "no GPU") + f" ({record.get('date')})")


def write_machine_record(path: str | Path, threads: int | None = None) -> dict[str, Any]:
    """Write :func:`machine_record` (with ``threads``) as JSON to ``path`` (atomically); returns it."""
    from mfnb.core.atomic import write_json

    record = machine_record(threads)
    write_json(Path(path), record)
    return record


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def reset_peak_rss() -> bool:
    """Reset this process's peak resident size (Linux's VmHWM) to its current size, so a peak read later is
    that of what runs in between; False where the kernel offers no reset (the peak then counts from start)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int:
    """This process's resident size now (VmRSS)."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """This process's peak resident size since its start or the last :func:`reset_peak_rss` (VmHWM on Linux,
    else ``ru_maxrss``, which no reset touches)."""
    try:
        return _status_kib("VmHWM") * 1024
    except (OSError, RuntimeError):
        import resource
        import sys

        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
