"""Table 7 of the HbAT paper: training time and peak memory of each method relative to DPO, each method
trained in a fresh process (interleaved, so drifting machine load hits both alike) on the same data.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Sequence

from mfnb.hbat.ablations import HbatExperiment, HbatNotebookParams
from mfnb.hbat.algorithm import run_hbat


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
    baseline = psutil.Process().memory_info().rss
    start = time.perf_counter()
    run = run_hbat(model, exp.tokenizer, sft_rows, pref_rows, method_params, seed=params.seeds[0])
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print("COST " + json.dumps({"method": spec["method"], "train_seconds": run.train_seconds, "wall_seconds": wall,
                                "cpu_seconds": run.cpu_seconds,
                                "importance_seconds": sum(s.importance_seconds for s in run.stages),
                                "state_mb": run.state_bytes / 2**20,
                                "peak_rss_mb": peak / 2**20, "extra_rss_mb": max(peak - baseline, 0) / 2**20,
                                "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                                "stages": len(run.stages), "stage_seconds": [round(x.train_seconds, 3) for x in run.stages]}))


def measure_efficiency(params: HbatNotebookParams, methods: Sequence[str] = ("DPO", "HbAT", "HbAT w/ original EWC"),
                       repeats: int = 1,
                       changes: dict | None = None, timeout: float = 900):
    """Table 7: each method trained ``repeats`` times in a fresh process (interleaved, so drifting machine
    load hits both alike) on the same data and steps; training seconds and peak memory per run."""
    import tempfile

    import pandas as pd

    rows = []
    with tempfile.TemporaryDirectory(prefix="mfnb-hbat-cost-") as store:
        for r in range(repeats):
            for method in methods:
                spec = json.dumps({"params": params.model_dump(), "method": method, "store": store,
                                   "changes": changes or {}})
                code = "import sys; from mfnb.hbat.efficiency import _cost_worker; _cost_worker(sys.argv[1])"
                proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=timeout)
                line = next((l for l in proc.stdout.splitlines() if l.startswith("COST ")), None)
                if proc.returncode != 0 or line is None:
                    raise RuntimeError(f"efficiency run of {method} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
                rows.append({"repeat": r, **json.loads(line[5:])})
    return pd.DataFrame(rows)


def efficiency_table(costs, baseline: str = "DPO"):
    """Median seconds and peak memory per method, relative to ``baseline``, beside the paper's Table 7."""

    from mfnb import reference

    cols = [c for c in ("train_seconds", "cpu_seconds", "importance_seconds", "peak_rss_mb", "extra_rss_mb", "state_mb")
            if c in costs]
    med = costs.groupby("method", sort=False)[cols].median()
    base = med.loc[baseline]
    out = med.assign(relative_time=med["train_seconds"] / base["train_seconds"],
                     **({"relative_cpu": med["cpu_seconds"] / base["cpu_seconds"]} if "cpu_seconds" in med else {}),
                     relative_peak_rss=med["peak_rss_mb"] / base["peak_rss_mb"],
                     runs=costs.groupby("method", sort=False).size()).reset_index()
    paper = reference.load("hbat_table7").rename(columns={"relative_time": "paper_relative_time",
                                                          "memory_gb": "paper_memory_gb", "gpt4_win": "paper_gpt4_win"})
    paper["paper_relative_memory"] = paper["paper_memory_gb"] / float(paper.loc[paper.method == "DPO", "paper_memory_gb"].iloc[0])
    return out.merge(paper, on="method", how="left")
