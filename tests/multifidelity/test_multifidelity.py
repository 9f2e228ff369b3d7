"""Algorithm 2 (mfnb.multifidelity): decision rule, ledger, caps, bad input, judge failures, vanilla budget,
and resume after a crash (injected exceptions with a scripted backend; SIGKILL with the real tiny world)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfnb import multifidelity as mf
from mfnb.core.params import ParamsError
from mfnb.judges import Outcome, PairwiseJudge

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# A scripted world: the policy is one number ("skill"); the judge makes WinFreq exact
# ----------------------------------------------------------------------------------------------

OFFSETS = {"g1": 0.0, "g2": 0.1, "g3": 0.2}
PROMPTS = mf.Prompts(train=[f"x{i:04d}" for i in range(1000)], validation=[f"v{i:03d}" for i in range(100)],
                     test=[f"z{i:03d}" for i in range(100)])


def _u(prompt: str) -> float:
    """Validation prompt v042 -> 0.42 (so WinFreq against g is exactly ceil(100 (skill - offset)) / 100)."""
    return int(prompt[1:]) / 100 if prompt.startswith("v") else (int(prompt[1:]) % 100) / 100


class SkillJudge(PairwiseJudge):
    """The student's response "skill=s" beats expert g's response on prompt p iff u(p) < s - offset(g).
    ``fail_once`` prompts fail on their first judgement, ``always_fail`` prompts always fail."""

    def __init__(self, fail_once=(), always_fail=(), **kw):
        super().__init__(**kw)
        self.fail_once, self.always_fail = set(fail_once), set(always_fail)
        self.seen: dict[str, int] = {}

    def _params(self):
        return {"kind": "skill"}

    def _score(self, prompt, response):
        if response.startswith("skill="):
            return float(response.split("=")[1])
        return OFFSETS[response.split("=")[1]] + _u(prompt) + 1e-9

    def _judge_presented(self, batch):
        out = []
        for prompt, a, b in batch:
            self.seen[prompt] = self.seen.get(prompt, 0) + 1
            if prompt in self.always_fail or (prompt in self.fail_once and self.seen[prompt] == 1):
                out.append(Outcome.FAILED)
                continue
            sa, sb = self._score(prompt, a), self._score(prompt, b)
            out.append(Outcome.WIN if sa > sb else Outcome.LOSE if sa < sb else Outcome.TIE)
        self._count_calls(len(batch))
        return out


class ScriptedBackend:
    """update k sets the skill to ``schedule[k]`` (the policy state is (skill, updates), saved as JSON).
    ``crash_at`` = (method, call number) raises once there, to simulate a crash inside an iteration."""

    roles = ["student", "g1", "g2", "g3"]

    def __init__(self, schedule, start=0.2, crash_at=None):
        self.schedule, self.start = list(schedule), start
        self.skill, self.updates = start, 0
        self.crash_at = crash_at
        self.calls: dict[str, int] = {}
        self.expert_train_calls = 0  # expert responses bought for training (train prompts start with "x")

    def _tick(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.crash_at == (name, self.calls[name]):
            raise RuntimeError(f"injected crash in {name} call {self.calls[name]}")

    def reset_policy(self, seed, lora):
        self.skill, self.updates = self.start, 0

    def save_policy(self, path):
        self._tick("save_policy")
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "policy.json").write_text(json.dumps({"skill": self.skill, "updates": self.updates}))

    def load_policy(self, path):
        state = json.loads((Path(path) / "policy.json").read_text())
        self.skill, self.updates = state["skill"], state["updates"]

    def policy_vector(self, path=None):
        if path is not None:
            return np.array([json.loads((Path(path) / "policy.json").read_text())["skill"]])
        return np.array([self.skill])

    def generate_student(self, prompts, seed, sampling):
        self._tick("generate_student")
        return [f"skill={self.skill:.6f}"] * len(prompts)

    def generate_expert(self, role, prompts, seed, sampling):
        self._tick("generate_expert")
        if prompts[0].startswith("x"):
            self.expert_train_calls += len(prompts)
        return [f"expert={role}"] * len(prompts)

    def update(self, prompts, chosen, rejected, seed, dpo):
        self._tick("update")
        self.skill = self.schedule[min(self.updates, len(self.schedule) - 1)]
        self.updates += 1
        return {"train_loss": 0.5}

    def sft_update(self, prompts, completions, seed, sft):
        self._tick("sft_update")
        self.sft_rows = getattr(self, "sft_rows", []) + [(len(prompts), sorted(set(completions)))]
        self.skill = self.schedule[min(self.updates, len(self.schedule) - 1)]
        self.updates += 1
        return {"train_loss": 0.4}


def config(**kw):
    base = dict(fidelities=[{"role": "g1", "cost": 1.0}, {"role": "g2", "cost": 4.0}, {"role": "g3", "cost": 16.0}],
                batch_size=10, seed=3, n_validation=100, judge_cost=0.5, student_cost=1.0)
    base.update(kw)
    return mf.RunConfig.validate_mapping(base)


def run_mf(tmp_path, schedule, judge=None, **kw):
    backend = ScriptedBackend(schedule)
    return mf.run_multifidelity(config(**kw), backend, judge or SkillJudge(), PROMPTS, tmp_path, progress=False), backend


# ----------------------------------------------------------------------------------------------
# The decision rule
# ----------------------------------------------------------------------------------------------

def test_decide_rule():
    d = dict(gamma=0.3, epsilon=1e-3, cap_here=None, iters_here=1)
    assert mf.decide(0.301, prev=None, final=False, delta_norm=None, **d) == ("upgrade", "passed gamma")
    assert mf.decide(0.299, prev=None, final=False, delta_norm=None, **d)[0] == "continue"
    assert mf.decide(0.35, prev=0.1, final=True, delta_norm=1.0, **d) == ("stop", "passed gamma")
    assert mf.decide(0.20, prev=0.25, final=True, delta_norm=1.0, **d) == ("stop", "declined")
    assert mf.decide(0.20, prev=0.25, final=False, delta_norm=1.0, **d)[0] == "continue"  # declines only matter at M
    assert mf.decide(0.20, prev=0.2, final=True, delta_norm=1.0, **d)[0] == "continue"   # equal is not a decline
    assert mf.decide(0.20, prev=0.1, final=False, delta_norm=1e-4, **d)[0:1] == ("upgrade",)
    assert "converged" in mf.decide(0.20, prev=0.1, final=True, delta_norm=1e-3, **d)[1]  # <= epsilon
    assert mf.decide(0.2, prev=None, final=False, delta_norm=None, **{**d, "cap_here": 1})[1].startswith("iteration cap")


def test_gamma_rule_at_exactly_gamma():
    """The paper says "exceeds": a win rate of exactly gamma does not end the fidelity; ``at_least`` does."""
    d = dict(prev=None, final=False, delta_norm=None, epsilon=1e-3, iters_here=1, cap_here=None)
    assert mf.decide(0.3, gamma=0.3, **d) == ("continue", "below gamma")
    assert mf.decide(0.3, gamma=0.3, gamma_rule="exceeds", **d) == ("continue", "below gamma")
    assert mf.decide(0.3, gamma=0.3, gamma_rule="at_least", **d) == ("upgrade", "passed gamma")
    assert mf.passes_gamma(0.3000001, 0.3) and not mf.passes_gamma(0.3, 0.3)
    with pytest.raises(ValueError, match="parameter 'gamma_rule': unknown rule 'above'"):
        mf.passes_gamma(0.5, 0.3, "above")


def test_gamma_rule_in_a_run(tmp_path):
    # skill 0.30 vs g1 is exactly gamma (30 of 100 validation prompts won, no ties)
    strict, _ = run_mf(tmp_path / "strict", [0.30, 0.31, 0.45], max_iters_per_fidelity=3)
    h = strict.history
    assert list(h["value"].round(2)[:3]) == [0.20, 0.30, 0.31]
    assert list(h["action"][:3]) == ["continue", "continue", "upgrade"]
    loose, _ = run_mf(tmp_path / "loose", [0.30, 0.31, 0.45], max_iters_per_fidelity=3, gamma_rule="at_least")
    assert list(loose.history["action"][:2]) == ["continue", "upgrade"]


# ----------------------------------------------------------------------------------------------
# Whole runs with the scripted backend
# ----------------------------------------------------------------------------------------------

def test_upgrades_at_gamma_stops_on_decline_and_keeps_best(tmp_path):
    # skill: 0.2 -> 0.25 -> 0.35 (>= gamma vs g1) -> 0.45 (0.35 vs g2) -> 0.40 (0.20 vs g3 < entry 0.25)
    result, _ = run_mf(tmp_path, [0.25, 0.35, 0.45, 0.40])
    h = result.history
    assert list(zip(h["fidelity"], h["candidate"], h["win_freq"].round(2), h["action"])) == [
        (1, "student", 0.20, "continue"), (1, "step1-iter1", 0.25, "continue"), (1, "step1-iter2", 0.35, "upgrade"),
        (2, "step1-iter2", 0.25, "continue"), (2, "step2-iter1", 0.35, "upgrade"),
        (3, "step2-iter1", 0.25, "continue"), (3, "step3-iter1", 0.20, "stop")]
    assert result.stop_reason == "declined"
    assert result.best["candidate"] == "step2-iter1" and result.best["t"] == 3  # the better, earlier look at g3
    assert result.exits[1]["t"] == 2 and result.exits[2]["t"] == 3 and result.exits[3]["t"] == 3
    assert (h["radius"].round(4) == round(float(np.sqrt(np.log(2 / 0.05) / 100)), 4)).all()


def test_entry_look_at_gamma_skips_a_fidelity(tmp_path):
    result, _ = run_mf(tmp_path, [0.45, 0.3], gamma=0.3)  # 0.45: 0.45 vs g1, 0.35 vs g2 -> skip g2 untrained
    h = result.history
    assert list(h[h["fidelity"] == 2]["kind"]) == ["entry"]
    assert result.expert_cost(through_fidelity=2) == result.expert_cost(through_fidelity=1) == 10


def test_ledger_arithmetic(tmp_path):
    result, _ = run_mf(tmp_path, [0.25, 0.35, 0.45, 0.40])  # 2 iters at g1, 1 at g2, 1 at g3; B = 10
    led = result.ledger
    assert mf.paper_lambda(led) == 2 * 10 * 1 + 10 * 4 + 10 * 16 == result.expert_cost()
    assert result.expert_cost(through_fidelity=1) == 20 and result.expert_cost(through_fidelity=2) == 60
    train = led[led["phase"] == "train"]
    assert train.groupby("payer")["cost"].sum().to_dict() == {"expert": 220.0, "judge": 20.0, "student": 40.0}
    ev = led[led["phase"] == "evaluation"]
    # expert validation responses once each (100 x (1 + 4 + 16)); 5 models x 100 student responses;
    # 5 models x 3 experts x 100 judgements x 0.5 (monitor on)
    assert ev.groupby("payer")["cost"].sum().to_dict() == {"expert": 2100.0, "judge": 750.0, "student": 500.0}
    summary = mf.ledger_summary(led)
    assert summary.set_index("fidelity").loc[3, "Lambda (expert_train_cost)"] == 160
    assert list(result.history["Lambda"]) == [0, 10, 20, 20, 60, 60, 220]


def test_convergence_epsilon_moves_on(tmp_path):
    result, _ = run_mf(tmp_path, [0.2000001, 0.2000002, 0.2000003], epsilon=1e-3)
    h = result.history
    assert h.iloc[1]["reason"].startswith("converged") and h.iloc[1]["action"] == "upgrade"
    assert result.stop_reason.startswith("converged")


def test_caps_end_runaway_runs(tmp_path):
    never = [0.21, 0.22, 0.23, 0.24, 0.25, 0.26, 0.27, 0.28, 0.29]  # always below gamma vs g1
    capped, _ = run_mf(tmp_path / "a", never, max_iters_per_fidelity=2)
    h = capped.history
    assert list(h[h["fidelity"] == 1]["action"]) == ["continue", "continue", "upgrade"]
    assert "iteration cap at this fidelity" in h.iloc[2]["reason"]
    total, _ = run_mf(tmp_path / "b", never, max_iters=3)
    assert total.stop_reason.startswith("iteration cap") and total.state["t"] == 3
    assert total.history.iloc[-1]["action"] == "stop"
    budget, _ = run_mf(tmp_path / "c", never, max_budget=25.0)
    assert budget.stop_reason.startswith("budget cap") and budget.expert_cost() == 20


def test_paper_params_end_a_run_that_never_passes_gamma(tmp_path):
    """With params/paper/02's caps, a student whose looks never pass gamma and whose weights keep moving still ends:
    4 iterations at each of the 3 fidelities, then the iteration cap (the paper's settings had no end)."""
    paper = mf.TracesParams.from_yaml(ROOT / "params" / "paper" / "02_multifidelity_traces.yaml")
    cfg = paper.run_config(10, 3).model_copy(update={"fidelities": config().fidelities, "student": "student",
                                                     "n_validation": 100})
    never = [0.2 + 0.001 * k for k in range(1, 40)]
    result = mf.run_multifidelity(cfg, ScriptedBackend(never), SkillJudge(), PROMPTS, tmp_path, progress=False)
    assert result.state["t"] == 12 and result.state["done"]
    assert result.stop_reason.startswith("iteration cap at this fidelity")
    assert [len(result.state["data"][str(m)]) for m in (1, 2, 3)] == [4, 4, 4]
    values = paper.model_dump()
    values.update(max_iters_per_fidelity=None, max_iters=None, max_budget=None)
    with pytest.raises(ParamsError, match=r"max_iters_per_fidelity, max_iters and max_budget are all null: .*no "
                                          r"guaranteed end"):
        mf.TracesParams.validate_mapping(values, "02.yaml")


def test_judge_failures_are_retried_then_excluded(tmp_path):
    judge = SkillJudge(fail_once={"v001", "v002"}, always_fail={"v050", "v051", "v052"})
    result, _ = run_mf(tmp_path, [0.25, 0.35, 0.45, 0.40], judge=judge, judge_retries=2)
    first = result.history.iloc[0]
    assert first["failed"] == 3 and first["n"] == 97  # fail-once prompts recovered on retry
    # skill 0.2 vs g1: wins are v000..v019 (20 of the 97 valid), never counted losses for the failed ones
    assert first["wins"] == 20 and first["losses"] == 77 and abs(first["win_freq"] - 20 / 97) < 1e-12
    evals = result.ledger[(result.ledger["phase"] == "evaluation") & (result.ledger["payer"] == "judge")]
    assert evals.iloc[0]["n"] == 100 + 5 + 3  # first pass, 5 retried, then 3 retried again


def test_all_judgements_failing_is_a_clear_error(tmp_path):
    judge = SkillJudge(always_fail={f"v{i:03d}" for i in range(100)})
    with pytest.raises(RuntimeError, match="all 100 validation judgements"):
        run_mf(tmp_path, [0.3], judge=judge)


def test_vanilla_spends_exactly_its_budget_and_keeps_best(tmp_path):
    backend = ScriptedBackend([0.3, 0.5, 0.4])  # vs g2: 0.2, 0.4, 0.3
    result = mf.run_vanilla(config(), 2, 70.0, backend, SkillJudge(), PROMPTS, tmp_path, progress=False)
    assert list(result.iterations["n_t"]) == [10, 7]  # 70 / 4 = 17.5 -> 10 + a partial 7
    assert result.expert_cost() == 68 and result.stop_reason.startswith("budget spent")
    assert result.best["candidate"] == "vanilla(m=2)-iter2" and round(result.best["win_freq"], 2) == 0.40


def test_trace_runs_vanilla_at_the_mf_budget_and_compares_on_test(tmp_path):
    backend = ScriptedBackend([0.25, 0.35, 0.45, 0.40])
    tr = mf.run_trace(config(), backend, SkillJudge(), PROMPTS, tmp_path, baselines=["vanilla-m2", "vanilla-m3"],
                      n_test=50, progress=False)
    assert tr.vanilla[2].state["identity"]["budget"] == tr.mf.expert_cost(through_fidelity=2) == 60
    assert tr.vanilla[3].state["identity"]["budget"] == tr.mf.expert_cost() == 220
    t4 = mf.table4([tr])
    assert list(t4["baseline"]) == ["vanilla-m2", "vanilla-m3"]
    assert list(t4["candidate"]) == ["step2-iter1", "step2-iter1"]
    # mf's model (skill 0.45) beats vanilla's best (0.35) on every test prompt: no ties, both conventions agree
    assert t4["win_rate"].tolist() == [1.0, 1.0] and t4["wins_over_total"].tolist() == [1.0, 1.0]
    assert "paper_wins_over_total (reference)" in t4  # NaN here: the paper has no B = 10 row
    assert (t4["radius"].round(4) == round(float(np.sqrt(np.log(40) / 50)), 4)).all()
    summary = mf.table4_summary([tr], t4, delta=0.05)
    assert summary["verdict"].tolist() == ["multi-fidelity better"] * 2
    assert "multi-fidelity better" in "\n".join(mf.verdict_lines(summary, 0.05))
    rows = mf.trace_rows([tr])
    assert list(rows[rows["kind"] == "vanilla"]["candidate"]) == ["vanilla(m=2)", "vanilla(m=3)"]
    decisions = mf.decision_table([tr])
    assert len(decisions) == len(tr.mf.history)
    # gamma = 0.3 lies inside the exact interval of 25 wins in 100 (Clopper-Pearson), so "continue" is flagged
    assert not decisions.iloc[1]["supported"] and decisions.iloc[1]["value"] == 0.25
    assert set(mf.paper_layout(rows, 10).columns.get_level_values(0)) == {"", "trace 1"}


def test_compared_iterates_answer_the_test_and_table4_is_unchanged(tmp_path):
    """``test_iterates: compared`` tests the initial student, the chosen model, each fidelity's last one and
    the run's last (t0; exits t2, t3; chosen t3; last t4) instead of every iterate t0..t4, and Table 4 comes
    out the same; a value not known is named."""
    kw = dict(baselines=["vanilla-m2", "vanilla-m3"], n_test=50, progress=False)
    every = mf.run_trace(config(), ScriptedBackend([0.25, 0.35, 0.45, 0.40]), SkillJudge(), PROMPTS,
                         tmp_path / "all", **kw)
    backend = ScriptedBackend([0.25, 0.35, 0.45, 0.40])
    some = mf.run_trace(config(), backend, SkillJudge(), PROMPTS, tmp_path / "compared", test_iterates="compared", **kw)
    its = lambda tr: tr.vs_top[tr.vs_top["what"] == "multi-fidelity iterate"]["t"].tolist()
    assert its(every) == [0, 1, 2, 3, 4] and its(some) == [0, 2, 3, 4]
    assert mf.tested_iterates(some.mf, some.baselines, "compared") == [0, 2, 3, 4]
    assert mf.tested_iterates(some.mf, {}, "all") == [0, 1, 2, 3, 4]
    pd.testing.assert_frame_equal(mf.table4([every]), mf.table4([some]))
    tested = lambda tr: len([r for r in tr.extra_ledger if r["phase"] == "test" and r["payer"] == "student"])
    assert (tested(every), tested(some)) == (5 + 2, 4 + 2)
    with pytest.raises(ValueError, match="parameter 'test_iterates': 'final' is not one of all, compared"):
        mf.run_trace(config(), backend, SkillJudge(), PROMPTS, tmp_path / "compared", test_iterates="final", **kw)


def test_initial_student_answers_validation_once_per_group(tmp_path):
    """Model 0 is the same untrained student in every run of a trace: its validation responses are made once in
    ``shared/`` and read by the baselines, and the experts' gap table still finds them."""
    backend = ScriptedBackend([0.25, 0.35, 0.45, 0.40])
    asked, generate = [], backend.generate_student
    backend.generate_student = lambda prompts, seed, sampling: (asked.append(prompts[0][0]),
                                                                generate(prompts, seed, sampling))[1]
    tr = mf.run_trace(config(), backend, SkillJudge(), PROMPTS, tmp_path, baselines=["vanilla-m2", "sft"],
                      n_test=50, progress=False)
    folder = tr.mf.folder.parent
    assert (folder / "shared" / "journal" / "validation_initial_student.json").is_file()
    assert not list(folder.glob("*/journal/validation_t0000.json"))
    models_looked_at = sum(run.history["t"].nunique() for run in tr.runs)
    assert asked.count("v") == models_looked_at - (len(tr.runs) - 1)  # model 0 once, not once per run
    assert tr.expert_pairs.query("m_prime == 0")["n"].eq(100).all()


def test_baselines_spend_exactly_their_budget(tmp_path):
    """vanilla(m=1) at the full budget (22 batches of B would exceed max_iters = 4: 4 batches of 55, each trained
    on alone), the fixed ladder (2 + 1 iterations, the rest at the top) and the SFT replay all charge
    Lambda = 220 = the mf run's."""
    cfg = config(max_iters=4)
    backend = ScriptedBackend([0.25, 0.35, 0.45, 0.40])
    tr = mf.run_trace(cfg, backend, SkillJudge(), PROMPTS, tmp_path, n_test=50, progress=False,
                      baselines=["vanilla-m1", "vanilla-m2", "vanilla-m3", "sft", "fixed_ladder"],
                      ladder_iterations=[2, 1])
    assert tr.mf.expert_cost() == 220
    spent = {name: run.expert_cost() for name, run in tr.baselines.items()}
    assert spent == {"vanilla-m1": 220, "vanilla-m2": 60, "vanilla-m3": 208, "sft": 220, "fixed_ladder": 220}
    v1 = tr.baselines["vanilla-m1"]
    assert list(v1.iterations["n_t"]) == [55] * 4 and v1.state["identity"]["incremental_batch"] == 55
    assert list(v1.iterations["dpo_pairs"]) == [55] * 4  # each step on its new batch only
    assert mf.vanilla_incremental_batch(cfg, 3, 220) is None and mf.vanilla_incremental_batch(cfg, 1, 220) == 55
    assert list(tr.baselines["vanilla-m3"].iterations["dpo_pairs"]) == [10, 13]  # all of D^(3), as Algorithm 2
    ladder = tr.baselines["fixed_ladder"]
    assert list(zip(ladder.iterations["fidelity"], ladder.iterations["n_t"])) == [(1, 10), (1, 10), (2, 10), (3, 10)]
    assert ladder.history["reason"].str.startswith("fixed schedule").sum() == 5  # looks at g1 and g2
    t4 = mf.table4([tr]).set_index("baseline")
    assert t4.loc["vanilla-m1", "compared_at"] == "chosen model" and t4.loc["vanilla-m2", "compared_at"] == \
        "end of fidelity 2"
    assert (t4["candidate_Lambda"] == [220, 60, 220, 220, 220]).all()
    # the multi-fidelity run looked at g1, g2, g3 (100 validation responses each): 100 x 21 on top of Lambda
    assert t4.loc["vanilla-m3", "candidate_Lambda_with_validation"] == 220 + 2100
    assert t4.loc["vanilla-m3", "baseline_Lambda_with_validation"] == 208 + 1600


def test_sft_replays_the_purchased_responses_without_buying_again(tmp_path):
    backend = ScriptedBackend([0.25, 0.35, 0.45, 0.40])
    run, _ = run_mf(tmp_path, [0.25, 0.35, 0.45, 0.40])
    bought = backend.expert_train_calls
    sft = mf.run_sft_replay(config(), run, backend, SkillJudge(), PROMPTS, tmp_path, progress=False)
    assert backend.expert_train_calls == bought == 0  # nothing generated for training
    assert "update" not in backend.calls  # no DPO step
    # SFT on all of D^(m) after each replayed batch: 10, then 20 g1 rows; 10 g2 rows; 10 g3 rows
    assert [(n, rows) for n, rows in backend.sft_rows] == [(10, ["expert=g1"]), (20, ["expert=g1"]),
                                                           (10, ["expert=g2"]), (10, ["expert=g3"])]
    led = sft.ledger
    assert mf.paper_lambda(led) == run.expert_cost() == 220
    assert led[(led["phase"] == "train") & (led["payer"] != "expert")].empty  # no student responses, no verdicts
    assert list(sft.history["action"]) == ["continue", "continue", "upgrade", "continue", "upgrade", "continue", "stop"]
    assert sft.stop_reason == "replayed every purchase of the source run"


def test_spend_ratio_on_a_scripted_backend(tmp_path):
    """vanilla(m=3) keeps skill 0.35 (test WinFreq vs g3 = 15/50 = 0.30); the multi-fidelity iterates score
    0, 0.1, 0.3, ... so the first to reach 0.30 is t = 2, after Lambda 20; vanilla spent 13 x 16 = 208."""
    rows = []
    for seed in (3, 4):
        backend = ScriptedBackend([0.25, 0.35, 0.45, 0.40])
        tr = mf.run_trace(config(seed=seed), backend, SkillJudge(), PROMPTS, tmp_path, baselines=["vanilla-m3"],
                          n_test=50, progress=False, trace=seed - 2)
        rows.append(tr)
    its = rows[0].vs_top[rows[0].vs_top["what"] == "multi-fidelity iterate"]
    assert its["win_rate"].round(3).tolist() == [0.0, 0.1, 0.3, 0.5, 0.4] and its["Lambda"].tolist() == [0, 10, 20, 60, 220]
    ratios = mf.spend_ratio_table(rows)
    assert ratios["target_win_rate_vs_top"].round(3).tolist() == [0.3, 0.3]
    assert ratios["mf_first_reaching"].tolist() == ["step1-iter2"] * 2
    assert ratios["spend_ratio"].tolist() == [20 / 208] * 2
    summary = mf.spend_ratio_summary(ratios)
    by_b = summary.set_index("batch_size")
    assert by_b.loc["all", "mean"] == pytest.approx(20 / 208) and by_b.loc["all", "reached"] == 2
    assert by_b.loc["all", "low"] == pytest.approx(20 / 208)  # no spread between identical seeds
    assert "below 1: cheaper" in "\n".join(mf.spend_ratio_lines(summary, 0.05))
    # two seeds in Table 4: the interval over seeds and prompts
    t4 = mf.table4(rows)
    s = mf.table4_summary(rows, t4)
    assert s["seeds"].tolist() == [2] and s["win_rate"].tolist() == [1.0]


def test_ladder_schedule_is_the_rounded_mean_of_the_adaptive_runs(tmp_path):
    a, _ = run_mf(tmp_path / "a", [0.25, 0.35, 0.45, 0.40])      # 2 iterations at g1, 1 at g2
    b, _ = run_mf(tmp_path / "b", [0.35, 0.45, 0.40])            # 1 at g1, 1 at g2
    assert mf.ladder_schedule([a, b]) == [2, 1]                  # 1.5 rounds half up
    assert mf.ladder_schedule([a, b], fixed=[3, 0]) == [3, 0]


def test_tie_conventions_decide_differently(tmp_path):
    """A judge that calls the student's matching answers ties: WinFreq counts them 1/2 and passes gamma,
    wins / total counts them 0 and leaves the upgrade to the cap."""
    class TieJudge(SkillJudge):
        def _judge_presented(self, batch):
            out = []
            for prompt, a, b in batch:  # the student's response may be presented second
                student_first = a.startswith("skill=")
                s, e = (a, b) if student_first else (b, a)
                matches = self._score(prompt, s) > self._score(prompt, e)
                out.append(Outcome.TIE if matches else Outcome.LOSE if student_first else Outcome.WIN)
            self._count_calls(len(batch))
            return out

    half, _ = run_mf(tmp_path / "half", [0.7, 0.8, 0.9], judge=TieJudge(), tie_convention="half",
                     max_iters_per_fidelity=2)
    wot, _ = run_mf(tmp_path / "wot", [0.7, 0.8, 0.9], judge=TieJudge(), tie_convention="wins_over_total",
                    max_iters_per_fidelity=2)
    h = half.history
    assert h.loc[1, "value"] == 0.35 and h.loc[1, "wins_over_total"] == 0 and h.loc[1, "reason"] == "passed gamma"
    assert wot.history.loc[2, "reason"].startswith("iteration cap") and wot.history["value"].max() == 0
    decisions = mf.decision_table([mf.TraceResult("x", 10, 1, half.config, tmp_path, half, {}, *[pd.DataFrame()] * 3,
                                                  pd.DataFrame())])
    first = decisions.iloc[1]
    assert (first["action"], first["other_action"], first["other_value"]) == ("upgrade", "continue", 0.0)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    ({"gamma": 0.0}, "gamma"), ({"gamma": 1.0}, "gamma"), ({"gamma": 1.5}, "gamma"), ({"batch_size": 0}, "batch_size"),
    ({"fidelities": [{"role": "g1", "cost": 4.0}, {"role": "g2", "cost": 4.0}]}, "fidelities"),
    ({"fidelities": [{"role": "g2", "cost": 4.0}, {"role": "g1", "cost": 1.0}]}, "fidelities"),
    ({"fidelities": []}, "fidelities"), ({"student": "g1"}, "student"),
])
def test_bad_parameters_name_the_field(change, field):
    with pytest.raises(ParamsError, match=field):
        config(**change)


def test_missing_expert_names_the_field(tmp_path):
    cfg = config(fidelities=[{"role": "g1", "cost": 1.0}, {"role": "g9", "cost": 2.0}])
    with pytest.raises(ParamsError, match=r"fidelities\[1\]\.role.*'g9'"):
        mf.run_multifidelity(cfg, ScriptedBackend([0.3]), SkillJudge(), PROMPTS, tmp_path, progress=False)
    assert not (tmp_path / "mf" / "state.json").exists()  # nothing started, nothing spent


def test_traces_params_from_yaml_rejects_unknown_keys(tmp_path):
    good = ROOT / "params" / "tiny" / "02_multifidelity_traces.yaml"
    params = mf.TracesParams.from_yaml(good)
    assert params.batch_sizes == [1024, 512] and params.gamma == 0.3 and params.costs == [1.0, 4.0, 16.0]
    assert len(params.trace_seeds) >= 3 and params.gamma_rule == "exceeds"
    assert set(params.baselines) == set(mf.baseline_names(3)) and params.vanilla_fidelities == [1, 2, 3]
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text() + "\ngama: 0.3\n")
    with pytest.raises(ParamsError, match="unknown parameter 'gama'"):
        mf.TracesParams.from_yaml(bad)


def test_baselines_per_batch_size():
    p = _traces_params(baselines=["vanilla-m1", "sft"], baseline_batch_sizes={"vanilla-m1": [512]})
    assert p.baselines_at(512) == ["vanilla-m1", "sft"] and p.baselines_at(1024) == ["sft"]


def test_paper_defaults_for_the_decision_rule():
    """Unless a profile says otherwise: wins / total (the paper's Section 5) and the strict "exceeds"."""
    cfg = mf.RunConfig(fidelities=[{"role": "g1", "cost": 1.0}])
    assert cfg.tie_convention == "wins_over_total" and cfg.gamma_rule == "exceeds"


def _traces_params(**change):
    values = mf.TracesParams.from_yaml(ROOT / "params" / "tiny" / "02_multifidelity_traces.yaml").model_dump()
    values.update(change)
    return mf.TracesParams.validate_mapping(values, "02.yaml")


@pytest.mark.parametrize("change, message", [
    ({"baselines": ["vanilla-m3", "stf"]}, r"^02.yaml: parameter 'baselines': Value error, unknown baseline 'stf' "
                                             r"\(did you mean 'sft'\?\); known: vanilla-m1"),
    ({"baselines": ["vanilla-m4"]}, r"parameter 'baselines': .*unknown baseline 'vanilla-m4'"),
    ({"baselines": ["sft", "sft"]}, r"parameter 'baselines': .*\['sft'\] listed more than once"),
    ({"trace_seeds": [0, 1, 1]}, r"parameter 'trace_seeds': .*seed\(s\) \[1\] listed more than once"),
    ({"tie_convention": "ties_half"}, r"parameter 'tie_convention': Input should be 'wins_over_total' or 'half'"),
    ({"gamma_rule": ">"}, r"parameter 'gamma_rule': Input should be 'exceeds' or 'at_least'"),
    ({"fixed_ladder_iterations": [1]}, r"parameter 'fixed_ladder_iterations': .*expected 2 iteration counts"),
    ({"batch_sizes": [512, 512]}, r"parameter 'batch_sizes': .*each batch size may appear once"),
    ({"baseline_batch_sizes": {"vanila-m1": [512]}}, r"parameter 'baseline_batch_sizes': .*'vanila-m1' is not "
                                                     r"in baselines \(did you mean 'vanilla-m1'\?\)"),
    ({"baseline_batch_sizes": {"sft": [256]}}, r"parameter 'baseline_batch_sizes': .*batch sizes \[256\] are not"),
])
def test_bad_notebook_02_parameters_name_the_field(change, message):
    with pytest.raises(ParamsError, match=message) as err:
        _traces_params(**change)
    assert len(str(err.value).splitlines()) == 1  # one message


# ----------------------------------------------------------------------------------------------
# Resume after a crash
# ----------------------------------------------------------------------------------------------

def _comparable(result):
    return result.state["history"], result.state["ledger"], result.state["iterations"], result.best


@pytest.mark.parametrize("crash_at", [("update", 3), ("generate_student", 5), ("save_policy", 4),
                                      ("generate_expert", 5)])
def test_crash_inside_an_iteration_resumes_to_the_same_run(tmp_path, crash_at):
    schedule = [0.25, 0.35, 0.45, 0.40]
    clean_backend = ScriptedBackend(schedule)
    clean = mf.run_multifidelity(config(), clean_backend, SkillJudge(), PROMPTS, tmp_path / "clean", progress=False)

    crashing = ScriptedBackend(schedule, crash_at=crash_at)
    with pytest.raises(RuntimeError, match="injected crash"):
        mf.run_multifidelity(config(), crashing, SkillJudge(), PROMPTS, tmp_path / "crash", progress=False)
    resumed_backend = ScriptedBackend(schedule)
    resumed = mf.run_multifidelity(config(), resumed_backend, SkillJudge(), PROMPTS, tmp_path / "crash",
                                   progress=False)
    assert _comparable(resumed) == _comparable(clean)
    # nothing bought twice: expert responses over both processes = those of the clean run
    assert crashing.expert_train_calls + resumed_backend.expert_train_calls == clean_backend.expert_train_calls


SUBPROCESS_RUN = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from mfnb import multifidelity as mf
    from mfnb.evaluation import world_judge
    from mfnb.models import torch_threads
    from mfnb.worlds.tiny.world import TinyWorld

    folder, mode, log = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    world = TinyWorld()
    backend = mf.PolicyBackend(world)
    real_expert, real_update = backend.generate_expert, backend.update
    def expert(role, prompts, seed, sampling):
        with log.open("a") as f:
            f.write(f"{role} {len(prompts)}\\n")
        return real_expert(role, prompts, seed, sampling)
    updates = []
    def update(*args, **kw):
        updates.append(1)
        out = real_update(*args, **kw)
        if mode == "kill" and len(updates) == 2:   # mid-iteration 2: after DPO, before its adapter is saved
            Path(folder, "KILL_ME").write_text("now")
            time.sleep(600)
        return out
    backend.generate_expert, backend.update = expert, update
    judge = world_judge(world, {"kind": "oracle", "cache": True}, cache_path=Path(folder) / "judge.sqlite")
    cfg = mf.RunConfig(fidelities=[{"role": "g1", "cost": 1.0}, {"role": "g2", "cost": 4.0}], batch_size=32,
                       n_validation=40, max_iters_per_fidelity=2, gamma=0.45, seed=7, dpo={"lr": 1e-3})
    with torch_threads(1):
        result = mf.run_multifidelity(cfg, backend, judge, backend.prompts, Path(folder) / "runs", progress=False)
    Path(folder, "result.json").write_text(json.dumps({"history": result.state["history"],
        "ledger": result.state["ledger"], "iterations": result.state["iterations"], "best": result.best}))
""")


def _subprocess(folder, mode, log):
    return subprocess.Popen([sys.executable, "-c", SUBPROCESS_RUN, str(folder), mode, str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_mid_iteration_then_resume_matches_uninterrupted(tmp_path):
    """The real tiny world: a run SIGKILLed inside iteration 2 and restarted in a new process ends with
    the same trace, ledger and DPO losses as an uninterrupted run, and buys no expert response twice."""
    pytest.importorskip("trl")
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    clean.mkdir()
    killed.mkdir()
    uninterrupted_proc = _subprocess(clean, "clean", clean / "experts.log")  # runs meanwhile
    proc = _subprocess(killed, "kill", killed / "experts.log")
    deadline = time.time() + 240
    while not (killed / "KILL_ME").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "the run never reached iteration 2"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    bought_before_kill = (killed / "experts.log").read_text().splitlines()
    state = json.loads((killed / "runs" / "mf" / "state.json").read_text())
    assert state["t"] == 1 and not state["done"]  # the last commit is iteration 1's look

    resumed_proc = _subprocess(killed, "resume", killed / "experts.log")
    for p in (resumed_proc, uninterrupted_proc):
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out
    resumed = json.loads((killed / "result.json").read_text())
    uninterrupted = json.loads((clean / "result.json").read_text())
    assert resumed == uninterrupted
    # every expert response was bought once: the killed + resumed processes together made the same calls
    assert sorted((killed / "experts.log").read_text().splitlines()) == \
        sorted((clean / "experts.log").read_text().splitlines())
    assert len(bought_before_kill) == 4  # g1 + g2 validation responses, then iterations 1 and 2


def test_run_config_keeps_the_training_curves_out_of_the_run_key():
    """report_to reaches each run's DPO and SFT steps, and the run's key (its config's dump) is the same with or
    without it: switching curves on reuses cached runs."""
    P = mf.TracesParams.for_profile("02_multifidelity_traces", "tiny")
    values = P.model_dump()
    values["dpo"] = {**values["dpo"], "report_to": "tensorboard"}
    values["sft"] = {**values["sft"], "report_to": "tensorboard"}
    logged = mf.TracesParams.validate_mapping(values).run_config(512, 0)
    assert logged.dpo.report_to == ["tensorboard"] and logged.sft.report_to == ["tensorboard"]
    assert logged.model_dump_json() == P.run_config(512, 0).model_dump_json()
