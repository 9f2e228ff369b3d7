"""Notebook 04's experiment: the HbAT family (the Table 4 methods, the Figure 2 sweeps over N and Fmax) on
the world's alignment-tax conflict, every run cached by a key of everything it depends on, so a rerun or a
killed notebook redoes nothing finished.

The world supplies the conflict (its ``conflict`` capability; the tiny world's is
:mod:`mfnb.worlds.tiny.conflict`). A conflict offers ``params`` (validated, part of every run's key),
``split_prompts(train_prompts, seed)`` -> disjoint (SFT, preference) prompts, ``sft_rows(prompts)``,
``preference_rows(prompts, seed)``, ``references(prompts)`` (the win rate's opponents), the scores
``quality``, ``reward`` and ``overall(prompt, response)``, ``judge(tie_margin)`` and
``scores(prompts, responses, judge, delta)``; its ``params`` carry ``n_sft`` and ``n_pref``.
Tables and verdicts are :mod:`mfnb.hbat.report`, figures :mod:`mfnb.hbat.plots`, Table 7
:mod:`mfnb.hbat.efficiency`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from mfnb.core import paths
from mfnb.core.atomic import write_json
from mfnb.core.params import ParamsError
from mfnb.core.progress import progress as progress_bar
from mfnb.hbat.algorithm import run_hbat
from mfnb.hbat.config import HbatNotebookParams, method_params
from mfnb.hbat.store import clean_store, digest
from mfnb.models import attach_lora, generate
from mfnb.worlds import make_world, require


class HbatExperiment:
    """Runs of the HbAT family on the conflict world, each cached by a key of everything it depends on.

    ``store``: the run store (records, stage weights, Fisher estimates); default
    ``<cache>/runs/<profile>/04_hbat`` (:func:`mfnb.core.paths.cache_dir`), never under ``results/``. The keys
    do not depend on where it is."""

    def __init__(self, params: HbatNotebookParams, world=None, store: str | Path | None = None):
        self.P = params
        self.world = make_world(world if world is not None else params.world)
        self.conflict = require(self.world, "conflict", field="conflict", notebook="04")(params.conflict)
        params.check_sizes(self.conflict.params.n_sft, self.conflict.params.n_pref)
        if params.init_role not in self.world.roles:
            raise ParamsError(f"parameter 'init_role': {params.init_role!r} is not a role of this world "
                              f"(roles: {self.world.roles})")
        self.hbat = params.hbat
        self.lora = params.lora
        self.sampling = params.sampling
        # run state (stage weights: a full model copy per stage; records; Fisher estimates) is cache, not
        # results: <cache>/runs/<profile>/04_hbat, as notebook 02's run store; ``store`` redirects it
        self.store = Path(store) if store else paths.cache_dir("runs", params.profile, "04_hbat")
        self.prompts = {"validation": self.world.prompts["validation"][: params.n_validation],
                        "test": self.world.prompts["test"][: params.n_test]}
        self.judge = self.conflict.judge(params.tie_margin)
        self._tokenizer = None
        self.records: list[dict] = []          # every record this experiment returned, in order
        self.eval_key = digest({"conflict": self.conflict.params.model_dump(), "sampling": self.sampling.model_dump(),
                                "prompts": self.prompts, "tie_margin": params.tie_margin, "delta": params.delta})
        if params.torch_threads:
            import torch

            torch.set_num_threads(params.torch_threads)

    # -- one run ----------------------------------------------------------------------------------

    def data(self, seed: int) -> tuple[list[dict], list[dict]]:
        sft_prompts, pref_prompts = self.conflict.split_prompts(self.world.prompts["train"], seed)
        return self.conflict.sft_rows(sft_prompts), self.conflict.preference_rows(pref_prompts, seed)

    def init_key(self) -> str:
        """Identifies the initial weights (the world's ``identity`` of ``init_role``, and the LoRA setting)."""
        lora = None if self.lora is None else self.lora.model_dump()
        return digest({**self.world.identity(self.P.init_role), "lora": lora})

    def load_initial(self):
        """A fresh copy of the initial model (with a new LoRA adapter when ``lora`` is set)."""

        model, tokenizer = self.world.load(self.P.init_role)
        if self._tokenizer is None:  # one tokenizer for every run of the experiment
            self._tokenizer = tokenizer
        return attach_lora(model, self.lora) if self.lora is not None else model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.world.load(self.P.init_role)[1]
        return self._tokenizer

    def evaluate(self, model, tokenizer, split: str) -> dict:
        prompts = self.prompts[split]
        responses = generate(model, tokenizer, prompts, self.sampling, seed=0, desc=f"eval {split}", show_progress=False)
        out = self.conflict.scores(prompts, responses, self.judge, self.P.delta)
        per_prompt = out.pop("per_prompt")
        if split == "test":   # kept for the test split only: a single seed's claims pair runs over its prompts
            out["samples"] = [[p, r] for p, r in zip(prompts[:8], responses[:8])]
            out["per_prompt"] = per_prompt
        return out

    def run(self, label: str, hbat_params, seed: int) -> dict:
        """One run's record (test scores of the kept checkpoint, stage table, importances), cached."""
        sft_rows, pref_rows = self.data(seed)
        key = digest({"init": self.init_key(), "params": hbat_params.model_dump(), "seed": seed,
                      "data": digest([sft_rows, pref_rows]), "eval": self.eval_key})
        target = self.store / "records" / f"{key}.json"
        if target.is_file():
            record = json.loads(target.read_text())
            record["label"] = label
            self.records.append(record)
            return record
        model = self.load_initial()
        run = run_hbat(model, self.tokenizer, sft_rows, pref_rows, hbat_params, seed=seed, store=self.store,
                       init_key=self.init_key(), evaluate=self.evaluate, eval_key=self.eval_key, launch=self.P.launch)
        test = dict(run.test)
        selected = run.stages[run.selected].validation
        record = {"key": key, "label": label, "seed": seed, "n_splits": hbat_params.n_splits,
                  "constraint": hbat_params.constraint, "importance_kind": hbat_params.ewc.importance,
                  "fmax": hbat_params.ewc.fmax, "lam": hbat_params.ewc.lam,
                  "importance_seconds": sum(s.importance_seconds for s in run.stages), "state_bytes": run.state_bytes,
                  "cpu_seconds": run.cpu_seconds,
                  **{f"val_{k}": selected.get(k) for k in ("quality", "reward", "win_rate")},
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
        return method_params(self.hbat, method, **ewc_or_top)

    def table4_runs(self, progress: bool = True):
        import pandas as pd

        jobs = [(m, s) for s in self.P.seeds for m in self.P.methods]
        rows = [self.run(m, self.method_params(m), s) for m, s in progress_bar(jobs, desc="Table 4 runs", disable=not progress)]
        return pd.DataFrame([_flat(r, method=r["label"]) for r in rows])

    def grid_runs(self, progress: bool = True):
        import pandas as pd

        jobs = [("N", n, dict(n_splits=n)) for n in self.P.n_grid] + \
               [("Fmax", f, dict(fmax=float(f))) for f in self.P.fmax_grid]
        jobs = [(axis, value, changes, s) for axis, value, changes in jobs for s in self.P.grid_seeds]
        rows = []
        for axis, value, changes, seed in progress_bar(jobs, desc="Figure 2 runs", disable=not progress):
            record = self.run("HbAT", self.method_params("HbAT", **changes), seed)
            rows.append(_flat(record, axis=axis, value=value))
        dpo = [self.run("DPO", self.method_params("DPO"), s) for s in self.P.grid_seeds]
        rows += [_flat(r, axis="DPO", value=math.nan) for r in dpo]
        return pd.DataFrame(rows)

    def lambda_runs(self, progress: bool = True):
        """HbAT at each lambda of ``lam_grid`` (N and Fmax as in ``hbat``), and two-stage DPO, on
        ``grid_seeds``; each row also carries the kept checkpoint's validation scores (``val_*``)."""
        import pandas as pd

        jobs = [(lam, s) for lam in self.P.lam_grid for s in self.P.grid_seeds]
        rows = [_flat(self.run("HbAT", self.method_params("HbAT", lam=float(lam)), s), axis="lambda", value=lam)
                for lam, s in progress_bar(jobs, desc="lambda runs", disable=not progress)]
        rows += [_flat(self.run("DPO", self.method_params("DPO"), s), axis="DPO", value=math.nan)
                 for s in self.P.grid_seeds]
        return pd.DataFrame(rows)

    def clean(self) -> int:
        return 0 if self.P.keep_weights else clean_store(self.store)

    def samples_table(self, records: Sequence[dict], n: int = 6):
        """The first test prompts with the conflict's reference answer and each record's response."""
        import pandas as pd

        table = {}
        for r in records:
            for i, (prompt, response) in enumerate(r.get("samples", [])[:n]):
                row = table.setdefault(i, {"prompt": prompt, "reference": self.conflict.references([prompt])[0]})
                row[r["label"]] = response
        return pd.DataFrame(list(table.values()))


def _flat(record: dict, **extra) -> dict:
    keep = ("seed", "n_splits", "constraint", "importance_kind", "fmax", "lam", "quality", "reward", "win_rate",
            "win_low", "win_high", "val_quality", "val_reward", "val_win_rate", "n", "train_seconds", "cpu_seconds",
            "importance_seconds", "state_bytes", "selected_stage", "n_stages", "key")
    return {**extra, **{k: record.get(k) for k in keep}}
