"""Hybrid Alignment Training (HbAT; Wang et al. 2024), Algorithm 1: alternating SFT/DPO stages with a
modified EWC.

Split the SFT data and the preference data into N disjoint parts. SFT on part 1 (plain loss); then for
n = 1..N: (n > 1) SFT on part n with the EWC penalty of the DPO importances, anchored at the parameters after
the last DPO stage (Eq. 8); DPO on part n with the penalty of the SFT importances, anchored at the
parameters after the last SFT stage (Eq. 5). The best checkpoint on validation is kept.

The importances are :mod:`mfnb.hbat.importance` (Eqs. 6, 7, 9, 10), the penalty inside TRL's trainers
:mod:`mfnb.hbat.ewc` (Eqs. 5, 8), the resumable stage store :mod:`mfnb.hbat.store`. With
``constraint="freeze"`` (HbAT-Freeze) the top ``freeze_fraction`` most important tensors are frozen for the
stage instead of penalised.
"""
from __future__ import annotations

import gc
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from mfnb.core.atomic import write_json
from mfnb.hbat.config import HbatError, HbatParams
from mfnb.hbat.ewc import EWCPenalty, ewc_trainer_class
from mfnb.hbat.fisher import add_fisher, empirical_fisher, fisher_bytes, scaled_fisher
from mfnb.hbat.importance import (accumulate_changes, importance_from_changes, snapshot, squared_change_sums,
                                  top_fraction, trainable_tensors)
from mfnb.hbat.store import StageRecord, digest, load_fisher, load_stage, save_fisher, save_stage, stage_key
from mfnb.training import dpo, sft
from mfnb.training import launch as launcher

# --------------------------------------------------------------------------------------------------
# Data: checks and splits


def _prompt_kind(prompt: Any) -> str:
    if isinstance(prompt, str):
        return "plain text"
    if isinstance(prompt, list) and all(isinstance(m, Mapping) and "role" in m for m in prompt):
        return "conversational (a list of messages)"
    return type(prompt).__name__


def _template(texts: Sequence[str], suffix: bool) -> str | None:
    """The words every text starts (or ends) with; None for fewer than two texts."""
    if len(texts) < 2:
        return None
    words = [t.split()[::-1] if suffix else t.split() for t in texts]
    common = []
    for column in zip(*words):
        if any(w != column[0] for w in column):
            break
        common.append(column[0])
    return " ".join(common[::-1] if suffix else common)


def check_inputs(sft_rows: Sequence[Mapping], preference_rows: Sequence[Mapping], n_splits: int) -> None:
    """Clear errors for empty or malformed data, mismatched prompt formats, and a bad N."""
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 1:
        raise HbatError(f"n_splits: N must be an integer >= 1, got {n_splits!r}")
    for what, rows, needed in (("sft_rows", sft_rows, ("prompt", "completion")),
                               ("preference_rows", preference_rows, ("prompt", "chosen", "rejected"))):
        if len(rows) == 0:
            raise HbatError(f"{what}: empty")
        for i, row in enumerate(rows):
            missing = [k for k in needed if k not in row]
            if missing:
                raise HbatError(f"{what}[{i}]: missing field(s) {missing}; expected {list(needed)}")
    smaller = min(("sft_rows", len(sft_rows)), ("preference_rows", len(preference_rows)), key=lambda x: x[1])
    if n_splits > smaller[1]:
        raise HbatError(f"n_splits: N = {n_splits} is larger than the smaller data set ({smaller[0]}: "
                        f"{smaller[1]} rows); each of the N parts needs at least one example")
    kinds = {_prompt_kind(r["prompt"]) for r in sft_rows}, {_prompt_kind(r["prompt"]) for r in preference_rows}
    if len(kinds[0]) != 1 or kinds[0] != kinds[1]:
        raise HbatError(f"prompt: SFT and preference data must share one prompt format; sft_rows[*].prompt is "
                        f"{sorted(kinds[0])}, preference_rows[*].prompt is {sorted(kinds[1])}")
    if kinds[0] == {"plain text"}:
        # a template is the words all prompts of one data set start (end) with, e.g. "### Instruction:" or
        # ". answer:"; the two data sets disagree when both have one and the two share no word at all (a few
        # prompts of one set may share more words than the template, e.g. all asking "Write a ...")
        texts = [r["prompt"] for r in sft_rows], [r["prompt"] for r in preference_rows]
        for suffix, where in ((False, "start"), (True, "end")):
            mine, theirs = _template(texts[0], suffix), _template(texts[1], suffix)
            if mine and theirs and not _template([mine, theirs], suffix):
                raise HbatError(f"prompt: every sft_rows[*].prompt {where}s with {mine!r} but every "
                                f"preference_rows[*].prompt {where}s with {theirs!r}: the SFT and preference data "
                                "use different prompt formats")


def split_parts(rows: Sequence[Any], n_splits: int, seed: int) -> list[list[Any]]:
    """N mutually exclusive, near-equal parts of a seeded shuffle of ``rows``."""
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 1:
        raise HbatError(f"n_splits: N must be an integer >= 1, got {n_splits!r}")
    if n_splits > len(rows):
        raise HbatError(f"n_splits: N = {n_splits} is larger than the data set ({len(rows)} rows)")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    bounds = [round(k * len(rows) / n_splits) for k in range(n_splits + 1)]
    return [[rows[i] for i in order[bounds[k]:bounds[k + 1]]] for k in range(n_splits)]


def stage_plan(n_splits: int, preference: bool = True) -> list[tuple[str, int]]:
    """Algorithm 1's order: sft 0, dpo 0, sft 1, dpo 1, ... (parts numbered from 0)."""
    plan = [("sft", 0)]
    for n in range(n_splits):
        if n > 0:
            plan.append(("sft", n))
        if preference:
            plan.append(("dpo", n))
    return plan


# --------------------------------------------------------------------------------------------------
# The training loop (Algorithm 1) over TRL stages


@dataclass
class HbatRun:
    params: HbatParams
    seed: int
    stages: list[StageRecord]
    selected: int                            # index into stages of the kept checkpoint
    test: dict[str, Any] | None
    accumulated: dict[str, dict[str, float]]  # objective -> AC after the last stage

    @property
    def train_seconds(self) -> float:
        """Training time of all stages, with the original EWC's Fisher estimation (the modified EWC's
        change statistics are computed inside each stage's time)."""
        return sum(s.train_seconds + s.importance_seconds for s in self.stages)

    @property
    def cpu_seconds(self) -> float:
        """The same in CPU seconds of this process: far less sensitive than wall time to other processes
        on a shared machine (tiny models train single-threaded)."""
        return sum(s.cpu_seconds + s.importance_cpu_seconds for s in self.stages)

    @property
    def state_bytes(self) -> int:
        """The most memory the constraint held at once besides the model (anchors, coefficients, and the
        importances kept for later stages)."""
        return max((s.penalty_bytes + s.importance_bytes for s in self.stages), default=0)

    def stage_frame(self):
        import pandas as pd

        rows = []
        for s in self.stages:
            row = {"stage": s.index, "kind": s.kind, "part": s.part, "constraint": s.constraint,
                   "constrained_tensors": len(s.constrained_tensors), "train_seconds": s.train_seconds,
                   "selected": s.index == self.selected}
            row.update({f"val_{k}": v for k, v in s.validation.items()})
            rows.append(row)
        return pd.DataFrame(rows)


def _train_stage(model, tokenizer, kind: str, rows: list[dict], params: HbatParams, seed: int,
                 penalty: EWCPenalty | None, show_progress: bool, launch=None) -> dict:
    launch = launcher.active_launch(launch)
    if launch is not None:  # several processes: the same TRL step with the penalty and frozen tensors sent along
        if kind == "sft":
            s = params.sft
            hyper = sft.SFTParams(lr=s.lr, batch_size=s.batch_size, epochs=s.epochs, warmup_ratio=s.warmup_ratio,
                                  max_length=s.max_length, grad_accum=s.grad_accum,
                                  gradient_checkpointing=s.gradient_checkpointing, report_to=s.report_to,
                                  logging_dir=s.logging_dir)
            rows_or_data = rows
        else:
            hyper = params.dpo
            rows_or_data = dpo.preference_dataset([r["prompt"] for r in rows], [r["chosen"] for r in rows],
                                                  [r["rejected"] for r in rows])
        return launcher.train_in_place(model, tokenizer, rows_or_data, kind, hyper, launch, seed=seed,
                                          show_progress=show_progress, penalty=penalty)
    if kind == "sft":
        s = params.sft
        return sft.train(model, tokenizer, rows, lr=s.lr, batch_size=s.batch_size, seed=seed, epochs=s.epochs,
                         warmup_ratio=s.warmup_ratio, max_length=s.max_length,
                         gradient_accumulation_steps=s.grad_accum, gradient_checkpointing=s.gradient_checkpointing,
                         report_to=s.report_to, logging_dir=s.logging_dir,
                         trainer_cls=ewc_trainer_class("sft") if penalty is not None else None,
                         trainer_kwargs={"ewc": penalty} if penalty is not None else None,
                         show_progress=show_progress)
    dataset = dpo.preference_dataset([r["prompt"] for r in rows], [r["chosen"] for r in rows],
                                     [r["rejected"] for r in rows])
    return dpo.dpo_update(model, tokenizer, dataset, params.dpo, seed=seed,
                          trainer_cls=ewc_trainer_class("dpo") if penalty is not None else None,
                          trainer_kwargs={"ewc": penalty} if penalty is not None else None,
                          show_progress=show_progress)


def run_hbat(model, tokenizer, sft_rows: Sequence[dict], preference_rows: Sequence[dict], params: HbatParams, *,
             seed: int = 0, store: str | Path | None = None, init_key: str | None = None,
             evaluate: Callable[[Any, Any, str], dict] | None = None, eval_key: str | None = None,
             show_progress: bool = False, launch=None) -> HbatRun:
    """Algorithm 1 on ``model`` (trained in place; a peft model trains its adapter).

    ``evaluate(model, tokenizer, split)`` returns scores for ``"validation"`` (after every stage; the
    ``select_by`` score picks the kept checkpoint) and ``"test"`` (once, for the kept checkpoint), and
    ``eval_key`` identifies what it measures. With a ``store`` folder each stage is saved atomically
    under a key chained from ``init_key`` (which must identify the initial weights) and everything that
    produced it; an existing stage is loaded instead of retrained. On return the model holds the kept
    checkpoint. ``launch`` (:class:`mfnb.training.config.LaunchParams`): each stage trains in several processes
    (accelerate launch, DDP or DeepSpeed ZeRO-2) with the same global batch, EWC penalty and frozen tensors.
    """
    check_inputs(sft_rows, preference_rows, params.n_splits)
    if store is not None and not init_key:
        raise HbatError("init_key: a stage store needs a key that identifies the initial model")
    # Every Trainer.train() runs a full gc.collect() (accelerate's free_memory); with a notebook's worth of
    # live objects that is ~0.25 s per stage, paid 2N times here. Objects alive now are not garbage, so
    # exclude them from collection while the stages run.
    gc.collect()
    gc.freeze()
    try:
        return _run_stages(model, tokenizer, sft_rows, preference_rows, params, seed, store, init_key, evaluate,
                           eval_key, show_progress, launch)
    finally:
        gc.unfreeze()


def snapshot_device(model) -> str | None:
    """Where a stage's copy of the trainable tensors lives (its "before", the best checkpoint kept without a
    store, and the original EWC's Fisher between stages): host memory under full fine-tuning, so a GPU
    holding a 7B model does not hold a second one (the change statistics stream it back a tensor at a time,
    the penalty takes the Fisher a tensor at a time); beside the parameters (None) for a LoRA adapter, a few
    MB of a 7B model, where the copy costs nothing and the statistics need no host transfer."""
    return None if hasattr(model, "peft_config") else "cpu"


def _max_length(params: HbatParams, kind: str) -> int:
    return params.sft.max_length if kind == "sft" else params.dpo.max_length


def _run_stages(model, tokenizer, sft_rows, preference_rows, params, seed, store, init_key, evaluate, eval_key,
                show_progress, launch=None) -> HbatRun:
    store = Path(store) if store is not None else None
    parts = {"sft": split_parts(list(sft_rows), params.n_splits, seed),
             "dpo": split_parts(list(preference_rows), params.n_splits, seed + 1)}
    tensors = trainable_tensors(model)
    if not tensors:
        raise HbatError("model: has no trainable parameters")
    ewc = params.ewc
    fisher = ewc.importance == "fisher" and params.constraint == "ewc"
    copy_device = snapshot_device(model)   # host memory under full fine-tuning (also the Fisher's place)

    launched = launcher.active_launch(launch) is not None
    accumulated: dict[str, dict[str, float]] = {"sft": {}, "dpo": {}}
    fishers: dict[str, dict[str, torch.Tensor] | None] = {"sft": None, "dpo": None}
    records: list[StageRecord] = []
    prev = digest({"init": init_key or "in-memory", "n": params.n_splits})
    kept_state: dict[str, dict[str, torch.Tensor]] = {}
    plan = stage_plan(params.n_splits, params.preference)
    for index, (kind, part) in enumerate(plan):
        other = "dpo" if kind == "sft" else "sft"
        constraint = params.constraint if accumulated[other] else "none"
        stage_seed = seed * 1009 + index
        rows = parts[kind][part]
        key = stage_key(prev, kind, part, rows, params, stage_seed, constraint)
        folder = store / "stages" / key if store is not None else None
        record = load_stage(folder, model) if folder is not None else None
        if record is not None:
            record.reused = True
        else:
            if constraint == "none":
                importance = {}
            elif fisher:
                importance = scaled_fisher(fishers[other], ewc)
            elif ewc.importance == "uniform":   # the control: the same total weight on every tensor
                importance = {k: ewc.fmax / len(accumulated[other]) for k in accumulated[other]}
            else:
                importance = importance_from_changes(accumulated[other], ewc.fmax, ewc.change_scale)
            penalty, frozen = None, []
            if constraint == "ewc":
                # launched stages rebuild the penalty in the training processes: no anchors held here
                penalty = EWCPenalty.from_model(model, importance, ewc, anchored=not launched)
                constrained = penalty.names
                penalty_bytes = penalty.state_bytes
            elif constraint == "freeze":
                frozen = top_fraction({k: importance.get(k, 0.0) for k in tensors}, ewc.freeze_fraction)
                constrained = frozen
            else:
                constrained = []
            if constraint != "ewc":
                penalty_bytes = 0
            before = snapshot(tensors, device=copy_device)
            start, cpu_start = time.perf_counter(), time.process_time()
            for name in frozen:
                tensors[name].requires_grad_(False)
            try:
                metrics = _train_stage(model, tokenizer, kind, rows, params, stage_seed, penalty, show_progress, launch)
            finally:
                for name in frozen:
                    tensors[name].requires_grad_(True)
            sums = squared_change_sums(before, tensors)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            del before, penalty
            # the record keeps one number per tensor: the mean of its raw per-element Fisher (before fisher_scale)
            used = ({k: float(v.mean()) for k, v in fishers[other].items()} if fisher and importance
                    else importance)
            record = StageRecord(index=index, kind=kind, part=part, key=key, rows=len(rows), constraint=constraint,
                                 importance_used=used, constrained_tensors=list(constrained),
                                 change_sums={k: [s, n] for k, (s, n) in sums.items()}, train_seconds=seconds,
                                 cpu_seconds=cpu_seconds,
                                 train_metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                                 penalty_bytes=penalty_bytes)
            if folder is not None:
                save_stage(folder, model, record)
        changes = record.changes(ewc.reduce)
        accumulated[kind] = accumulate_changes(accumulated[kind], changes) if ewc.accumulate else dict(changes)
        if fisher and index < len(plan) - 1:
            # the original EWC: the Fisher of this stage's data at its final parameters, for the other
            # objective's later stages (stored beside the stage, so a resumed run does not estimate it again)
            stage_fisher = load_fisher(folder) if folder is not None else None
            if stage_fisher is None:
                start, cpu_start = time.perf_counter(), time.process_time()
                stage_fisher = empirical_fisher(model, tokenizer, rows, kind, max_length=_max_length(params, kind),
                                                batch_size=ewc.fisher_batch)
                record.importance_seconds = time.perf_counter() - start
                record.importance_cpu_seconds = time.process_time() - cpu_start
                if folder is not None:
                    save_fisher(folder, stage_fisher)
            if copy_device is not None:  # full fine-tuning: the Fisher (float32, 2x a bf16 model) waits in host
                for name in stage_fisher:  # memory, not on the GPU the next stage trains on; tensor by tensor
                    stage_fisher[name] = stage_fisher[name].to(copy_device)
            fishers[kind] = add_fisher(fishers[kind], stage_fisher) if ewc.accumulate else stage_fisher
            record.importance_bytes = sum(fisher_bytes(f) for f in fishers.values() if f)
            if folder is not None:
                write_json(folder / "meta.json", {**record.__dict__, "reused": False})
        elif params.constraint != "none":
            record.importance_bytes = 8 * sum(len(a) for a in accumulated.values())
        if evaluate is not None and (record.eval_key != eval_key or not record.validation):
            record.validation = dict(evaluate(model, tokenizer, "validation"))
            record.eval_key = eval_key
            if folder is not None:
                write_json(folder / "meta.json", {**record.__dict__, "reused": False})
        records.append(record)
        if (store is None and evaluate is not None and params.select_by != "last" and _is_candidate(kind, params)
                and select_checkpoint(records, params) == index):
            # without a store, hold a copy of the best candidate so far only (one extra copy at most); the
            # last candidate is always the last stage, so "last" and unevaluated runs need none
            kept_state = {key: snapshot({n: p for n, p in model.named_parameters() if p.requires_grad},
                                        device=copy_device)}
        prev = key
    selected = select_checkpoint(records, params)
    if selected != len(records) - 1:
        _restore(model, records[selected], store, kept_state)
    test = dict(evaluate(model, tokenizer, "test")) if evaluate is not None else None
    return HbatRun(params=params, seed=seed, stages=records, selected=selected, test=test, accumulated=accumulated)


def _is_candidate(kind: str, params: HbatParams) -> bool:
    return params.select_over == "all" or not params.preference or kind == "dpo"


def select_checkpoint(records: Sequence[StageRecord], params: HbatParams) -> int:
    """Index of the kept checkpoint: the best ``select_by`` validation score among the candidate
    stages (later stages win ties); the last candidate with ``select_by="last"`` or no scores."""
    candidates = [r.index for r in records if _is_candidate(r.kind, params)]
    if params.select_by == "last" or any(params.select_by not in records[i].validation for i in candidates):
        return candidates[-1]
    return max(candidates, key=lambda i: (records[i].validation[params.select_by], i))


def _restore(model, record: StageRecord, store: Path | None, kept: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    if store is not None:
        if load_stage(store / "stages" / record.key, model) is None:
            raise HbatError(f"stage {record.index} ({record.key}) is missing from the store {store}")
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in kept[record.key].items():
            params[name].copy_(value)
