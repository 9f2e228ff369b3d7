"""Peak memory (resident set size high-water mark) of a command or a Python callable, run in a fresh process.

A fresh process, so that nothing this process already holds (an imported torch, a loaded model) is counted
and nothing it frees is hidden: the child's peak is read by the kernel (``wait4``'s ``ru_maxrss``, which
covers the child and the descendants it waited for, each counted alone, not summed) when it exits. Linux
folds the RSS peak of the process that forked into that figure (``exec`` keeps the old memory's high-water
mark), so a command is started by a small stdlib-only launcher (this file), never straight from a big process.

    python benchmarks/peak_memory.py -- python -c \
        "from mfnb.worlds import make_world; make_world({'kind': 'smol'}).build()"
    MFNB_CACHE=$(mktemp -d) python benchmarks/peak_memory.py -- ...   # a cold build: nothing cached yet

From Python: ``peak_rss_of_command([...])`` or ``peak_rss_of_callable(fn, *args)`` (``fn`` must be importable
by name, as for any spawned process). :func:`reset_peak` and :func:`current_peak` measure a stretch of code
inside this process (Linux: ``/proc/self/clear_refs``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class PeakMemory:
    """Peak RSS in bytes, wall seconds, exit status (0 for a callable that returned) of one run."""

    peak_bytes: int
    seconds: float
    returncode: int = 0
    result: Any = None

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


def _run_and_wait(args: list[str], env: dict | None = None, cwd: str | None = None) -> PeakMemory:
    """The peak as wait4 reports it: right only when this process is small (see the module docstring)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return PeakMemory(usage.ru_maxrss * 1024, time.perf_counter() - start, proc.returncode)  # Linux: KiB


def peak_rss_of_command(command: Sequence[str] | str, *, env: dict | None = None, cwd: str | None = None) -> PeakMemory:
    """Run ``command`` (a list, or a string split like a shell would) to its end through the small launcher;
    its peak RSS and wall time. Its output goes where this process's goes."""
    args = shlex.split(command) if isinstance(command, str) else list(command)
    with tempfile.NamedTemporaryFile("r", suffix=".json", prefix="peak-memory-") as report:
        launcher = subprocess.run([sys.executable, os.path.abspath(__file__), "--report", report.name, "--", *args],
                                  env=env, cwd=cwd)
        text = report.read()
        if not text:
            raise RuntimeError(f"the peak-memory launcher failed (exit status {launcher.returncode}) on "
                               f"{shlex.join(args)}")
        run = json.loads(text)
    return PeakMemory(run["peak_bytes"], run["seconds"], run["returncode"])


def _call_and_measure(fn: Callable, args: tuple, kwargs: dict) -> tuple[Any, int]:
    result = fn(*args, **kwargs)
    # VmHWM: this process's own memory since its exec (ru_maxrss would include the spawning parent's peak)
    return result, max(current_peak(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)


def peak_rss_of_callable(fn: Callable, *args, **kwargs) -> PeakMemory:
    """``fn(*args, **kwargs)`` in a freshly spawned Python process (its imports counted); its result (which must
    pickle), peak RSS and wall time. An exception in ``fn`` is raised here."""
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        result, peak = pool.submit(_call_and_measure, fn, args, kwargs).result()
    return PeakMemory(peak, time.perf_counter() - start, 0, result)


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", open("/proc/self/status").read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


# reset_peak and current_peak are mfnb.core.machine's reset_peak_rss and peak_rss_bytes again: this file is the
# stdlib-only launcher of the measured commands, so it does not import mfnb


def reset_peak() -> bool:
    """Reset this process's RSS high-water mark to its current RSS; False where the kernel does not allow it
    (then :func:`current_peak` is the peak since the process started)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss() -> int:
    return _status_kib("VmRSS") * 1024


def current_peak() -> int:
    """This process's RSS high-water mark in bytes (since start, or since :func:`reset_peak`)."""
    try:
        return _status_kib("VmHWM") * 1024
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", help=argparse.SUPPRESS)  # launcher mode: write the result as JSON here
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command to run (after --)")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command given: python benchmarks/peak_memory.py -- <command> [args...]")
    run = _run_and_wait(command)  # this process is small: wait4's figure is the command's own
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"peak_bytes": run.peak_bytes, "seconds": run.seconds, "returncode": run.returncode}, f)
        return 0
    print(f"peak RSS {run.peak_mib:.0f} MiB, {run.seconds:.1f} s wall, exit status {run.returncode}: "
          f"{shlex.join(command)}", file=sys.stderr)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
