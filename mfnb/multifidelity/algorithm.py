"""Multi-fidelity alignment (paper 000), Algorithm 2: the loop, the decision rule, and the baselines a
reviewer asks for, all driven by one resumable runner.

Algorithm 2, as implemented (:func:`run_multifidelity`)::

    for m = 1..M:                                     # cheapest expert first
        look: win rate of f(theta_t) vs g^(m) on the validation prompts
        while not (win rate exceeds gamma) and ||theta_t - theta_{t-1}|| > epsilon:
            t += 1; draw B train prompts; y1 = student, y2 = g^(m); (judge the pair); D^(m) += pairs
            theta_t = DPO(theta_{t-1}, D^(m))        # expert chosen, student rejected, all of D^(m)
            look again
    at m = M also stop when the look declines vs the previous look, and keep the best look at M.

In the code: :meth:`_Runner.run` is the outer loop, one :meth:`_Runner._step` per pass (enter a fidelity with a
look, or one iteration), :meth:`_Runner._acquire` lines 4-9, :meth:`_Runner._update` line 11,
:meth:`_Runner._look` line 2 with :func:`decide`, :meth:`_Runner._stop` the end.

Reading choices (the paper leaves them open, each a parameter): the number compared with gamma is wins / total
(``tie_convention: wins_over_total``, how Section 5 computes its win rates) or WinFreq with ties counted 1/2
(``half``, Section 2's definition); a fidelity ends when that number *exceeds* gamma (``gamma_rule: exceeds``,
the paper's word) or reaches it (``at_least``); the parameter-change test is vacuous at the first look of a
fidelity (no update made there yet).  A per-fidelity iteration cap, a total iteration cap and a budget cap are
our additions and are labelled as such wherever they decide.

The baselines are runs of the same machine (own folder, journal and ledger): ``vanilla`` (DPO against one
expert until a budget is spent, :func:`run_vanilla`; a budget too large for ``max_iters`` batches of B is bought in
``max_iters`` larger batches, each trained on alone), ``ladder`` (the same fidelities with a fixed number of
iterations at each and the rest of the budget at the top: no gamma rule, :func:`run_fixed_ladder`) and ``sft``
(supervised fine-tuning on exactly the expert responses a multi-fidelity run bought, in its order:
:func:`run_sft_replay`).

Costs are charged to the ledger (:mod:`~mfnb.multifidelity.ledger`) as they are bought; every step ends in a
commit to the run's folder (:mod:`~mfnb.multifidelity.store`), so a killed run resumes exactly.
"""
from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from mfnb import stats
from mfnb.multifidelity.backend import Backend, Prompts
from mfnb.multifidelity.config import RunConfig, check_experts
from mfnb.multifidelity.judging import counts, judge_pairs, win_freq
from mfnb.multifidelity.ledger import ledger_row, paper_lambda
from mfnb.multifidelity.store import INITIAL_VALIDATION, STATE_VERSION, RunResult, RunStore, derive_seed, restore_rng

GAMMA_RULES = ("exceeds", "at_least")
MODES = ("mf", "vanilla", "ladder", "sft")


# ----------------------------------------------------------------------------------------------
# The decision rule (pure, so it is tested on its own)
# ----------------------------------------------------------------------------------------------

def passes_gamma(win: float, gamma: float, gamma_rule: str = "exceeds") -> bool:
    """The paper's "exceeds gamma" (``win > gamma``), or ``win >= gamma`` with ``gamma_rule="at_least"``."""
    if gamma_rule not in GAMMA_RULES:
        raise ValueError(f"parameter 'gamma_rule': unknown rule {gamma_rule!r}; known: {', '.join(GAMMA_RULES)}")
    return win > gamma if gamma_rule == "exceeds" else win >= gamma


def decide(win: float, *, prev: float | None, final: bool, gamma: float, delta_norm: float | None,
           epsilon: float, iters_here: int, cap_here: int | None, gamma_rule: str = "exceeds") -> tuple[str, str]:
    """Algorithm 2 after a look at fidelity m: ("continue" | "upgrade" | "stop", reason).

    ``win``: the look's win rate under the run's tie convention; ``prev``: the previous look at this
    fidelity (declines only matter at the last one); ``delta_norm``: ||theta_t - theta_{t-1}|| of the update
    just made (None at the first look of a fidelity).
    """
    leave = "stop" if final else "upgrade"
    if passes_gamma(win, gamma, gamma_rule):
        return leave, "passed gamma"
    if final and prev is not None and win < prev:
        return "stop", "declined"
    if delta_norm is not None and delta_norm <= epsilon:
        return leave, "converged (||dtheta|| <= epsilon)"
    if cap_here is not None and iters_here >= cap_here:
        return leave, f"iteration cap at this fidelity ({cap_here}; not a paper rule)"
    return "continue", "below gamma"


def look_value(judged: dict, convention: str) -> float:
    """The number a look compares with gamma: wins / total or WinFreq (ties 1/2), from its counts."""
    return float(stats.win_rate_from_counts(judged["wins"], judged["ties"], judged["losses"], convention))


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------

class _Runner:
    """Drives one run through its state machine; every step ends in a commit.

    ``mode``: ``mf`` (Algorithm 2), ``vanilla`` (one fidelity, spend ``budget``), ``ladder`` (``schedule[m]``
    iterations at each fidelity below the top, the rest of ``budget`` at the top) or ``sft`` (replay the
    purchases of ``source`` with SFT updates)."""

    def __init__(self, *, name: str, mode: str, plan: list[int], config: RunConfig, backend: Backend, judge,
                 prompts: Prompts, folder: Path, shared: Path, budget: float | None = None,
                 schedule: dict[int, int] | None = None, source: RunResult | None = None,
                 incremental_batch: int | None = None, progress: bool = True):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        check_experts(config, backend.roles)
        if not prompts.train:
            raise ValueError("the train prompt set X is empty")
        if len(prompts.validation) < config.n_validation:
            raise ValueError(f"parameter 'n_validation': {config.n_validation} > {len(prompts.validation)} "
                             "validation prompts available")
        self.name, self.mode, self.plan, self.config = name, mode, plan, config
        self.backend, self.judge, self.prompts = backend, judge, prompts
        self.store = RunStore(folder)
        self.shared = RunStore(shared)
        self.budget = budget
        self.schedule = schedule or {}
        self.source = source
        self.incremental_batch = incremental_batch  # a vanilla run in large batches, each trained on alone
        self.progress = progress
        self.val = list(prompts.validation[: config.n_validation])
        if mode == "sft":
            self.replay = [it for it in source.state["iterations"]]  # (t, fidelity, n_t) in the source's order

    # -- bookkeeping ------------------------------------------------------------------------------

    def _identity(self) -> dict:
        ident = {"version": STATE_VERSION, "name": self.name, "mode": self.mode, "plan": self.plan,
                 "config": self.config.model_dump(), "budget": self.budget,
                 "backend": getattr(self.backend, "key", type(self.backend).__name__),
                 "judge": getattr(self.judge, "identity", lambda: {})()}
        if self.schedule:
            ident["schedule"] = {str(m): k for m, k in sorted(self.schedule.items())}
        if self.incremental_batch:
            ident["incremental_batch"] = self.incremental_batch
        if self.source is not None:
            ident["source"] = {"folder": str(self.source.folder),
                               "iterations": [[it["t"], it["fidelity"], it["n_t"]] for it in self.replay]}
        return ident

    @contextmanager
    def _timed(self, state: dict, what: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            state["timings"][what] = state["timings"].get(what, 0.0) + time.perf_counter() - start

    def _say(self, text: str) -> None:
        if self.progress:
            print(f"[{self.name}] {text}", flush=True)

    def _commit(self, state: dict) -> None:
        with self._timed(state, "checkpoint"):
            self.store.commit(state)

    def _fid(self, m: int):
        return self.config.fidelities[m - 1]

    # -- lifecycle --------------------------------------------------------------------------------

    def run(self) -> RunResult:
        state = self.store.resume(self._identity())
        if state is None:
            state = self._start()
        elif not state["done"]:
            self._say(f"resuming after t={state['t']} ({len(state['history'])} looks committed)")
            restore_rng(state["rng"])
            with self._timed(state, "checkpoint"):
                self.backend.load_policy(self.store.adapter_path(state["t"]))
        while not state["done"]:
            self._step(state)
            self._commit(state)
        return RunResult(self.name, self.mode, self.plan, self.config, self.store.folder, state)

    def _start(self) -> dict:
        state = {"identity": self._identity(), "t": 0, "pos": 0, "entered": False, "done": False,
                 "stop_reason": None, "best": None, "history": [], "iterations": [], "evals": {}, "data": {},
                 "ledger": [], "exits": {}, "names": {"0": "student"}, "iters_here": 0, "charged_val": [],
                 "val_charged": [], "timings": {}}
        with self._timed(state, "checkpoint"):
            self.backend.reset_policy(derive_seed(self.config.seed, "lora"), self.config.lora)
            self.backend.save_policy(self.store.adapter_path(0))
            self.backend.load_policy(self.store.adapter_path(0))
        self._commit(state)
        return state

    def _step(self, state: dict) -> None:
        m = self.plan[state["pos"]]
        if not state["entered"]:
            state["entered"] = True
            state["iters_here"] = 0
            self._look(state, m, kind="entry", delta_norm=None)
            return
        cap = self._global_cap(state, m)
        if cap is not None:
            self._stop(state, m, cap)
            return
        t = state["t"] + 1
        n_t = self._batch_size(state, m)
        self._acquire(state, t, m, n_t)
        delta_norm = self._update(state, t, m)
        state["t"] = t
        state["iters_here"] += 1
        prefix = {"mf": f"step{m}", "vanilla": f"vanilla(m={m})", "ladder": f"ladder{m}", "sft": f"sft{m}"}[self.mode]
        state["names"][str(t)] = f"{prefix}-iter{state['iters_here']}"
        self._look(state, m, kind="train", delta_norm=delta_norm)

    # -- caps and batch sizes ---------------------------------------------------------------------

    def _global_cap(self, state: dict, m: int) -> str | None:
        c = self.config
        spent = paper_lambda(state["ledger"])
        if self.mode in ("vanilla", "ladder"):  # baselines are defined by their budget; our caps do not apply
            if self._batch_size(state, m) < 1:
                return f"budget spent: Lambda = {spent:g} of {self.budget:g}"
            return None
        if self.mode == "sft":
            return None  # ends with the source's last iteration (see _look)
        if c.max_iters is not None and state["t"] >= c.max_iters:
            return f"iteration cap: {state['t']} iterations done (max_iters = {c.max_iters}; not a paper rule)"
        price = self._fid(m).cost
        if c.max_budget is not None and spent + c.batch_size * price > c.max_budget:
            return (f"budget cap: the next batch ({c.batch_size} x {price:g}) would bring Lambda from {spent:g} to "
                    f"{spent + c.batch_size * price:g} > max_budget {c.max_budget:g} (not a paper rule)")
        return None

    def _batch_size(self, state: dict, m: int) -> int:
        """B; for a budgeted run the responses its remaining budget still buys (a last partial batch), in
        batches of ``incremental_batch`` for an incremental vanilla run; for an SFT replay the replayed batch."""
        if self.mode == "sft":
            return int(self.replay[state["t"]]["n_t"])
        if self.mode not in ("vanilla", "ladder"):
            return self.config.batch_size
        remaining = self.budget - paper_lambda(state["ledger"])
        affordable = math.floor(remaining / self._fid(m).cost + 1e-9)
        return int(max(0, min(self.incremental_batch or self.config.batch_size, affordable)))

    # -- one iteration ----------------------------------------------------------------------------

    def _acquire(self, state: dict, t: int, m: int, n_t: int) -> None:
        """Lines 4-9: B prompts, one student and one expert response each, optionally judged.  The batch
        is journaled before it is used, so a resumed run reads it instead of buying it again.  An SFT replay
        takes the expert responses its source bought (no student responses, no verdicts)."""
        c, fid = self.config, self._fid(m)
        make = (lambda: self._replayed(t, m)) if self.mode == "sft" else (lambda: self._buy(state, t, m, n_t))
        batch = self.store.journaled(f"acquire_t{t:04d}", make,
                                     valid=lambda b: b.get("fidelity") == m and len(b["prompts"]) == n_t)
        led = state["ledger"]
        led.append(ledger_row(self.name, t, "train", m, "expert", fid.role, n_t, fid.cost))
        if batch["student"] is not None:
            led.append(ledger_row(self.name, t, "train", m, "student", c.student, n_t, c.student_cost))
        if batch["judgements"]:
            led.append(ledger_row(self.name, t, "train", m, "judge", "judge", batch["judgements"], c.judge_cost))
        state["data"].setdefault(str(m), []).append(t)
        judged = counts(batch["verdicts"]) if batch["verdicts"] is not None else None
        state["iterations"].append({
            "run": self.name, "t": t, "fidelity": m, "role": fid.role, "n_t": n_t,
            "D_size": sum(len(self.store.read_journal(f"acquire_t{s:04d}")["prompts"]) for s in state["data"][str(m)]),
            "identical_pairs": (sum(a.strip() == b.strip() for a, b in zip(batch["student"], batch["expert"]))
                                if batch["student"] is not None else 0),
            "train_student_win_freq": win_freq(judged) if judged else math.nan,
            "train_failed": judged["failed"] if judged else 0})

    def _buy(self, state: dict, t: int, m: int, n_t: int) -> dict:
        """B prompts drawn from X, a student and an expert response to each, and (optionally) the verdicts."""
        c, fid = self.config, self._fid(m)
        rng = random.Random(derive_seed(c.seed, "prompts", t))
        prompts = rng.sample(self.prompts.train, n_t) if n_t <= len(self.prompts.train) else \
            [rng.choice(self.prompts.train) for _ in range(n_t)]
        with self._timed(state, "generation"):
            student = self.backend.generate_student(prompts, derive_seed(c.seed, "student", t), c.sampling)
            expert = self.backend.generate_expert(fid.role, prompts, derive_seed(c.seed, "expert", t), c.sampling)
        verdicts, asked = None, 0
        if c.judge_train_pairs:
            with self._timed(state, "judging"):
                verdicts, asked = judge_pairs(self.judge, prompts, student, expert, c.judge_retries)
        return {"t": t, "fidelity": m, "role": fid.role, "prompts": prompts, "student": student,
                "expert": expert, "verdicts": verdicts, "judgements": asked}

    def _replayed(self, t: int, m: int) -> dict:
        """The source run's t-th purchase: the same prompts and expert responses, nothing bought again."""
        it = self.replay[t - 1]
        if int(it["fidelity"]) != m:
            raise RuntimeError(f"[{self.name}] replay out of step: iteration {t} is at fidelity {it['fidelity']}, "
                               f"not {m}")
        src = RunStore(self.source.folder).read_journal(f"acquire_t{int(it['t']):04d}")
        return {"t": t, "fidelity": m, "role": src["role"], "source_t": int(it["t"]), "prompts": src["prompts"],
                "student": None, "expert": src["expert"], "verdicts": None, "judgements": 0}

    def _update(self, state: dict, t: int, m: int) -> float:
        """Line 11: DPO on all of D^(m) (expert chosen, student rejected), from theta_{t-1}; an SFT run
        fine-tunes on all of D^(m)'s expert responses instead; an incremental vanilla run trains on the new
        batch only."""
        prompts, chosen, rejected = [], [], []
        batches = [t] if self.incremental_batch else state["data"][str(m)]
        for s in batches:
            batch = self.store.read_journal(f"acquire_t{s:04d}")
            prompts += batch["prompts"]
            chosen += batch["expert"]
            rejected += batch["student"] or []
        before = self.backend.policy_vector()
        start = time.perf_counter()
        if self.mode == "sft":
            with self._timed(state, "sft"):
                metrics = self.backend.sft_update(prompts, chosen, derive_seed(self.config.seed, "sft", t),
                                                  self.config.sft)
        else:
            with self._timed(state, "dpo"):
                metrics = self.backend.update(prompts, chosen, rejected, derive_seed(self.config.seed, "dpo", t),
                                              self.config.dpo)
        state.setdefault("dpo_seconds", {})[str(t)] = time.perf_counter() - start  # not part of the trace
        with self._timed(state, "checkpoint"):
            path = self.store.adapter_path(t)
            self.backend.save_policy(path)
            self.backend.load_policy(path)  # continue from disk exactly as a resumed run would
        delta_norm = float(np.linalg.norm(self.backend.policy_vector() - before))
        it = state["iterations"][-1]
        it.update({"delta_norm": delta_norm, "dpo_pairs": len(prompts), "update": "sft" if self.mode == "sft" else "dpo",
                   "dpo_loss": float(metrics.get("train_loss", metrics.get("loss", math.nan)))})
        return delta_norm

    # -- evaluation -------------------------------------------------------------------------------

    def _expert_validation(self, state: dict, m: int) -> list[str]:
        """g^(m)'s validation responses: generated once per run group (file in ``shared/``) and reused."""
        c, fid = self.config, self._fid(m)

        def make() -> dict:
            with self._timed(state, "evaluation"):
                responses = self.backend.generate_expert(fid.role, self.val, derive_seed(c.seed, "val-expert", fid.role),
                                                         c.sampling)
            return {"role": fid.role, "prompts": self.val, "responses": responses}

        data = self.shared.journaled(f"validation_{fid.role}", make, valid=lambda d: d["prompts"] == self.val)
        if self.mode == "mf" and fid.role not in state["charged_val"]:
            state["charged_val"].append(fid.role)
            state["ledger"].append(ledger_row(self.name, state["t"], "evaluation", m, "expert", fid.role,
                                              len(self.val), fid.cost))
        return data["responses"]

    def _student_validation(self, state: dict, t: int) -> list[str]:
        """Model t's validation responses.  Model 0 is the initial student in every run of the group (same
        seed, adapter not yet trained), so its responses are made once in ``shared/`` and every run reads them."""
        def make() -> dict:
            with self._timed(state, "evaluation"):
                responses = self.backend.generate_student(self.val, derive_seed(self.config.seed, "val", t),
                                                          self.config.sampling)
            return {"t": t, "prompts": self.val, "responses": responses}

        if t == 0:
            own = self.store.read_journal("validation_t0000")  # a run made before the responses were shared
            if own is not None:
                return own["responses"]
            return self.shared.journaled(INITIAL_VALIDATION, make, valid=lambda d: d["prompts"] == self.val)["responses"]
        return self.store.journaled(f"validation_t{t:04d}", make)["responses"]

    def _evaluate(self, state: dict, t: int, m: int) -> dict:
        """Line 2: the judgements of model t against g^(m) on the validation prompts (and, with ``monitor``,
        against every other expert too, for the cost-quality figure and beta)."""
        per = state["evals"].setdefault(str(t), {})
        wanted = range(1, len(self.config.fidelities) + 1) if self.config.monitor else [m]
        missing = [k for k in wanted if str(k) not in per]
        if missing:
            student = self._student_validation(state, t)
            if str(t) not in state["val_charged"]:
                state["val_charged"].append(str(t))
                state["ledger"].append(ledger_row(self.name, t, "evaluation", m, "student", self.config.student,
                                                  len(self.val), self.config.student_cost))
            for k in missing:
                expert = self._expert_validation(state, k)
                with self._timed(state, "evaluation"):
                    outcomes, asked = judge_pairs(self.judge, self.val, student, expert, self.config.judge_retries)
                judged = counts(outcomes)
                if judged["wins"] + judged["ties"] + judged["losses"] == 0:
                    raise RuntimeError(f"[{self.name}] all {len(self.val)} validation judgements of model t={t} "
                                       f"against {self._fid(k).role} failed (after {self.config.judge_retries} "
                                       "retries); cannot compute WinFreq. Fix the judge and rerun: the run resumes.")
                per[str(k)] = {**judged, "judgements": asked}
                state["ledger"].append(ledger_row(self.name, t, "evaluation", k, "judge", "judge", asked,
                                                  self.config.judge_cost))
        return per[str(m)]

    def _action(self, state: dict, m: int, kind: str, value: float, prev: float | None,
                delta_norm: float | None, final: bool) -> tuple[str, str]:
        c = self.config
        if self.mode == "mf":
            return decide(value, prev=prev, final=final, gamma=c.gamma, delta_norm=delta_norm, epsilon=c.epsilon,
                          iters_here=state["iters_here"], cap_here=c.max_iters_per_fidelity, gamma_rule=c.gamma_rule)
        if self.mode == "vanilla":
            return "continue", "vanilla: spends its budget"
        if self.mode == "ladder":
            if m == self.plan[-1]:
                return "continue", "fixed ladder: spends the rest of its budget at the top"
            k = self.schedule.get(m, 0)
            if state["iters_here"] >= k:
                return "upgrade", f"fixed schedule ({k} iteration{'s' if k != 1 else ''} here)"
            return "continue", f"fixed schedule ({k} iteration{'s' if k != 1 else ''} here)"
        # sft: follow the source's iterations
        done = state["t"] >= len(self.replay)
        if done and final:
            return "stop", "replayed every purchase of the source run"
        nxt = None if done else int(self.replay[state["t"]]["fidelity"])
        if nxt is not None and nxt == m:
            return "continue", "sft replay"
        return ("stop", "replayed every purchase of the source run") if done else ("upgrade", "sft replay")

    def _look(self, state: dict, m: int, *, kind: str, delta_norm: float | None) -> None:
        c = self.config
        t = state["t"]
        judged = self._evaluate(state, t, m)
        win = win_freq(judged)
        value = look_value(judged, c.tie_convention)
        n = judged["wins"] + judged["ties"] + judged["losses"]
        here = [h for h in state["history"] if h["fidelity"] == m]
        prev = here[-1]["value"] if here else None
        final = state["pos"] == len(self.plan) - 1
        action, reason = self._action(state, m, kind, value, prev, delta_norm, final)
        radius = float(stats.hoeffding_radius(n, c.delta))
        row = {"run": self.name, "mode": self.mode, "look": len(state["history"]) + 1, "fidelity": m,
               "role": self._fid(m).role, "t": t, "candidate": state["names"][str(t)], "kind": kind,
               **{k: judged[k] for k in ("wins", "ties", "losses", "failed")}, "n": n, "win_freq": win,
               "wins_over_total": look_value(judged, "wins_over_total"), "convention": c.tie_convention,
               "value": value, "radius": radius, "low": max(0.0, value - radius), "high": min(1.0, value + radius),
               "prev": prev, "delta_norm": delta_norm, "Lambda": paper_lambda(state["ledger"]),
               "total_cost": float(sum(r["cost"] for r in state["ledger"])), "final_fidelity": final,
               "action": action, "reason": reason}
        state["history"].append(row)
        shown = stats.CONVENTION_NAMES[c.tie_convention]
        self._say(f"{row['candidate']} vs {row['role']}: {shown} {value:.3f} +- {radius:.3f} (n={n}, failed="
                  f"{judged['failed']}), Lambda {row['Lambda']:g} -> {action} ({reason})")
        if action == "upgrade":
            state["exits"][str(m)] = {"t": t, "candidate": row["candidate"], "reason": reason,
                                      "Lambda": row["Lambda"]}
            state["pos"] += 1
            state["entered"] = False
            if self.mode == "sft":  # skip fidelities the source never trained at
                nxt = int(self.replay[t]["fidelity"])
                while self.plan[state["pos"]] != nxt:
                    state["pos"] += 1
        elif action == "stop":
            self._stop(state, m, reason, from_look=True)

    def _stop(self, state: dict, m: int, reason: str, from_look: bool = False) -> None:
        """End the run; keep the best look at the last fidelity (paper) or the best trained model of a
        budgeted baseline (vanilla, and the fixed ladder at its top fidelity)."""
        if not from_look and state["history"]:
            state["history"][-1]["action"] = "stop"
            state["history"][-1]["reason"] = reason
        here = [h for h in state["history"] if h["fidelity"] == m]
        if state["pos"] < len(self.plan) - 1:
            here = here[-1:]  # stopped before the last fidelity: the current model is the output
        elif self.mode in ("vanilla", "ladder") and any(h["kind"] == "train" for h in here):
            here = [h for h in here if h["kind"] == "train"]
        best = None
        if here:
            top = max(here, key=lambda h: (h["value"], -h["t"]))
            best = {"t": top["t"], "candidate": top["candidate"], "fidelity": m, "value": top["value"],
                    "win_freq": top["win_freq"], "radius": top["radius"]}
        state["exits"][str(m)] = {"t": best["t"] if best else state["t"], "candidate": best["candidate"] if best
                                  else state["names"][str(state["t"])], "reason": reason,
                                  "Lambda": paper_lambda(state["ledger"])}
        state.update(done=True, stop_reason=reason, best=best)
        self._say(f"stop: {reason}; best {best['candidate'] if best else None}")


# ----------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------

def run_multifidelity(config: RunConfig, backend: Backend, judge, prompts: Prompts, folder: str | Path, *,
                      progress: bool = True) -> RunResult:
    """Algorithm 2 over ``config.fidelities``; state in ``folder/mf`` (resumes if present)."""
    folder = Path(folder)
    return _Runner(name="mf", mode="mf", plan=list(range(1, len(config.fidelities) + 1)), config=config,
                   backend=backend, judge=judge, prompts=prompts, folder=folder / "mf", shared=folder / "shared",
                   progress=progress).run()


def _check_budget(budget: float) -> float:
    if not budget > 0:
        raise ValueError(f"budget must be > 0, got {budget}")
    return float(budget)


def vanilla_incremental_batch(config: RunConfig, fidelity: int, budget: float) -> int | None:
    """The batch size of vanilla(m) when its budget would need more than ``max_iters`` batches of B, else None.

    DPO on all of D^(m) after every batch costs a number of pair passes quadratic in the iterations
    (vanilla(m=1) at the full budget of a 1:4:16 ladder would need dozens of batches), so such a run buys its
    budget in ``max_iters`` equal batches and trains each DPO step, from theta_{t-1}, on the new batch only:
    every response is used once (linear cost) and the best of the ``max_iters`` looks is still its output."""
    if config.max_iters is None:
        return None
    responses = math.floor(budget / config.fidelities[fidelity - 1].cost + 1e-9)
    if math.ceil(responses / config.batch_size) <= config.max_iters:
        return None
    return math.ceil(responses / config.max_iters)


def run_vanilla(config: RunConfig, fidelity: int, budget: float, backend: Backend, judge, prompts: Prompts,
                folder: str | Path, *, progress: bool = True) -> RunResult:
    """DPO against g^(fidelity) only, buying expert responses until ``budget`` (Lambda) is spent (the
    last batch may be partial; larger batches, each trained on alone, when :func:`vanilla_incremental_batch`
    says so); the best trained iteration on validation is its output."""
    if not 1 <= fidelity <= len(config.fidelities):
        raise ValueError(f"fidelity must be in 1..{len(config.fidelities)}, got {fidelity}")
    budget = _check_budget(budget)
    folder = Path(folder)
    return _Runner(name=f"vanilla-m{fidelity}", mode="vanilla", plan=[fidelity], config=config, backend=backend,
                   judge=judge, prompts=prompts, folder=folder / f"vanilla-m{fidelity}", shared=folder / "shared",
                   budget=budget, incremental_batch=vanilla_incremental_batch(config, fidelity, budget),
                   progress=progress).run()


def run_fixed_ladder(config: RunConfig, iterations: Sequence[int], budget: float, backend: Backend, judge,
                     prompts: Prompts, folder: str | Path, *, progress: bool = True) -> RunResult:
    """The same fidelities without the gamma rule: ``iterations[m-1]`` iterations at each fidelity m below the
    top, then the rest of ``budget`` at the top in batches of B (the last partial); the best trained model at
    the top on validation is its output.  Ends early if the budget runs out below the top."""
    M = len(config.fidelities)
    if len(iterations) != M - 1 or any(int(k) < 0 for k in iterations):
        raise ValueError(f"parameter 'fixed_ladder_iterations': expected {M - 1} counts >= 0, got {list(iterations)}")
    budget = _check_budget(budget)
    folder = Path(folder)
    return _Runner(name="fixed_ladder", mode="ladder", plan=list(range(1, M + 1)), config=config, backend=backend,
                   judge=judge, prompts=prompts, folder=folder / "fixed_ladder", shared=folder / "shared", budget=budget,
                   schedule={m: int(k) for m, k in enumerate(iterations, 1)}, progress=progress).run()


def run_sft_replay(config: RunConfig, source: RunResult, backend: Backend, judge, prompts: Prompts,
                   folder: str | Path, *, progress: bool = True) -> RunResult:
    """SFT (LoRA, TRL's SFTTrainer) on the expert responses ``source`` bought, batch by batch in its order:
    after each batch, SFT from theta_{t-1} on all of that fidelity's responses so far (as Algorithm 2's DPO
    step does).  Same data and Lambda, no rejected responses; its best look at the last fidelity is its output."""
    if not source.state["iterations"]:
        raise ValueError(f"the source run {source.name} made no iteration: nothing to replay")
    plan = list(dict.fromkeys(int(it["fidelity"]) for it in source.state["iterations"]))
    folder = Path(folder)
    return _Runner(name="sft", mode="sft", plan=plan, config=config, backend=backend, judge=judge, prompts=prompts,
                   folder=folder / "sft", shared=folder / "shared", source=source, progress=progress).run()
