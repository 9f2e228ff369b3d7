"""`make gpu-check`'s pieces on CPU: benchmarks/gpu_scale.py at tiny size, the scripts' syntax, the wheel list.

The real run needs a GPU machine (tools/gpu_check.sh); here the same code path runs on a 2-layer model.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
SCALE = ROOT / "benchmarks" / "gpu_scale.py"
WHEELHOUSE = ROOT / "tools" / "build_wheelhouse.sh"
GPU_CHECK = ROOT / "tools" / "gpu_check.sh"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _rows(stdout: str) -> dict[tuple[str, str], str]:
    """(part, variant) -> status, read from the printed table."""
    table = stdout.split("\npart ")[1].split("\nnotes:")[0]
    rows = {}
    for line in table.splitlines()[1:]:
        m = re.match(r"(\S+)\s+(.+?)\s{2,}(ok|oom|error|skipped|interrupted)\s", line)
        assert m, f"unreadable table row: {line!r}"
        rows[m.group(1), m.group(2)] = m.group(3)
    return rows


def test_tiny_run_on_cpu_prints_a_row_per_part_and_writes_the_table(tmp_path):
    proc = subprocess.run([sys.executable, str(SCALE), "--shape", "tiny", "--device", "cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("# gpu_scale ") and "torch " in out.splitlines()[0]  # date, card, versions
    rows = _rows(out)
    assert rows == {("build", "random weights"): "ok", ("dpo", "checkpointing off"): "ok",
                    ("dpo", "checkpointing on"): "ok", ("importance", "full fine-tune"): "ok",
                    ("sample", "hf engine"): "ok"}, out
    assert "no failures" in out.splitlines()[-1]
    assert re.search(r"activation checkpointing on via (DPOParams\.gradient_checkpointing|config_overrides)", out)
    assert "snapshot(device=cpu)" in out or "snapshot(no device argument)" in out
    with (tmp_path / "gpu_scale.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [(r["part"], r["status"]) for r in table] == [("build", "ok"), ("dpo", "ok"), ("dpo", "ok"),
                                                          ("importance", "ok"), ("sample", "ok")]
    by_part = {(r["part"], r["variant"]): r for r in table}
    # tokens: 2 sequences (chosen, rejected) x 4 pairs x 64 tokens; 8 prompts x 16 new tokens at most
    assert int(by_part["dpo", "checkpointing off"]["tokens"]) == 2 * 4 * 64
    assert 0 < int(by_part["sample", "hf engine"]["tokens"]) <= 8 * 16
    assert float(by_part["sample", "hf engine"]["tokens_per_s"]) > 0
    meta = json.loads((tmp_path / "gpu_scale.json").read_text())["meta"]
    assert meta["shape"] == "tiny" and meta["device"] == "cpu" and meta["date"] and meta["torch"]


def test_a_failing_part_is_reported_and_the_others_still_run(tmp_path):
    """importance raises, sample runs out of memory (an OOM outside the DPO step without checkpointing is a
    failure); both are rows with the error's last line, and the exit status is 1."""
    patch = (
        "import importlib.util, sys, torch\n"
        f"spec = importlib.util.spec_from_file_location('gpu_scale', {str(SCALE)!r})\n"
        "mod = sys.modules['gpu_scale'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "def boom(self): raise RuntimeError('planted failure')\n"
        "def oom(self): raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 9.00 GiB (planted)')\n"
        "mod.Bench.importance, mod.Bench.sample = boom, oom\n"
        f"sys.exit(mod.main(['--shape', 'tiny', '--device', 'cpu', '--parts', 'importance,sample', "
        f"'--out', {str(tmp_path)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", patch], capture_output=True, text=True, timeout=300, env=_env(),
                          cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _rows(proc.stdout)
    assert rows == {("build", "random weights"): "ok", ("importance", "full fine-tune"): "error",
                    ("sample", "hf engine"): "oom"}
    assert "RuntimeError: planted failure" in proc.stdout  # the traceback's last lines
    assert "FAILED: importance/full fine-tune (error), sample/hf engine (oom)" in proc.stdout
    table = list(csv.DictReader((tmp_path / "gpu_scale.csv").open()))
    assert "planted failure" in table[1]["error"] and table[2]["status"] == "oom"


def test_bad_arguments_are_refused():
    proc = subprocess.run([sys.executable, str(SCALE), "--shape", "tiny", "--device", "cpu", "--parts", "dpo,train"],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 2 and "unknown ['train']" in proc.stderr


@pytest.mark.parametrize("script", [GPU_CHECK, WHEELHOUSE], ids=lambda p: p.name)
def test_scripts_are_valid_bash(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_wheelhouse_list_names_one_pinned_version_of_each_package_mfnb_needs_there():
    proc = subprocess.run(["bash", str(WHEELHOUSE), "--list"], capture_output=True, text=True, timeout=30,
                          env={**_env(), "PIP_NO_INDEX": "1"})
    assert proc.returncode == 0, proc.stderr
    pins = {}
    for line in proc.stdout.split():
        name, _, version = line.partition("==")
        assert version and Version(version), f"not NAME==VERSION: {line!r}"
        key = canonicalize_name(name)
        assert key not in pins, f"{name} listed twice"
        pins[key] = Version(version)
    # what the GPU image lacks (or has too old) for mfnb, papermill's kernel, TRL, DeepSpeed and the judge
    for needed in ("trl", "datasets", "pydantic", "papermill", "nbclient", "ipykernel", "openai", "deepspeed",
                   "transformers", "huggingface-hub", "peft", "accelerate"):
        assert needed in pins, f"{needed} missing from the wheelhouse list"
    assert "torch" not in pins and "numpy" not in pins  # the image's own, never carried
    # every pin meets the project's own requirement on it
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in ("notebooks", "scaleout") for r in
                                              project["optional-dependencies"][extra]]
    for text in requirements:
        req = Requirement(text)
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is not None:
            assert req.specifier.contains(pinned, prereleases=True), f"{req.name} {pinned} does not meet {req}"
