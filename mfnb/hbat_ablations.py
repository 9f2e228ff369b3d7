"""Notebook 04's experiments on the tiny alignment-tax world: the paper's Table 4 ablation, Figure 2
(N and Fmax sweeps), Table 7 (time and memory), and the computed statements of which orderings hold.

Every run is cached by the key of its parameters, so a rerun or a killed notebook redoes nothing finished.
The world itself (demonstrations vs preferences that pull apart) is ``mfnb.worlds.hbat_conflict``.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from pydantic import Field, model_validator

from mfnb.hbat import METHODS, HbatParams, clean_store, for_method, run_hbat
from mfnb.models import LoraParams, SamplingParams
from mfnb.params import Params
from mfnb.worlds import tasks
from mfnb.worlds.hbat_conflict import ConflictParams, ConflictWorld


# --------------------------------------------------------------------------------------------------
# Notebook 04: the experiment on this world (runs cached by key, tables, figures, efficiency)


class HbatNotebookParams(Params):
    """Parameters of notebook 04 (``params/<profile>/04_hbat_ablations.yaml``).

    ``hbat`` defaults to the paper's setting (:class:`mfnb.hbat.HbatParams`); a profile's YAML states
    its departures as overrides."""

    profile: str = "tiny"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)       # Table 4
    grid_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)  # Figure 2
    torch_threads: int = Field(default=1, ge=0)      # 0: torch's default
    init_role: str = "student"                       # the "pre-trained LLM" of Algorithm 1
    lora: LoraParams | None = None                   # None: full fine-tuning
    conflict: ConflictParams = ConflictParams()
    hbat: HbatParams = HbatParams()
    methods: list[str] = Field(default_factory=lambda: list(METHODS), min_length=1)
    n_grid: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    fmax_grid: list[float] = Field(default_factory=lambda: [1.0, 50.0, 100.0, 150.0, 200.0])
    sampling: SamplingParams = SamplingParams(temperature=0.75, top_p=0.95, max_new_tokens=16)  # paper: 0.75 / 0.95
    n_validation: int = Field(default=200, ge=1)
    n_test: int = Field(default=500, ge=1)
    tie_margin: float = Field(default=0.05, ge=0)
    delta: float = Field(default=0.05, gt=0, lt=1)
    efficiency_repeats: int = Field(default=1, ge=0)  # Table 7 measurements per method (0: skip)
    keep_weights: bool = False                        # keep stage weights after the notebook (resume only)

    @model_validator(mode="after")
    def _check(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; known: {list(METHODS)}")
        smaller = min(self.conflict.n_sft, self.conflict.n_pref)
        for name, values in (("hbat.n_splits", [self.hbat.n_splits]), ("n_grid", self.n_grid)):
            bad = [n for n in values if n < 1 or n > smaller]
            if bad:
                raise ValueError(f"{name}: N = {bad} must be between 1 and the smaller data set "
                                 f"(conflict.n_sft = {self.conflict.n_sft}, conflict.n_pref = {self.conflict.n_pref})")
        bad = [f for f in self.fmax_grid if not f > 0]
        if bad:
            raise ValueError(f"fmax_grid: Fmax must be > 0, got {bad}")
        return self


def _t_interval(values, level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sd, low, high) of a Student-t interval over seeds (NaN interval for one seed)."""
    import numpy as np
    from scipy import stats as st

    x = np.asarray(list(values), dtype=float)
    mean = float(x.mean()) if len(x) else math.nan
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    half = float(st.t.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    return mean, sd, mean - half, mean + half


METRICS = ("quality", "reward", "win_rate")
# our score -> the paper's Table 4 column it stands in for
PAPER_COLUMNS = {"quality": "pandalm", "reward": "reward", "win_rate": "gpt4_win"}
PAPER_NAMES = {"w/o alternating": "w/o Alternating Alignment"}


class HbatExperiment:
    """Runs of the HbAT family on the conflict world, each cached by a key of everything it depends on."""

    def __init__(self, params: HbatNotebookParams, world=None, store: str | Path | None = None):
        from mfnb import paths
        from mfnb.worlds.tiny import TinyWorld

        self.P = params
        self.world = world or TinyWorld()
        self.conflict = ConflictWorld(params.conflict)
        self.hbat = params.hbat
        self.lora = params.lora
        self.sampling = params.sampling
        self.store = Path(store) if store else paths.results_dir(params.profile, "runs") / "04_hbat"
        self.prompts = {"validation": self.world.prompts["validation"][: params.n_validation],
                        "test": self.world.prompts["test"][: params.n_test]}
        self.judge = self.conflict.judge(params.tie_margin)
        self.tokenizer = self.world.tokenizer()
        self.records: list[dict] = []          # every record this experiment returned, in order
        self.eval_key = _digest({"conflict": self.conflict.params.model_dump(), "sampling": self.sampling.model_dump(),
                                 "prompts": self.prompts, "tie_margin": params.tie_margin, "delta": params.delta})
        if params.torch_threads:
            import torch

            torch.set_num_threads(params.torch_threads)

    # -- one run ----------------------------------------------------------------------------------

    def data(self, seed: int) -> tuple[list[dict], list[dict]]:
        sft_prompts, pref_prompts = self.conflict.split_prompts(self.world.prompts["train"], seed)
        return self.conflict.sft_rows(sft_prompts), self.conflict.preference_rows(pref_prompts, seed)

    def init_key(self) -> str:
        lora = None if self.lora is None else self.lora.model_dump()
        return _digest({"world": self.world.params.key(), "role": self.world.model_path(self.P.init_role).name,
                        "lora": lora})

    def load_initial(self):
        from mfnb.models import attach_lora, load_model

        if not (self.world.model_path(self.P.init_role) / "config.json").is_file():
            self.world.build()
        model = load_model(self.world.model_path(self.P.init_role), show_progress=False)
        return attach_lora(model, self.lora) if self.lora is not None else model

    def evaluate(self, model, tokenizer, split: str) -> dict:
        from mfnb.models import generate

        prompts = self.prompts[split]
        responses = generate(model, tokenizer, prompts, self.sampling, seed=0, desc=f"eval {split}", show_progress=False)
        out = self.conflict.scores(prompts, responses, self.judge, self.P.delta)
        if split == "test":
            out["samples"] = [[p, r] for p, r in zip(prompts[:8], responses[:8])]
        return out

    def run(self, label: str, hbat_params, seed: int) -> dict:
        """One run's record (test scores of the kept checkpoint, stage table, importances), cached."""
        from mfnb.atomic import write_json
        sft_rows, pref_rows = self.data(seed)
        key = _digest({"init": self.init_key(), "params": hbat_params.model_dump(), "seed": seed,
                       "data": _digest([sft_rows, pref_rows]), "eval": self.eval_key})
        target = self.store / "records" / f"{key}.json"
        if target.is_file():
            record = json.loads(target.read_text())
            record["label"] = label
            self.records.append(record)
            return record
        model = self.load_initial()
        run = run_hbat(model, self.tokenizer, sft_rows, pref_rows, hbat_params, seed=seed, store=self.store,
                       init_key=self.init_key(), evaluate=self.evaluate, eval_key=self.eval_key)
        test = dict(run.test)
        record = {"key": key, "label": label, "seed": seed, "n_splits": hbat_params.n_splits,
                  "constraint": hbat_params.constraint, "fmax": hbat_params.ewc.fmax, "lam": hbat_params.ewc.lam,
                  "preference": hbat_params.preference, "selected_stage": run.selected, "n_stages": len(run.stages),
                  "train_seconds": run.train_seconds, "samples": test.pop("samples", []), **test,
                  "stages": run.stage_frame().to_dict(orient="records"),
                  "importance": [{"stage": s.index, "kind": s.kind, "F": s.importance_used,
                                  "constrained": s.constrained_tensors} for s in run.stages if s.importance_used],
                  "change_sums": [{"stage": s.index, "kind": s.kind, "sums": s.change_sums} for s in run.stages]}
        write_json(target, record)
        self.records.append(record)
        return record

    # -- the notebook's sets of runs --------------------------------------------------------------

    def method_params(self, method: str, **ewc_or_top):
        params = for_method(self.hbat, method)
        if ewc_or_top:
            values = params.model_dump()
            for k, v in ewc_or_top.items():
                if k in values["ewc"]:
                    values["ewc"][k] = v
                else:
                    values[k] = v
            params = HbatParams.validate_mapping(values, source=f"{method} {ewc_or_top}")
        return params

    def table4_runs(self, progress: bool = True):
        import pandas as pd
        from tqdm.auto import tqdm

        jobs = [(m, s) for s in self.P.seeds for m in self.P.methods]
        rows = [self.run(m, self.method_params(m), s) for m, s in tqdm(jobs, desc="Table 4 runs", disable=not progress)]
        return pd.DataFrame([_flat(r, method=r["label"]) for r in rows])

    def grid_runs(self, progress: bool = True):
        import pandas as pd
        from tqdm.auto import tqdm

        jobs = [("N", n, dict(n_splits=n)) for n in self.P.n_grid] + \
               [("Fmax", f, dict(fmax=float(f))) for f in self.P.fmax_grid]
        jobs = [(axis, value, changes, s) for axis, value, changes in jobs for s in self.P.grid_seeds]
        rows = []
        for axis, value, changes, seed in tqdm(jobs, desc="Figure 2 runs", disable=not progress):
            record = self.run("HbAT", self.method_params("HbAT", **changes), seed)
            rows.append(_flat(record, axis=axis, value=value))
        dpo = [self.run("DPO", self.method_params("DPO"), s) for s in self.P.grid_seeds]
        rows += [_flat(r, axis="DPO", value=math.nan) for r in dpo]
        return pd.DataFrame(rows)

    def clean(self) -> int:
        return 0 if self.P.keep_weights else clean_store(self.store)


def _digest(obj) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(record: dict, **extra) -> dict:
    keep = ("seed", "n_splits", "constraint", "fmax", "lam", "quality", "reward", "win_rate", "win_low", "win_high",
            "n", "train_seconds", "selected_stage", "n_stages", "key")
    return {**extra, **{k: record.get(k) for k in keep}}


# -- tables ---------------------------------------------------------------------------------------


def seed_summary(runs, by: Sequence[str], metrics: Sequence[str] = METRICS + ("train_seconds",)):
    """Mean, sd and 95% t-interval over seeds of each metric, per group."""
    import pandas as pd

    out = []
    for key, group in runs.groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key), seeds=len(group))
        for m in metrics:
            row[m], row[f"{m}_sd"], row[f"{m}_low"], row[f"{m}_high"] = _t_interval(group[m])
        out.append(row)
    return pd.DataFrame(out)


def paper_table4():
    """The paper's Table 4 (dialogue validation, LLaMA2-7B, DPO), with HbAT-Freeze from Table 1 (test set)."""
    import pandas as pd

    from mfnb import reference

    t4 = reference.load("hbat_table4").assign(source="Table 4 (validation)")
    t1 = reference.load("hbat_table1")
    freeze = t1[(t1.base == "LLaMA2-7B") & (t1.hpa == "DPO") & (t1.method == "HbAT-Freeze")]
    freeze = pd.DataFrame({"method": ["HbAT-Freeze"], "pandalm": freeze.dial_pandalm.to_list(),
                           "reward": freeze.dial_reward.to_list(), "gpt4_win": freeze.dial_gpt4_win.to_list(),
                           "source": ["Table 1 (test)"]})
    return pd.concat([t4, freeze], ignore_index=True)


def table4_with_paper(summary):
    """Our means and intervals with the paper's numbers beside them (labelled ``paper_*``)."""
    paper = paper_table4()
    paper = paper.assign(method=paper["method"].map({v: k for k, v in PAPER_NAMES.items()}).fillna(paper["method"]))
    paper = paper.rename(columns={c: f"paper_{c}" for c in ("pandalm", "reward", "gpt4_win", "source")})
    cols = ["method", "seeds"] + [c for m in METRICS for c in (m, f"{m}_low", f"{m}_high")] + ["train_seconds"]
    return summary[cols].merge(paper, on="method", how="left")


def _paper_claims():
    """(method a, method b, paper column, a's value, b's value, source) for every paper ordering we test:
    all pairs of Table 4, and HbAT-Freeze against HbAT and DPO within Table 1 (LLaMA2-7B, DPO, dialogue)."""
    import itertools

    from mfnb import reference

    claims = []
    t4 = reference.load("hbat_table4")
    t4["method"] = t4["method"].map({v: k for k, v in PAPER_NAMES.items()}).fillna(t4["method"])
    t4 = t4.set_index("method")
    for a, b in itertools.combinations(t4.index, 2):
        for col in PAPER_COLUMNS.values():
            claims.append((a, b, col, t4.loc[a, col], t4.loc[b, col], "Table 4"))
    t1 = reference.load("hbat_table1")
    t1 = t1[(t1.base == "LLaMA2-7B") & ((t1.hpa == "DPO") | (t1.method == "SFT"))].set_index("method")
    for other in ("HbAT", "DPO"):
        for col in PAPER_COLUMNS.values():
            claims.append(("HbAT-Freeze", other, col, t1.loc["HbAT-Freeze", f"dial_{col}"],
                           t1.loc[other, f"dial_{col}"], "Table 1"))
    return claims


def orderings(runs, metrics: Sequence[str] = METRICS):
    """Every pairwise ordering of the paper's Table 4 (and HbAT-Freeze vs HbAT / DPO within Table 1), with
    ours beside it: ``reproduced`` when our mean difference has the paper's sign, ``resolved`` when the
    95% t-interval of the per-seed (paired) difference excludes zero."""
    import pandas as pd

    ours = runs.pivot_table(index="seed", columns="method", values=list(metrics))
    present = set(runs["method"])
    column_metric = {v: k for k, v in PAPER_COLUMNS.items()}
    rows = []
    for a, b, col, pa, pb, source in _paper_claims():
        m = column_metric[col]
        if m not in metrics or a not in present or b not in present or pa == pb:
            continue
        better, worse = (a, b) if pa > pb else (b, a)
        diff = (ours[(m, better)] - ours[(m, worse)]).dropna()
        mean, _, low, high = _t_interval(diff)
        rows.append({"metric": m, "paper_metric": col, "source": source, "paper_says": f"{better} > {worse}",
                     "paper_gap": abs(pa - pb), "our_gap": mean, "our_low": low, "our_high": high,
                     "seeds": len(diff), "ours": "same order" if mean > 0 else "tie" if mean == 0 else "opposite",
                     "reproduced": bool(mean > 0),
                     "resolved": bool(low > 0 or high < 0) if not math.isnan(low) else False})
    return pd.DataFrame(rows).sort_values(["metric", "source"], kind="stable", ignore_index=True)


def ordering_statement(table) -> str:
    """A plain-text verdict computed from :func:`orderings`."""
    lines = []
    n, k = len(table), int(table["reproduced"].sum())
    firm = table[table["reproduced"] & table["resolved"]]
    against = table[~table["reproduced"] & table["resolved"]]
    ties = int((table["ours"] == "tie").sum())
    lines.append(f"Of the paper's {n} pairwise orderings (over 3 scores), our mean differences agree with {k}"
                 f"{f' ({ties} are exact ties in ours)' if ties else ''}; {len(firm)} of the agreeing ones are resolved "
                 f"beyond seed noise (95% t-interval of the paired difference excludes 0), and {len(against)} orderings "
                 f"are resolved in the opposite direction.")
    for metric, group in table.groupby("metric", sort=False):
        ok = ", ".join(group[group.reproduced].paper_says) or "none"
        bad = ", ".join(group[~group.reproduced].paper_says) or "none"
        lines.append(f"- {metric} (paper: {group.paper_metric.iloc[0]}): reproduced: {ok}; not reproduced: {bad}.")
    return "\n".join(lines)


# -- figures --------------------------------------------------------------------------------------


def plot_figure2(grid, metrics: Sequence[str] = METRICS):
    """Figure 2: HbAT's scores against N and Fmax (mean and 95% interval over seeds), DPO dashed."""
    import matplotlib.pyplot as plt

    summary = seed_summary(grid, by=["axis", "value"], metrics=metrics)
    dpo = summary[summary["axis"] == "DPO"]
    fig, axes = plt.subplots(2, len(metrics), figsize=(4 * len(metrics), 6.5), squeeze=False)
    for row, axis in enumerate(("N", "Fmax")):
        sub = summary[summary["axis"] == axis].sort_values("value")
        for col, m in enumerate(metrics):
            ax = axes[row][col]
            yerr = None
            if sub[f"{m}_low"].notna().any():
                yerr = [sub[m] - sub[f"{m}_low"], sub[f"{m}_high"] - sub[m]]
            ax.errorbar(sub["value"], sub[m], yerr=yerr, marker="o", capsize=3, label="HbAT")
            if len(dpo):
                ax.axhline(float(dpo[m].iloc[0]), color="grey", ls="--", label="DPO (two-stage)")
            ax.set_xlabel(axis if axis == "N" else "$F_{max}$")
            ax.set_ylabel(m)
            if row == 0 and col == 0:
                ax.legend(fontsize="small")
    fig.suptitle("HbAT vs number of splits N (top, Fmax fixed) and Fmax (bottom, N fixed); tiny world")
    fig.tight_layout()
    return fig


def plot_tradeoff(summary, ax=None):
    """Quality (instruction following) against reward (preference) per method, with 95% intervals."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4.5))
    for _, r in summary.iterrows():
        xerr = None if math.isnan(r["reward_low"]) else [[r["reward"] - r["reward_low"]], [r["reward_high"] - r["reward"]]]
        yerr = None if math.isnan(r["quality_low"]) else [[r["quality"] - r["quality_low"]], [r["quality_high"] - r["quality"]]]
        ax.errorbar([r["reward"]], [r["quality"]], xerr=xerr, yerr=yerr, marker="o", capsize=3, label=r["method"])
    ax.set_xlabel("preference reward (style rate)")
    ax.set_ylabel("instruction-following quality")
    ax.set_title("Table 4 methods: the two objectives")
    ax.legend(fontsize="small")
    return ax.figure


# -- Table 7: training time and peak memory, each method in a fresh process -----------------------


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
                                "peak_rss_mb": peak / 2**20, "extra_rss_mb": max(peak - baseline, 0) / 2**20,
                                "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                                "stages": len(run.stages), "stage_seconds": [round(x.train_seconds, 3) for x in run.stages]}))


def measure_efficiency(params: HbatNotebookParams, methods: Sequence[str] = ("DPO", "HbAT"), repeats: int = 1,
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
                code = "import sys; from mfnb.hbat_ablations import _cost_worker; _cost_worker(sys.argv[1])"
                proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=timeout)
                line = next((l for l in proc.stdout.splitlines() if l.startswith("COST ")), None)
                if proc.returncode != 0 or line is None:
                    raise RuntimeError(f"efficiency run of {method} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
                rows.append({"repeat": r, **json.loads(line[5:])})
    return pd.DataFrame(rows)


def efficiency_table(costs, baseline: str = "DPO"):
    """Median seconds and peak memory per method, relative to ``baseline``, beside the paper's Table 7."""

    from mfnb import reference

    med = costs.groupby("method", sort=False)[["train_seconds", "peak_rss_mb", "extra_rss_mb"]].median()
    base = med.loc[baseline]
    out = med.assign(relative_time=med["train_seconds"] / base["train_seconds"],
                     relative_peak_rss=med["peak_rss_mb"] / base["peak_rss_mb"],
                     runs=costs.groupby("method", sort=False).size()).reset_index()
    paper = reference.load("hbat_table7").rename(columns={"relative_time": "paper_relative_time",
                                                          "memory_gb": "paper_memory_gb", "gpt4_win": "paper_gpt4_win"})
    paper["paper_relative_memory"] = paper["paper_memory_gb"] / float(paper.loc[paper.method == "DPO", "paper_memory_gb"].iloc[0])
    return out.merge(paper, on="method", how="left")


# -- notebook helpers: departures, the conflict check, Figure 2 and importance read-outs -----------


def departures(params: HbatNotebookParams):
    """Each training setting: the paper's value (HbatParams defaults, App. A) beside ours."""
    import pandas as pd

    paper, ours = HbatParams().model_dump(), params.hbat.model_dump()

    def get(d, path):
        for part in path.split("."):
            d = d[part]
        return d

    rows = []
    for path in ("n_splits", "sft.lr", "sft.batch_size", "sft.epochs", "dpo.lr", "dpo.batch_size", "dpo.epochs",
                 "dpo.beta", "ewc.lam", "ewc.fmax", "ewc.reduce", "ewc.change_scale", "ewc.lam_placement",
                 "ewc.accumulate", "ewc.freeze_fraction", "select_by"):
        rows.append({"setting": path, "paper": get(paper, path), "ours": get(ours, path)})
    rows.append({"setting": "sampling (temperature, top_p)", "paper": (0.75, 0.95),
                 "ours": (params.sampling.temperature, params.sampling.top_p)})
    rows.append({"setting": "fine-tuning", "paper": "full", "ours": "full" if params.lora is None else "LoRA"})
    frame = pd.DataFrame(rows)
    frame["differs"] = [str(a) != str(b) for a, b in zip(frame["paper"], frame["ours"])]
    return frame.astype({"paper": str, "ours": str})


def conflict_check(runs) -> tuple[dict, str]:
    """Does two-stage SFT -> DPO lose instruction quality relative to SFT? Paired over seeds."""
    wide = runs.pivot_table(index="seed", columns="method", values=["quality", "reward"])
    out = {}
    for metric in ("quality", "reward"):
        diff = (wide[(metric, "DPO")] - wide[(metric, "SFT")]).dropna()
        out[metric] = dict(zip(("mean", "sd", "low", "high"), _t_interval(diff)), seeds=len(diff))
    q, r = out["quality"], out["reward"]
    exists = q["mean"] < 0 and r["mean"] > 0
    firm = exists and not math.isnan(q["high"]) and q["high"] < 0
    text = (f"Two-stage SFT -> DPO changes instruction-following quality by {q['mean']:+.3f} "
            f"(95% t-interval {q['low']:+.3f} .. {q['high']:+.3f} over {q['seeds']} seeds) and the preference "
            f"reward by {r['mean']:+.3f} relative to SFT alone: "
            + ("the alignment tax is there" + (" and resolved beyond seed noise." if firm else ", but not resolved beyond seed noise.")
               if exists else "no alignment tax in this setting (DPO does not lose quality while gaining reward)."))
    return out, text


def figure2_statement(grid) -> str:
    """Best N and Fmax per score, read off our runs, next to the paper's Figure 2 claims."""
    summary = seed_summary(grid[grid["axis"] != "DPO"], by=["axis", "value"], metrics=METRICS)
    lines = []
    for axis in ("N", "Fmax"):
        sub = summary[summary["axis"] == axis]
        if sub.empty:
            continue
        best = {m: sub.loc[sub[m].idxmax(), "value"] for m in METRICS}
        lines.append(f"- {axis}: best by quality {best['quality']:g}, by reward {best['reward']:g}, "
                     f"by win rate {best['win_rate']:g} (values tried: {', '.join(f'{v:g}' for v in sorted(sub['value']))}).")
    n = summary[summary["axis"] == "N"].set_index("value")
    if len(n) >= 2:
        top = n.index.max()
        worse = [m for m in METRICS if n.loc[top, m] < n[m].max()]
        lines.append(f"- Paper: 'excessive dataset splits can hurt'. Ours: the largest N ({top:g}) is below the best N on "
                     f"{', '.join(worse) if worse else 'no score'}.")
    f = summary[summary["axis"] == "Fmax"].set_index("value")
    if len(f):
        lines.append(f"- Paper: the optimal Fmax is 50 (dialogue). Ours: the best Fmax by win rate is "
                     f"{f['win_rate'].idxmax():g}.")
    return "\n".join(lines)


def importance_table(record: dict, ewc, stage: int = 0):
    """F per tensor from one stored stage's changes, under our settings and the released-code variant."""
    import pandas as pd

    from mfnb.hbat import EWCParams, importance_from_changes

    sums = next(c["sums"] for c in record["change_sums"] if c["stage"] == stage)
    released = EWCParams.released_code(fmax=ewc.fmax, lam=ewc.lam)
    frame = pd.DataFrame({"tensor": list(sums), "C_mean": [s / n for s, n in sums.values()],
                          "C_sum": [s for s, _ in sums.values()], "numel": [n for _, n in sums.values()]})
    for label, variant in (("F_ours", ewc), ("F_released_code", released)):
        changes = dict(zip(frame["tensor"], frame["C_mean"] if variant.reduce == "mean" else frame["C_sum"]))
        imp = importance_from_changes(changes, variant.fmax, variant.change_scale)
        frame[label] = frame["tensor"].map(imp)
    return frame.sort_values("C_mean", ascending=False, ignore_index=True)


def effective_tensors(weights) -> float:
    """exp(entropy) of the normalised importances: how many tensors the penalty effectively covers."""
    import numpy as np

    p = np.asarray(list(weights), dtype=float)
    p = p[p > 0] / p.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def samples_table(records: Sequence[dict], n: int = 6):
    """The first test prompts with each method's response (seed of the records given)."""
    import pandas as pd

    table = {}
    for r in records:
        for i, (prompt, response) in enumerate(r.get("samples", [])[:n]):
            table.setdefault(i, {"prompt": prompt, "reference": tasks.parse_prompt(prompt).answer()})[r["label"]] = response
    return pd.DataFrame(list(table.values()))
