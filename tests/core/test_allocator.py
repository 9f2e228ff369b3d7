"""The glibc allocator settings: set for child processes unless the user chose, the same in the Makefile, and
they really stop a freed large array's memory from being faulted in afresh (the cost mfnb.core.allocator removes)."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys

import pytest

from mfnb.core import allocator, paths

SECOND_ALLOCATION_FAULTS = """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
n = 100_000_000  # above glibc's largest mmap threshold (32 MB), like a step's logits or activations
first = libc.malloc(n)
ctypes.memset(first, 1, n)
libc.free(first)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
second = libc.malloc(n)
ctypes.memset(second, 1, n)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_child_processes_get_the_tunables_unless_the_user_set_some():
    env = {}
    with allocator.for_child_processes(env) as value:
        assert value == allocator.TUNABLES and env["GLIBC_TUNABLES"] == allocator.TUNABLES
    assert env == {}  # the caller's environment is left as it was
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    with allocator.for_child_processes(mine) as value:
        assert value == "glibc.malloc.arena_max=2"
    assert mine == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}


def test_the_cli_starts_the_notebook_kernel_with_the_tunables(tmp_path, monkeypatch):
    import nbformat

    from mfnb import cli

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    notebook = tmp_path / "probe.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os\nprint(os.environ.get('GLIBC_TUNABLES'))")]), notebook)
    out = cli.execute(notebook, tmp_path / "out.ipynb", {}, cwd=tmp_path, progress=False)
    printed = nbformat.read(out, as_version=4).cells[0].outputs[0]["text"].strip()
    assert printed == allocator.TUNABLES and "GLIBC_TUNABLES" not in os.environ


def test_the_makefile_exports_the_same_settings():
    makefile = (paths.project_root() / "Makefile").read_text()
    assert re.search(r"^export GLIBC_TUNABLES \?= (.+)$", makefile, re.M).group(1) == allocator.TUNABLES


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc tunables")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    def faults(tunables: str | None) -> int:
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        if tunables:
            env["GLIBC_TUNABLES"] = tunables
        out = subprocess.run([sys.executable, "-c", SECOND_ALLOCATION_FAULTS], env=env, capture_output=True,
                             text=True, check=True)
        return int(out.stdout)

    pages = 100_000_000 // 4096
    assert faults(None) > pages // 2                  # glibc's default: a fresh mapping, every page faulted in
    assert faults(allocator.TUNABLES) < pages // 20   # the settings: the freed heap memory is reused
