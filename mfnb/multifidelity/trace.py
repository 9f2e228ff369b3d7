"""One trace of the multi-fidelity paper's Tables 2-4: Algorithm 2, vanilla(m) at the budget Algorithm 2
spent through fidelity m, the experts' own gaps on validation, and the test-set comparison of Table 4.

Test responses are generated once per run folder and sampling (cached beside the runs); every judgement
and response is charged to the trace's ledger.
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
from mfnb.atomic import write_json
from mfnb.models import SamplingParams
from mfnb.multifidelity.algorithm import run_multifidelity, run_vanilla
from mfnb.multifidelity.backend import Backend, Prompts
from mfnb.multifidelity.judging import counts, judge_pairs, win_freq
from mfnb.multifidelity.ledger import ledger_frame, ledger_row
from mfnb.multifidelity.params import RunConfig
from mfnb.multifidelity.store import RunResult, RunStore, derive_seed


@dataclass
class TraceResult:
    label: str
    batch_size: int
    trace: int
    config: RunConfig
    folder: Path
    mf: RunResult
    vanilla: dict[int, RunResult]
    test: pd.DataFrame
    expert_pairs: pd.DataFrame
    extra_ledger: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings_extra: dict[str, float] = field(default_factory=dict)

    @property
    def ledger(self) -> pd.DataFrame:
        parts = [self.mf.ledger] + [v.ledger for v in self.vanilla.values()] + [ledger_frame(self.extra_ledger)]
        out = pd.concat([p for p in parts if len(p)], ignore_index=True)
        return out.assign(label=self.label, batch_size=self.batch_size, trace=self.trace)

    @property
    def timings(self) -> dict[str, float]:
        total: dict[str, float] = dict(self.timings_extra)
        for run in [self.mf, *self.vanilla.values()]:
            for k, v in run.timings.items():
                total[k] = total.get(k, 0.0) + v
        return total


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


def run_trace(config: RunConfig, backend: Backend, judge, prompts: Prompts, root: str | Path, *,
              vanilla_fidelities: Sequence[int] = (), n_test: int = 500, test_sampling: SamplingParams | None = None,
              label: str | None = None, trace: int = 1, progress: bool = True) -> TraceResult:
    """One trace of Tables 2-3 plus its Table 4 row: Algorithm 2, vanilla(m) at the budget the
    multi-fidelity run spent through fidelity m, and test-set WinFreq of the multi-fidelity model at
    the end of fidelity m (the chosen best for m = M) against vanilla(m)'s best model."""
    folder = trace_folder(root, config, judge, backend)
    label = label or f"B={config.batch_size} trace {trace}"
    mf = run_multifidelity(config, backend, judge, prompts, folder, progress=progress)
    vanilla, notes = {}, []
    for m in vanilla_fidelities:
        if str(m) not in mf.state["exits"]:
            notes.append(f"vanilla(m={m}) skipped: the multi-fidelity run ended before finishing fidelity {m}")
            continue
        budget = mf.expert_cost(through_fidelity=m)
        if budget < config.fidelities[m - 1].cost:
            notes.append(f"vanilla(m={m}) skipped: the multi-fidelity run spent Lambda = {budget:g} through "
                         f"fidelity {m}, less than one g^({m}) response")
            continue
        vanilla[m] = run_vanilla(config, m, budget, backend, judge, prompts, folder, progress=progress)

    extra: list[dict] = []
    timings: dict[str, float] = {}
    start = time.perf_counter()
    expert_pairs = _expert_pairs(config, backend, judge, prompts, folder, mf, extra)
    timings["analysis"] = time.perf_counter() - start
    start = time.perf_counter()
    test = _test_comparisons(config, backend, judge, prompts, folder, mf, vanilla, n_test,
                             test_sampling or config.sampling, extra)
    timings["test"] = time.perf_counter() - start
    test = test.assign(label=label, batch_size=config.batch_size, trace=trace) if len(test) else test
    return TraceResult(label, config.batch_size, trace, config, folder, mf, vanilla, test, expert_pairs,
                       extra, notes, timings)


def _expert_pairs(config, backend, judge, prompts, folder, mf: RunResult, ledger: list[dict]) -> pd.DataFrame:
    """WinRate(g^(m), g^(m')) on the validation prompts for every m > m' >= 0 (g^(0): the initial
    student), from the responses the run already has (Theorem 5's gaps and Assumption 3's beta)."""
    shared = RunStore(folder / "shared")
    responses = {0: RunStore(mf.folder).read_journal("validation_t0000")["responses"]}
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
                         "radius": float(stats.hoeffding_radius(n, config.delta)) if n else math.nan})
    return pd.DataFrame(rows)


def _test_comparisons(config, backend, judge, prompts, folder, mf: RunResult, vanilla: dict[int, RunResult],
                      n_test: int, sampling: SamplingParams, ledger: list[dict]) -> pd.DataFrame:
    """Table 4: test WinFreq of the multi-fidelity candidate against vanilla(m)'s best, and of both
    against the top expert.  Test responses are generated once (cached in ``folder/test``)."""
    if not vanilla:
        return pd.DataFrame()
    if len(prompts.test) < n_test:
        raise ValueError(f"parameter 'n_test': {n_test} > {len(prompts.test)} test prompts available")
    test = list(prompts.test[:n_test])
    top = config.fidelities[-1]
    seed = derive_seed(config.seed, "test")
    store = folder / "test" / hashlib.sha256(sampling.model_dump_json().encode()).hexdigest()[:8]

    def model_responses(run: RunResult, t: int) -> list[str]:
        def make():
            backend.load_policy(run.adapter(t))
            return backend.generate_student(test, seed, sampling)
        return _cached_responses(store / f"{run.name}_t{t:04d}_n{n_test}.json", make)

    top_responses = _cached_responses(store / f"expert_{top.role}_n{n_test}.json",
                                      lambda: backend.generate_expert(top.role, test, seed, sampling))
    ledger.append(ledger_row("test", 0, "test", len(config.fidelities), "expert", top.role, n_test, top.cost))
    charged: set[tuple[str, int]] = set()

    def charge(run: RunResult, t: int):
        if (run.name, t) not in charged:
            charged.add((run.name, t))
            ledger.append(ledger_row("test", t, "test", None, "student", config.student, n_test, config.student_cost))

    def judged(a, b):
        outcomes, asked = judge_pairs(judge, test, a, b, config.judge_retries)
        ledger.append(ledger_row("test", 0, "test", None, "judge", "judge", asked, config.judge_cost))
        c = counts(outcomes)
        n = c["wins"] + c["ties"] + c["losses"]
        r = float(stats.hoeffding_radius(n, config.delta)) if n else math.nan
        w = win_freq(c)
        return {**c, "n": n, "win_rate": w, "radius": r, "low": max(0.0, w - r), "high": min(1.0, w + r)}

    rows = []
    for m, van in vanilla.items():
        if van.best is None:
            continue
        mf_t = mf.exits[m]["t"]
        van_t = van.best["t"]
        a, b = model_responses(mf, mf_t), model_responses(van, van_t)
        charge(mf, mf_t)
        charge(van, van_t)
        row = {"baseline": f"vanilla(m={m})", "candidate": mf.candidate_name(mf_t), "candidate_t": mf_t,
               "baseline_candidate": van.candidate_name(van_t), "baseline_t": van_t,
               "candidate_Lambda": mf.expert_cost(through_fidelity=m), "baseline_Lambda": van.expert_cost(),
               **judged(a, b)}
        row["verdict"] = ("multi-fidelity better" if row["low"] > 0.5 else "vanilla better" if row["high"] < 0.5
                          else "not resolved (interval contains 0.5)")
        vs_top_mf, vs_top_van = judged(a, top_responses), judged(b, top_responses)
        row.update({"candidate_vs_top": vs_top_mf["win_rate"], "baseline_vs_top": vs_top_van["win_rate"],
                    "vs_top_radius": vs_top_mf["radius"]})
        rows.append(row)
    return pd.DataFrame(rows)
