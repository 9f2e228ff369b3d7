"""Table 7 of the HbAT paper: training time and peak memory of each method relative to DPO, each method
trained in a fresh process (interleaved, so drifting machine load hits both alike) on the same data.

The training goes where the notebook's goes: under the params' ``launch`` (or the active
:func:`mfnb.training.launch.launching` block), each stage runs in ``accelerate launch``'s processes, as in the
Table 4 runs (a 7B model's full fine-tuning does not fit one GPU). Its time then includes each stage's
launch (process start, the model written and read back), as the Table 4 runs' does; the training
processes' own seconds are ``worker_seconds``. Memory: ``peak_rss_mb`` is the measuring process (it holds
the model, computes the change statistics and the original EWC's Fisher); under a launch
``worker_peak_rss_mb`` is the largest training process's, and ``worker_cuda_peak_mb`` its GPU peak where
the training processes report one (``cuda_peak_mb`` in their metrics). :func:`memory_column` picks the
measure the claims compare.

The process's peak is training's own: on Linux the peak resident size is reset to the current size just
before training (:func:`mfnb.core.machine.reset_peak_rss`). Without the reset, loading the model and data (or, on a cold cache,
building them) can set the peak for every method alike: on 2026-12-07 one tiny run read 759.7 MB for all
three methods (a ratio of 1.0) and the next, with the caches warm, 621 / 630 / 691 MB.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Sequence

from mfnb.core import reference
from mfnb.core.machine import peak_rss_bytes, reset_peak_rss
from mfnb.hbat.ablations import HbatExperiment
from mfnb.hbat.algorithm import run_hbat
from mfnb.hbat.config import HbatNotebookParams
from mfnb.training import launch as launcher


def _cost_worker(spec_json: str) -> None:
    """Subprocess body: train one method on seed 0's data (no evaluation) and print its costs as JSON."""
    import resource

    import psutil
    import torch

    spec = json.loads(spec_json)
    params = HbatNotebookParams.validate_mapping(spec["params"], source="efficiency")
    exp = HbatExperiment(params, store=spec["store"])
    method_params = exp.method_params(spec["method"], **spec.get("changes", {}))
    sft_rows, pref_rows = exp.data(params.seeds[0])
    model = exp.load_initial()

    cuda = torch.cuda.is_available()
    if cuda:
        model.cuda()
        torch.cuda.reset_peak_memory_stats()
    peak_reset = reset_peak_rss()  # the peak below is training's, not loading's
    baseline = psutil.Process().memory_info().rss
    start = time.perf_counter()
    run = run_hbat(model, exp.tokenizer, sft_rows, pref_rows, method_params, seed=params.seeds[0],
                   launch=params.launch)
    wall = time.perf_counter() - start
    peak = peak_rss_bytes()
    costs = {"method": spec["method"], "train_seconds": run.train_seconds, "wall_seconds": wall,
             "cpu_seconds": run.cpu_seconds,
             "importance_seconds": sum(s.importance_seconds for s in run.stages),
             "state_mb": run.state_bytes / 2**20,
             "peak_rss_mb": peak / 2**20, "extra_rss_mb": max(peak - baseline, 0) / 2**20,
             "peak_since": "training" if peak_reset else "process start",
             "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
             "stages": len(run.stages), "stage_seconds": [round(x.train_seconds, 3) for x in run.stages]}
    launched = [s.train_metrics for s in run.stages if "world_size" in s.train_metrics]
    if launched:  # (the keys appear only then: runs without a launch keep their columns)
        worker_cuda = [m["cuda_peak_mb"] for m in launched if m.get("cuda_peak_mb") is not None]
        costs.update(world_size=max(m["world_size"] for m in launched),
                     worker_seconds=sum(m.get("launch_seconds") or 0.0 for m in launched),
                     worker_peak_rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                     worker_cuda_peak_mb=max(worker_cuda) if worker_cuda else None)
    print("COST " + json.dumps(costs))


def measure_efficiency(params: HbatNotebookParams, methods: Sequence[str] = ("DPO", "HbAT", "HbAT w/ original EWC"),
                       repeats: int = 1,
                       changes: dict | None = None, timeout: float = 900):
    """Table 7: each method trained ``repeats`` times in a fresh process (interleaved, so drifting machine
    load hits both alike) on the same data and steps; training seconds and peak memory per run. The stages
    train under ``params.launch`` or, without one, the active :func:`mfnb.training.launch.launching` block (a
    fresh process does not inherit the block: it is written into the process's params)."""
    import tempfile

    import pandas as pd

    launch = launcher.active_launch(params.launch)
    values = {**params.model_dump(), "launch": launch.model_dump() if launch is not None else None}
    rows = []
    with tempfile.TemporaryDirectory(prefix="mfnb-hbat-cost-") as store:
        for r in range(repeats):
            for method in methods:
                spec = json.dumps({"params": values, "method": method, "store": store, "changes": changes or {}})
                code = "import sys; from mfnb.hbat.efficiency import _cost_worker; _cost_worker(sys.argv[1])"
                proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=timeout)
                line = next((l for l in proc.stdout.splitlines() if l.startswith("COST ")), None)
                if proc.returncode != 0 or line is None:
                    raise RuntimeError(f"efficiency run of {method} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
                rows.append({"repeat": r, **json.loads(line[5:])})
    return pd.DataFrame(rows)


MEMORY_COLUMNS = (("worker_cuda_peak_mb", "peak GPU memory of the training processes"),
                  ("cuda_peak_mb", "peak GPU memory"),
                  ("worker_peak_rss_mb", "peak memory of the largest training process"),
                  ("peak_rss_mb", "peak process memory"))


def memory_column(costs) -> tuple[str, str]:
    """(column, what it measures): the training's memory as Table 7 means it, the first measured in every
    run of: the launched training processes' GPU peak, this process's GPU peak, the largest launched
    process's RSS, this process's RSS (the CPU runs)."""
    for column, what in MEMORY_COLUMNS:
        if column in costs and len(costs) and costs[column].notna().all():
            return column, what
    return "peak_rss_mb", "peak process memory"


def efficiency_table(costs, baseline: str = "DPO"):
    """Median seconds and peak memory per method, relative to ``baseline``, beside the paper's Table 7."""

    cols = [c for c in ("train_seconds", "cpu_seconds", "importance_seconds", "peak_rss_mb", "extra_rss_mb", "state_mb")
            if c in costs]
    # measured on a GPU or under a launch only (a CPU run's table keeps its columns)
    cols += [c for c in ("cuda_peak_mb", "worker_seconds", "worker_peak_rss_mb", "worker_cuda_peak_mb")
             if c in costs and costs[c].notna().all()]
    med = costs.groupby("method", sort=False)[cols].median()
    base = med.loc[baseline]
    memory, what = memory_column(costs)
    out = med.assign(relative_time=med["train_seconds"] / base["train_seconds"],
                     **({"relative_cpu": med["cpu_seconds"] / base["cpu_seconds"]} if "cpu_seconds" in med else {}),
                     relative_peak_rss=med["peak_rss_mb"] / base["peak_rss_mb"],
                     **({"relative_memory": med[memory] / base[memory], "memory_measure": what}
                        if memory != "peak_rss_mb" else {}),
                     runs=costs.groupby("method", sort=False).size()).reset_index()
    paper = reference.load("hbat_table7").rename(columns={"relative_time": "paper_relative_time",
                                                          "memory_gb": "paper_memory_gb", "gpt4_win": "paper_gpt4_win"})
    paper["paper_relative_memory"] = paper["paper_memory_gb"] / float(paper.loc[paper.method == "DPO", "paper_memory_gb"].iloc[0])
    return out.merge(paper, on="method", how="left")
