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
import pytest

from mfnb import multifidelity as mf
from mfnb.judges import Outcome, PairwiseJudge
from mfnb.params import ParamsError

ROOT = Path(__file__).resolve().parents[1]


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
    assert mf.decide(0.30, prev=None, final=False, delta_norm=None, **d) == ("upgrade", "reached gamma")
    assert mf.decide(0.299, prev=None, final=False, delta_norm=None, **d)[0] == "continue"
    assert mf.decide(0.35, prev=0.1, final=True, delta_norm=1.0, **d) == ("stop", "reached gamma")
    assert mf.decide(0.20, prev=0.25, final=True, delta_norm=1.0, **d) == ("stop", "declined")
    assert mf.decide(0.20, prev=0.25, final=False, delta_norm=1.0, **d)[0] == "continue"  # declines only matter at M
    assert mf.decide(0.20, prev=0.2, final=True, delta_norm=1.0, **d)[0] == "continue"   # equal is not a decline
    assert mf.decide(0.20, prev=0.1, final=False, delta_norm=1e-4, **d)[0:1] == ("upgrade",)
    assert "converged" in mf.decide(0.20, prev=0.1, final=True, delta_norm=1e-3, **d)[1]  # <= epsilon
    assert mf.decide(0.2, prev=None, final=False, delta_norm=None, **{**d, "cap_here": 1})[1].startswith("iteration cap")


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
    tr = mf.run_trace(config(), backend, SkillJudge(), PROMPTS, tmp_path, vanilla_fidelities=[2, 3], n_test=50,
                      progress=False)
    assert tr.vanilla[2].state["identity"]["budget"] == tr.mf.expert_cost(through_fidelity=2) == 60
    assert tr.vanilla[3].state["identity"]["budget"] == tr.mf.expert_cost() == 220
    t4 = mf.table4([tr])
    assert list(t4["baseline"]) == ["vanilla(m=2)", "vanilla(m=3)"]
    assert list(t4["candidate"]) == ["step2-iter1", "step2-iter1"]
    assert "paper_win_rate (reference)" in t4  # NaN here: the paper has no B = 10 row
    assert "comparisons" in mf.beat_statement(t4)
    rows = mf.trace_rows([tr])
    assert list(rows[rows["kind"] == "vanilla"]["candidate"]) == ["vanilla(m=2)", "vanilla(m=3)"]
    decisions = mf.decision_table([tr])
    assert len(decisions) == len(tr.mf.history)
    # radius at n = 100 is 0.136: 0.25 vs gamma 0.3 is within it, so "continue" there is flagged
    assert not decisions.iloc[1]["supported"]
    assert set(mf.paper_layout(rows, 10).columns.get_level_values(0)) == {"", "trace 1"}


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
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text() + "\ngama: 0.3\n")
    with pytest.raises(ParamsError, match="unknown parameter 'gama'"):
        mf.TracesParams.from_yaml(bad)


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
    from mfnb.worlds.tiny import TinyWorld

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
