"""The machine record beside each notebook's tables, and its one line in the reports."""
from __future__ import annotations

import json

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
