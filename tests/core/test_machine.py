"""The machine record beside each notebook's tables, and its one line in the reports."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mfnb.core import machine


def test_the_record_names_the_cpu_threads_bf16_and_versions_and_round_trips(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "cpu_model", lambda: "Test CPU 9000")
    monkeypatch.setattr(machine, "cpu_has_native_bf16", lambda: False)
    record = machine.write_machine_record(tmp_path / "01_machine.json")
    assert json.loads((tmp_path / "01_machine.json").read_text()) == record
    assert record["cpu"] == "Test CPU 9000" and record["torch_threads"] == torch.get_num_threads()
    assert record["torch"] == torch.__version__ and record["native_bf16"] is False
    line = machine.describe({**record, "logical_cores": 2, "torch_threads": 2, "gpus": [], "date": "2026-12-07"})
    assert line == f"Test CPU 9000, 2 logical cores, torch {torch.__version__} on 2 threads, no native bf16, no GPU (2026-12-07)"
    assert machine.describe({**record, "gpus": ["NVIDIA H100"], "native_bf16": True}).count("NVIDIA H100") == 1
    # a notebook that sets its thread count only around its work records that count, not torch's now
    assert machine.write_machine_record(tmp_path / "02_machine.json", threads=7)["torch_threads"] == 7


def test_native_bf16_on_cpu_asks_for_the_instructions(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert machine.cpu_has_native_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert machine.cpu_has_native_bf16() is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak reset is Linux's /proc/self/clear_refs")
def test_the_peak_counts_from_the_reset_not_from_what_came_before():
    # what HbAT's Table 7 relies on to measure training's peak, not loading's
    # in a fresh process whose allocator returns freed memory (no GLIBC_TUNABLES): 300 MB touched and freed
    # (loading), the reset, then 64 MB (training): the peak read is training's, far below loading's
    code = """
from mfnb.core.machine import peak_rss_bytes, reset_peak_rss
loaded = bytearray(300 * 2**20)
del loaded
before = peak_rss_bytes()
assert reset_peak_rss() is True
after = peak_rss_bytes()
grown = bytearray(64 * 2**20)
print(before >> 20, after >> 20, peak_rss_bytes() >> 20)
"""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    before, after, trained = map(int, out.stdout.split())
    assert before >= 300 and after < before - 200 and after + 60 <= trained < before
