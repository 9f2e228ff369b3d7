"""One trace of the multi-fidelity paper's Tables 2-4: Algorithm 2, the baselines at equal expert budget, the
experts' own gaps on validation, and the test-set comparisons.

Baselines (``baselines`` parameter; each a run of the same machine with its own folder and ledger):

* ``vanilla-mk`` (the paper's vanilla(m = k)): DPO against g^(k) only.  For k >= 2 its budget is what the multi-fidelity run spent through
  fidelity k and it is compared with the multi-fidelity model at the end of fidelity k (the paper's Table 4);
  ``vanilla-m1`` gets the full budget (through fidelity 1 it would be step 1 itself).
* ``sft``: SFT on exactly the expert responses the multi-fidelity run bought (same data, same Lambda).
* ``fixed_ladder``: the same fidelities with a fixed number of iterations at each, the rest of the budget at the
  top (no gamma rule): does the adaptive rule itself matter?

Full-budget baselines are compared with the model Algorithm 2 chose.  Test responses are generated once per
model (cached beside the runs); the top expert's test responses once per sampling for all traces (so every
seed is judged on the same prompts *and* the same reference answers).  Every judgement and response is
charged to the trace's ledger (the oracle judge is free, its ledger column is not).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from mfnb import stats
from mfnb.core.atomic import write_json
from mfnb.models import SamplingParams
from mfnb.multifidelity.algorithm import run_fixed_ladder, run_multifidelity, run_sft_replay, run_vanilla
from mfnb.multifidelity.backend import Backend, Prompts
from mfnb.multifidelity.config import RunConfig, baseline_names, vanilla_fidelity, vanilla_name
from mfnb.multifidelity.judging import counts, judge_pairs, win_freq
from mfnb.multifidelity.ledger import ledger_frame, ledger_row, paper_lambda
from mfnb.multifidelity.store import INITIAL_VALIDATION, RunResult, RunStore, derive_seed


@dataclass
class TraceResult:
    label: str
    batch_size: int
    trace: int
    config: RunConfig
    folder: Path
    mf: RunResult
    baselines: dict[str, RunResult]
    test: pd.DataFrame                 # one row per comparison: the multi-fidelity model vs a baseline
    outcomes: pd.DataFrame             # per test prompt, for intervals over seeds and prompts
    vs_top: pd.DataFrame               # test win rate against the top expert of every mf iterate and baseline
    expert_pairs: pd.DataFrame
    extra_ledger: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings_extra: dict[str, float] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def vanilla(self) -> dict[int, RunResult]:
        """The vanilla baselines by fidelity (the paper's vanilla(m))."""
        return {vanilla_fidelity(name): run for name, run in self.baselines.items() if vanilla_fidelity(name)}

    @property
    def runs(self) -> list[RunResult]:
        return [self.mf, *self.baselines.values()]

    @property
    def ledger(self) -> pd.DataFrame:
        parts = [run.ledger for run in self.runs] + [ledger_frame(self.extra_ledger)]
        out = pd.concat([p for p in parts if len(p)], ignore_index=True)
        return out.assign(label=self.label, batch_size=self.batch_size, trace=self.trace)

    @property
    def timings(self) -> dict[str, float]:
        total: dict[str, float] = dict(self.timings_extra)
        for run in self.runs:
            for k, v in run.timings.items():
                total[k] = total.get(k, 0.0) + v
        return total

    @property
    def skipped_fidelities(self) -> list[int]:
        """Fidelities the multi-fidelity run entered but never trained at (D^(m) empty: the entry look already
        ended the fidelity)."""
        h = self.mf.history
        return [int(m) for m in sorted(h["fidelity"].unique()) if not (h[h["fidelity"] == m]["kind"] == "train").any()]


def trace_folder(root: str | Path, config: RunConfig, judge, backend=None) -> Path:
    """``<root>/B<B>-seed<seed>-<hash>``: the hash covers every parameter, the models (backend key) and
    the judge identity, so changed parameters never resume someone else's run."""
    ident = json.dumps({"config": config.model_dump(), "judge": getattr(judge, "identity", lambda: {})(),
                        "backend": getattr(backend, "key", type(backend).__name__)}, sort_keys=True, default=str)
    return Path(root) / f"B{config.batch_size}-seed{config.seed}-{hashlib.sha256(ident.encode()).hexdigest()[:10]}"


def _cached_responses(path: Path, make) -> list[str]:
    if path.is_file():
        return json.loads(path.read_text())["responses"]
    responses = make()
    write_json(path, {"responses": responses})
    return responses


def baseline_budget(name: str, mf: RunResult) -> tuple[float, int | None]:
    """(Lambda, fidelity m whose end the multi-fidelity model is compared at, None for the chosen model)."""
    M = len(mf.config.fidelities)
    m = vanilla_fidelity(name)
    if m is not None:
        if 1 < m < M:
            return mf.expert_cost(through_fidelity=m), m
    return mf.expert_cost(), None


def mf_candidate(mf: RunResult, at_fidelity: int | None) -> int | None:
    """The multi-fidelity model a baseline is compared with: at the end of ``at_fidelity``, or the chosen one."""
    exits = mf.exits
    if at_fidelity is not None:
        return exits[at_fidelity]["t"] if at_fidelity in exits else None
    if mf.best is not None:
        return mf.best["t"]
    return exits[max(exits)]["t"] if exits else None


def run_baseline(name: str, config: RunConfig, mf: RunResult, backend: Backend, judge, prompts: Prompts,
                 folder: Path, *, ladder_iterations: Sequence[int] | None = None, progress: bool = True):
    """One baseline run at the multi-fidelity run's budget; (RunResult or None, note)."""
    budget, m_end = baseline_budget(name, mf)
    if m_end is not None and m_end not in mf.exits:
        return None, f"{name} skipped: the multi-fidelity run ended before finishing fidelity {m_end}"
    m = vanilla_fidelity(name)
    if m is not None:
        if budget < config.fidelities[m - 1].cost:
            return None, (f"{name} skipped: the multi-fidelity run spent Lambda = {budget:g}, less than one "
                          f"g^({m}) response")
        return run_vanilla(config, m, budget, backend, judge, prompts, folder, progress=progress), None
    if name == "sft":
        if not mf.state["iterations"]:
            return None, "sft skipped: the multi-fidelity run bought nothing"
        return run_sft_replay(config, mf, backend, judge, prompts, folder, progress=progress), None
    if name == "fixed_ladder":
        if ladder_iterations is None:
            raise ValueError("fixed_ladder needs its iterations per fidelity (ladder_iterations)")
        if budget <= 0:
            return None, "fixed_ladder skipped: the multi-fidelity run bought nothing"
        return run_fixed_ladder(config, ladder_iterations, budget, backend, judge, prompts, folder,
                                progress=progress), None
    raise ValueError(f"parameter 'baselines': unknown baseline {name!r}; known: "
                     f"{', '.join(baseline_names(len(config.fidelities)))}")


def run_trace(config: RunConfig, backend: Backend, judge, prompts: Prompts, root: str | Path, *,
              baselines: Sequence[str] = (vanilla_name(2), vanilla_name(3)),
              ladder_iterations: Sequence[int] | None = None, n_test: int = 500,
              test_sampling: SamplingParams | None = None, label: str | None = None, trace: int = 1,
              test_iterates: str = "all", progress: bool = True) -> TraceResult:
    """One trace: Algorithm 2, each baseline at its budget, the experts' validation gaps, and the test
    comparisons (multi-fidelity vs each baseline, and every model against the top expert).  ``test_iterates``:
    "all" tests every multi-fidelity iterate against the top expert, "compared" only the initial student,
    those a baseline is compared with, the chosen one, each fidelity's last one and the run's last one
    (:func:`tested_iterates`)."""
    if test_iterates not in TEST_ITERATES:
        raise ValueError(f"parameter 'test_iterates': {test_iterates!r} is not one of {', '.join(TEST_ITERATES)}")
    folder = trace_folder(root, config, judge, backend)
    label = label or f"B={config.batch_size} trace {trace}"
    mf = run_multifidelity(config, backend, judge, prompts, folder, progress=progress)
    runs, notes = {}, []
    for name in baselines:
        run, note = run_baseline(name, config, mf, backend, judge, prompts, folder,
                                 ladder_iterations=ladder_iterations, progress=progress)
        if run is not None:
            runs[name] = run
        if note:
            notes.append(note)

    extra: list[dict] = []
    timings: dict[str, float] = {}
    start = time.perf_counter()
    expert_pairs = _expert_pairs(config, backend, judge, prompts, folder, mf, extra)
    timings["analysis"] = time.perf_counter() - start
    start = time.perf_counter()
    tester = _Tester(config, backend, judge, prompts, folder, Path(root), n_test, test_sampling or config.sampling,
                     extra)
    test, outcomes, vs_top = tester.compare(mf, runs, tested_iterates(mf, runs, test_iterates))
    timings["test"] = time.perf_counter() - start
    # the first computation's timings are kept: a rerun that only re-reads cached responses reports them again
    timings = _recorded(folder / "trace_timings.json", baselines, timings)
    tag = {"label": label, "batch_size": config.batch_size, "trace": trace, "seed": config.seed}
    test, outcomes, vs_top = (f.assign(**tag) if len(f) else f for f in (test, outcomes, vs_top))
    return TraceResult(label, config.batch_size, trace, config, folder, mf, runs, test, outcomes, vs_top,
                       expert_pairs, extra, notes, timings)


TEST_ITERATES = ("all", "compared")


def tested_iterates(mf: RunResult, runs: dict[str, RunResult], which: str = "all") -> list[int]:
    """The multi-fidelity iterates that answer the test prompts: every one, or ("compared") the initial
    student (the baseline of no training at all), the models Table 4 compares with a baseline, the chosen one,
    the last of each fidelity (the points where the ladder steps up) and the run's last model, so the
    spend-to-match curve keeps its shape at a fraction of the sampling."""
    every = sorted({int(x) for x in mf.history["t"]})
    if which == "all":
        return every
    keep = {0, every[-1]} | {int(e["t"]) for e in mf.exits.values()}  # a run cut by a cap has no exit at M
    keep |= {t for t in [mf_candidate(mf, None)] if t is not None}
    for name in runs:
        t = mf_candidate(mf, baseline_budget(name, mf)[1])
        if t is not None:
            keep.add(int(t))
    return [t for t in every if t in keep]


def _recorded(path: Path, baselines: Sequence[str], timings: dict[str, float]) -> dict[str, float]:
    key = ",".join(sorted(baselines))
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if key not in saved:
        saved[key] = timings
        write_json(path, saved)
    return dict(saved[key])


def _expert_pairs(config, backend, judge, prompts, folder, mf: RunResult, ledger: list[dict]) -> pd.DataFrame:
    """WinRate(g^(m), g^(m')) on the validation prompts for every m > m' >= 0 (g^(0): the initial
    student), from the responses the run already has (Theorem 5's gaps and Assumption 3's beta)."""
    shared = RunStore(folder / "shared")
    initial = RunStore(mf.folder).read_journal("validation_t0000") or shared.read_journal(INITIAL_VALIDATION)
    responses = {0: initial["responses"]}
    for m, fid in enumerate(config.fidelities, 1):
        data = shared.read_journal(f"validation_{fid.role}")
        if data is not None:
            responses[m] = data["responses"]
    val = list(prompts.validation[: config.n_validation])
    rows = []
    names = {0: f"{config.student} (initial)", **{m: f.role for m, f in enumerate(config.fidelities, 1)}}
    for hi in sorted(responses):
        for lo in sorted(responses):
            if lo >= hi:
                continue
            outcomes, asked = judge_pairs(judge, val, responses[hi], responses[lo], config.judge_retries)
            judged = counts(outcomes)
            n = judged["wins"] + judged["ties"] + judged["losses"]
            ledger.append(ledger_row("analysis", 0, "analysis", hi, "judge", "judge", asked, config.judge_cost))
            rows.append({"m": hi, "m_prime": lo, "better": names[hi], "worse": names[lo], **judged, "n": n,
                         "win_rate": win_freq(judged),
                         "wins_over_total": float(stats.win_rate_from_counts(judged["wins"], judged["ties"],
                                                                             judged["losses"], "wins_over_total")),
                         "radius": float(stats.hoeffding_radius(n, config.delta)) if n else math.nan})
    return pd.DataFrame(rows)


def run_lambda(run: RunResult, t: int) -> float:
    """Lambda the run had spent when model t existed (its purchases up to iteration t)."""
    return paper_lambda([r for r in run.state["ledger"] if r["t"] <= t and r["phase"] == "train"])


def validation_cost(run: RunResult, n_validation: int, through_fidelity: int | None = None) -> float:
    """What the expert validation responses behind the run's decisions would cost: n_validation responses of
    every expert the run looked at (the multi-fidelity run pays for each fidelity it enters; vanilla(m) needs
    only g^(m)'s).  Monitoring looks (every model against every expert, for the figures) are not counted."""
    fids = [m for m in sorted(set(run.history["fidelity"].astype(int))) if through_fidelity is None or m <= through_fidelity]
    return float(n_validation * sum(run.config.fidelities[m - 1].cost for m in fids))


class _Tester:
    """Test-set responses (generated once per model, cached) and judgements, charged to the ledger."""

    def __init__(self, config, backend, judge, prompts, folder, root, n_test, sampling, ledger):
        if len(prompts.test) < n_test:
            raise ValueError(f"parameter 'n_test': {n_test} > {len(prompts.test)} test prompts available")
        self.config, self.backend, self.judge, self.ledger = config, backend, judge, ledger
        self.prompts = list(prompts.test[:n_test])
        self.n_test, self.sampling = n_test, sampling
        key = hashlib.sha256(sampling.model_dump_json().encode()).hexdigest()[:8]
        self.store = folder / "test" / key
        self.shared = Path(root) / "test-shared" / f"{getattr(backend, 'key', type(backend).__name__)}-{key}"
        self.seed = derive_seed(config.seed, "test")
        self.charged: set[tuple[str, int]] = set()
        top = config.fidelities[-1]
        self.top_role = top.role
        self.top = _cached_responses(self.shared / f"expert_{top.role}_n{n_test}.json",
                                     lambda: backend.generate_expert(top.role, self.prompts,
                                                                     derive_seed(0, "test-expert", top.role), sampling))
        ledger.append(ledger_row("test", 0, "test", len(config.fidelities), "expert", top.role, n_test, top.cost))

    def responses(self, run: RunResult, t: int) -> list[str]:
        def make():
            self.backend.load_policy(run.adapter(t))
            return self.backend.generate_student(self.prompts, self.seed, self.sampling)

        out = _cached_responses(self.store / f"{run.name}_t{t:04d}_n{self.n_test}.json", make)
        if (run.name, t) not in self.charged:
            self.charged.add((run.name, t))
            self.ledger.append(ledger_row("test", t, "test", None, "student", self.config.student, self.n_test,
                                          self.config.student_cost))
        return out

    def judged(self, first: list[str], second: list[str]) -> tuple[list[str], dict]:
        outcomes, asked = judge_pairs(self.judge, self.prompts, first, second, self.config.judge_retries)
        self.ledger.append(ledger_row("test", 0, "test", None, "judge", "judge", asked, self.config.judge_cost))
        c = counts(outcomes)
        row = {**c, "n": c["wins"] + c["ties"] + c["losses"]}
        for conv, prefix in (("half", "win_rate"), ("wins_over_total", "wins_over_total")):
            s = stats.convention_summary(c["wins"], c["ties"], c["losses"], conv, self.config.delta)
            row.update({prefix: s["value"], f"{prefix}_exact_low": s["exact_low"],
                        f"{prefix}_exact_high": s["exact_high"], f"{prefix}_bernstein_low": s["bernstein_low"],
                        f"{prefix}_bernstein_high": s["bernstein_high"]})
        row["radius"] = float(stats.hoeffding_radius(row["n"], self.config.delta)) if row["n"] else math.nan
        return outcomes, row

    def vs_top(self, run: RunResult, t: int, what: str) -> dict:
        _, row = self.judged(self.responses(run, t), self.top)
        return {"run": run.name, "what": what, "t": t, "candidate": run.candidate_name(t),
                "Lambda": run_lambda(run, t), **row}

    def compare(self, mf: RunResult, runs: dict[str, RunResult], iterates: Sequence[int]):
        rows, outcome_rows, top_rows = [], [], []
        skipped = [int(m) for m in sorted(mf.history["fidelity"].unique())
                   if not (mf.history[mf.history["fidelity"] == m]["kind"] == "train").any()]
        for t in iterates:
            top_rows.append(self.vs_top(mf, t, "multi-fidelity iterate"))
        for name, run in runs.items():
            if run.best is None:
                continue
            _, m_end = baseline_budget(name, mf)
            mf_t, base_t = mf_candidate(mf, m_end), run.best["t"]
            if mf_t is None:
                continue
            a, b = self.responses(mf, mf_t), self.responses(run, base_t)
            outcomes, judged = self.judged(a, b)
            upto = [m for m in skipped if m_end is None or m <= m_end]
            row = {"baseline": name, "candidate": mf.candidate_name(mf_t), "candidate_t": mf_t,
                   "baseline_candidate": run.candidate_name(base_t), "baseline_t": base_t,
                   "compared_at": f"end of fidelity {m_end}" if m_end else "chosen model",
                   "candidate_Lambda": mf.expert_cost(through_fidelity=m_end),
                   "baseline_Lambda": run.expert_cost(),
                   "candidate_Lambda_with_validation": mf.expert_cost(through_fidelity=m_end)
                   + validation_cost(mf, self.config.n_validation, m_end),
                   "baseline_Lambda_with_validation": run.expert_cost() + validation_cost(run, self.config.n_validation),
                   "baseline_incremental_batch": run.state["identity"].get("incremental_batch"),
                   "mf_skipped": ", ".join(f"g^({m})" for m in upto),
                   **judged}
            top_rows.append(self.vs_top(run, base_t, f"{name} (chosen)"))
            mf_top = next(r for r in top_rows if r["run"] == "mf" and r["t"] == mf_t)
            row.update(candidate_vs_top=mf_top["win_rate"], baseline_vs_top=top_rows[-1]["win_rate"])
            rows.append(row)
            outcome_rows += [{"baseline": name, "prompt": i, "outcome": o} for i, o in enumerate(outcomes)]
        return pd.DataFrame(rows), pd.DataFrame(outcome_rows), pd.DataFrame(top_rows)
