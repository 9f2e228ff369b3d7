"""What running notebooks 01-04 of a profile will cost: ``python -m mfnb estimate --profile paper``.

Notebooks 01, 03 and 04 are counted from their params as their packages' code does the work
(:mod:`mfnb.estimate.counts`); notebook 02, whose work depends on how many iterations its traces take, is scaled
from a finished run's ledger (:func:`mfnb.multifidelity.estimate.scale_counts`). :mod:`mfnb.estimate.costs`
turns the counts into tokens, judge dollars, GPU hours and judge wall-clock, with the throughputs of
:mod:`mfnb.estimate.throughput`. :func:`check_rehearsal` compares the counts at rehearsal sizes with what a
rehearsal counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from mfnb.core.imports import resolve
from mfnb.estimate.costs import Assumptions, judge_clock, priced
from mfnb.estimate.counts import COUNTERS, DATASET_SIZES, Item, Sizes
from mfnb.estimate.throughput import Throughput, ThroughputError, throughputs
from mfnb.multifidelity.estimate import EstimateError, scale_counts

NOTEBOOKS = ("01_fidelity_winrates", "02_multifidelity_traces", "03_expo_alpha_curves", "04_hbat_ablations")
SCHEMAS = {
    "01_fidelity_winrates": "mfnb.ladder.config:FidelityWinratesParams",
    "02_multifidelity_traces": "mfnb.multifidelity.config:TracesParams",
    "03_expo_alpha_curves": "mfnb.expo.config:ExpoParams",
    "04_hbat_ablations": "mfnb.hbat.config:HbatNotebookParams",
}

__all__ = ["Assumptions", "DATASET_SIZES", "Estimate", "EstimateError", "Item", "NOTEBOOKS", "Sizes", "Throughput",
           "ThroughputError", "count", "ledger_items", "price", "throughputs", "validate"]


def validate(notebook: str, values: Mapping, source: str):
    """The notebook's params object from ``values`` (its schema's checks, errors naming the field and ``source``)."""
    return resolve(SCHEMAS[notebook], f"schema of {notebook}").validate_mapping(dict(values), source=source)


def ledger_items(target, tables: str | Path, measured) -> list[Item]:
    """Notebook 02's work at ``target``'s sizes, scaled from the ledger in ``tables`` (``02_ledger.csv`` and
    ``02_iterations.csv``, made with the params ``measured``)."""
    tables = Path(tables)
    for name in ("02_ledger.csv", "02_iterations.csv"):
        if not (tables / name).is_file():
            raise EstimateError(f"--ledger: {tables / name} not found (run notebook 02 of a profile first)")
    counts = scale_counts(pd.read_csv(tables / "02_ledger.csv"), pd.read_csv(tables / "02_iterations.csv"),
                          measured, target)
    nb, src = "02_multifidelity_traces", f"ledger: {tables}"
    cap = max(target.sampling.max_new_tokens, target.test_sampling.max_new_tokens)
    items = []
    for r in counts.itertuples():
        at = f"B={r.batch_size}, {r.traces} traces ({r.measured_traces} measured)"
        items.append(Item(nb, f"responses ({at})", src, responses=round(r.student_responses + r.expert_responses),
                          max_new_tokens=cap))
        items.append(Item(nb, f"DPO iterations ({at})", src, train_kind="dpo", training_runs=round(r.training_runs),
                          train_rows=round(r.dpo_pairs_trained / target.dpo.epochs),
                          train_sequences=2 * r.dpo_pairs_trained, max_length=target.dpo.max_length,
                          optimizer_steps=round(r.optimizer_steps), full_ft=target.lora is None))
        items.append(Item(nb, f"judgements ({at})", src, judge_pairs=round(r.judgements), judge=dict(target.judge),
                          max_new_tokens=cap))
    return items


def count(params: Mapping[str, object], sizes: Sizes | None = None, *, ledger: str | Path | None = None,
          measured=None) -> pd.DataFrame:
    """One row per item of work of each notebook in ``params`` (notebook -> its params object); notebook 02
    needs ``ledger`` and the ``measured`` params that made it."""
    sizes = sizes or Sizes()
    items: list[Item] = []
    for notebook, P in params.items():
        if notebook == "02_multifidelity_traces":
            if ledger is None:
                raise EstimateError("notebook 02 is scaled from a ledger: give --ledger")
            items += ledger_items(P, ledger, measured)
        else:
            found = COUNTERS[notebook](P, sizes)
            for item in found:  # a judge's items carry the judged responses' cap (their tokens are in each request)
                if item.judge_pairs and not item.max_new_tokens:
                    item.max_new_tokens = P.sampling.max_new_tokens
            items += found
    return pd.DataFrame([i.row() for i in items])


@dataclass
class Estimate:
    table: pd.DataFrame                 # one row per item, priced
    clock: pd.DataFrame                 # judge wall-clock per notebook and judge
    throughputs: dict[str, Throughput]
    assumptions: Assumptions
    sizes: dict[str, tuple[int, str]] = field(default_factory=dict)
    device: str = "GPU"                 # what the hours are hours of

    TOTALS = ["responses", "generated_tokens", "training_runs", "train_rows", "optimizer_steps", "trained_tokens",
              "judge_pairs", "judge_requests", "judge_input_tokens", "judge_output_tokens", "judge_dollars",
              "sampling_gpu_hours", "training_gpu_hours", "gpu_hours", "extrapolations", "extrapolated_gb"]

    def totals(self) -> pd.DataFrame:
        """One row per notebook and one for all of them."""
        per = self.table.groupby("notebook", sort=False)[self.TOTALS].sum()
        per["source"] = self.table.groupby("notebook", sort=False)["source"].agg(
            lambda s: "ledger" if s.str.startswith("ledger").all() else "params")
        hours = self.clock.groupby("notebook", sort=False)["hours"].sum() if len(self.clock) else pd.Series(dtype=float)
        per["judge_hours"] = hours.reindex(per.index).fillna(0.0)
        total = per.drop(columns="source").sum()
        out = per.reset_index()
        return pd.concat([out, pd.DataFrame([{"notebook": "total", "source": "", **total.to_dict()}])], ignore_index=True)


def price(items: pd.DataFrame, profile: str, *, assume: Assumptions | None = None, throughput_file=None,
          tokenizer=None, sizes: Sizes | None = None, **given) -> Estimate:
    assume = assume or Assumptions()
    rates = throughputs(profile, throughput_file, **given)
    table = priced(items, rates, assume, tokenizer)
    return Estimate(table, judge_clock(table, assume), rates, assume, dict((sizes.used if sizes else {})),
                    "GPU" if profile == "paper" else "CPU machine (2 cores)")
