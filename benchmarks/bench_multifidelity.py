"""Multi-fidelity benchmark: one Algorithm 2 run in the tiny profile from scratch, and where its time goes.

Parameters come from params/tiny/02_multifidelity_traces.yaml (B = its first batch size unless --batch-size).
The run state and the judge's verdict cache go to a fresh temporary folder, so nothing is resumed or served from
a cache: generation, judging, DPO and evaluation are all measured.  Prints seconds and shares per activity, and
DPO seconds per iteration against |D^(m)| (DPO retrains on all of D^(m) every iteration, so it grows).

    python benchmarks/bench_multifidelity.py                  # B = 1024, about a minute on 2 cores
    python benchmarks/bench_multifidelity.py --batch-size 128 # quick
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

start = time.perf_counter()
import pandas as pd  # noqa: E402

from mfnb import multifidelity as mf  # noqa: E402
from mfnb.core.paths import project_root  # noqa: E402
from mfnb.evaluation import world_judge  # noqa: E402
from mfnb.models import torch_threads  # noqa: E402
from mfnb.worlds import make_world  # noqa: E402

IMPORTED = time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=None, help="B (default: the yaml's first batch size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the yaml's torch_threads)")
    args = parser.parse_args()

    params = mf.TracesParams.from_yaml(project_root() / "params" / "tiny" / "02_multifidelity_traces.yaml")
    config = params.run_config(args.batch_size or params.batch_sizes[0], args.seed)
    threads = args.threads or params.torch_threads
    t0 = time.perf_counter()
    world = make_world(params.world)
    backend = mf.PolicyBackend(world, params.student)
    loaded = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="mfnb-bench-") as tmp:
        judge = world_judge(world, {**params.judge, "cache": True}, cache_path=Path(tmp) / "judge.sqlite")
        t0 = time.perf_counter()
        with torch_threads(threads):
            result = mf.run_multifidelity(config, backend, judge, backend.prompts, tmp, progress=True)
        wall = time.perf_counter() - t0

    timings = {"startup (imports, world)": IMPORTED + loaded, **result.timings}
    timings["other (decisions, bookkeeping)"] = max(0.0, wall - sum(result.timings.values()))
    shares = mf.time_shares(timings)
    pd.set_option("display.width", 160)
    print(f"\nB = {config.batch_size}, seed {config.seed}, torch threads {threads}: {result.state['t']} iterations, "
          f"{len(result.history)} looks, stop: {result.stop_reason}; Lambda = {result.expert_cost():g}")
    print(f"run wall clock {wall:.1f} s (+ {IMPORTED + loaded:.1f} s startup)\n")
    print(shares.to_string(index=False, formatters={"seconds": "{:.1f}".format, "share": "{:.1%}".format}))
    per_t = result.iterations[["t", "fidelity", "role", "n_t", "D_size"]].copy()
    per_t["dpo_seconds"] = [result.state["dpo_seconds"][str(t)] for t in per_t["t"]]
    per_t["ms_per_pair"] = 1000 * per_t["dpo_seconds"] / per_t["D_size"]
    print("\nDPO per iteration (one epoch over all of D^(m)):")
    print(per_t.to_string(index=False, formatters={"dpo_seconds": "{:.1f}".format, "ms_per_pair": "{:.1f}".format}))


if __name__ == "__main__":
    main()
