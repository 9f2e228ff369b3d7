"""What each notebook will sample, train and judge, counted from its params as its package's code does it.

One row (an :class:`Item`) per piece of work: the responses generated (an upper bound on tokens: each at its
``max_new_tokens`` cap), the training runs (rows x epochs, sequences of at most ``max_length`` tokens, optimizer
steps), and the pairs sent to the judge (an LLM judge asks each pair in both orders: two requests; alpaca_eval's
annotator asks each pair once, in an order it randomises: one request). Counts are
what the code asks for with a cold cache; a run whose cache already holds responses, stages or verdicts, or whose
models happen to give identical answers (the judge cache answers repeated pairs), asks for less. Notebook 02's
work depends on the course its traces take, so it is scaled from a finished run's ledger
(:mod:`mfnb.multifidelity.estimate`), not counted here.

Where a count needs a dataset's size that no params field gives (a ``null`` meaning "all of it"), the size comes
from ``sizes`` (:data:`DATASET_SIZES` by default), and the row says so.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mfnb.core.params import ParamsError

#: Rows of the papers' datasets that a params field set to null means in full (from each dataset's card).
DATASET_SIZES: dict[str, tuple[int, str]] = {
    "ultrafeedback.train_prefs": (61_135, "HuggingFaceH4/ultrafeedback_binarized's card: train_prefs 61,135 rows"),
    "ultrafeedback.test_prefs": (2_000, "HuggingFaceH4/ultrafeedback_binarized's card: test_prefs 2,000 rows"),
    "alpaca_eval.eval": (805, "tatsu-lab/alpaca_eval: 805 instructions"),
    "alpaca_farm.sft": (10_000, "tatsu-lab/alpaca_farm: 10,000 SFT demonstrations"),
    "alpaca_farm.human_preference": (9_691, "tatsu-lab/alpaca_farm: 9,691 human preference rows"),
    "alpaca_farm.evaluation": (805, "tatsu-lab/alpaca_farm: 805 evaluation instructions"),
}


@dataclass
class Item:
    """One piece of a notebook's work. ``judge``: the spec of the judge that judges ``judge_pairs`` (None: none)."""

    notebook: str
    item: str
    source: str = "params"
    responses: int = 0                 # generated responses
    max_new_tokens: int = 0            # each response's cap
    judge_pairs: int = 0
    judge: dict | None = None
    train_kind: str = ""               # dpo | sft | "" (no training)
    training_runs: int = 0             # SFT / DPO steps (one launch each under accelerate launch)
    train_rows: int = 0                # examples (DPO: pairs) over all runs, one epoch each
    train_sequences: float = 0.0       # sequences through the model: rows x epochs (x 2 for DPO: chosen and rejected)
    max_length: int = 0
    optimizer_steps: int = 0
    full_ft: bool = False              # full fine-tuning (else LoRA)
    extrapolations: int = 0            # full-model folders written by ExPO's weight extrapolation (one at a time)
    extrapolated_gb: float = 0.0       # their bytes written in all, in GB (from the parameter count in the hub name)
    note: str = ""

    @property
    def judge_requests(self) -> int:
        """Requests to an LLM judge: every pair in both orders for the pairwise judge (``kind: openai``), once for
        alpaca_eval's annotator (``kind: alpaca_eval``); other judges make none."""
        kind = (self.judge or {}).get("kind")
        return 2 * self.judge_pairs if kind == "openai" else self.judge_pairs if kind == "alpaca_eval" else 0

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out["judge_requests"] = self.judge_requests
        out["judge_kind"] = (self.judge or {}).get("kind", "")
        out["judge_model"] = (self.judge or {}).get("model", "")
        return out


@dataclass
class Sizes:
    """Dataset sizes used by the counts, and which of them were needed (printed beside the estimate)."""

    values: dict[str, tuple[int, str]] = field(default_factory=lambda: dict(DATASET_SIZES))
    used: dict[str, tuple[int, str]] = field(default_factory=dict)

    def __call__(self, name: str) -> int:
        if name not in self.values:
            raise ParamsError(f"dataset size {name!r}: unknown; give it with --size {name}=N")
        self.used[name] = self.values[name]
        return self.values[name][0]

    def set(self, name: str, value: int, source: str) -> None:
        self.values[name] = (int(value), source)


def _steps(rows: int, batch_size: int, grad_accum: int, epochs: float) -> int:
    """Optimizer steps of one run (the Trainer's ceil(epochs * ceil(rows / global batch)))."""
    return math.ceil(epochs * math.ceil(rows / (batch_size * grad_accum))) if rows else 0


def _world_kind(world: Mapping) -> str:
    return world.get("kind", "tiny")


def split_size(world: Mapping, split: str, sizes: Sizes) -> int:
    """Prompts in a world's ``validation`` or ``test`` split, from its params (and a dataset's size where the
    params leave it to the data)."""
    kind = _world_kind(world)
    if kind == "tiny":
        return int(world.get(f"n_{split}", 200 if split == "validation" else 500))
    if kind == "smol":
        instructions = world.get("instructions") or {}
        return int(instructions.get(f"n_{split}", 200 if split == "validation" else 500))
    if kind == "paper":
        data = world.get("data") or {}
        dataset = data.get("dataset")
        if dataset == "rm_static":
            return int(data.get(f"n_{split}", 200 if split == "validation" else 500))
        if dataset == "ultrafeedback":
            if split == "validation":
                return int(data["n_dev"]) if data.get("n_dev") else sizes("ultrafeedback.test_prefs")
            return sizes("alpaca_eval.eval") if data.get("test", "alpaca_eval") == "alpaca_eval" else \
                (int(data["n_dev"]) if data.get("n_dev") else sizes("ultrafeedback.test_prefs"))
        if dataset == "alpaca_farm":
            n_val = int(data.get("n_validation", 200))
            return n_val if split == "validation" else sizes("alpaca_farm.evaluation") - n_val
        if dataset == "tldr":
            raise ParamsError(f"world.data.dataset 'tldr': its split sizes follow eval_fraction of the dataset; "
                              f"give n_{split} in the notebook's params")
    raise ParamsError(f"world.kind {kind!r}: the estimate does not know its split sizes")


# ------------------------------------------------------------------------------------------ alpaca_eval

#: Dollars per million input / output tokens of the models alpaca_eval's annotators call (its configs give none).
ANNOTATOR_PRICES: dict[str, tuple[float, float, str]] = {
    "gpt-4-1106-preview": (10.0, 30.0, "OpenAI's list price of gpt-4-1106-preview (GPT-4 Turbo): $10 / $30 per "
                                       "million input / output tokens"),
}
# weighted_alpaca_eval_gpt4_turbo's configs.yaml in alpaca_eval 0.6.6, used where the package is not installed
_DEFAULT_ANNOTATOR = {"model_name": "gpt-4-1106-preview", "max_tokens": 1, "logprobs": True, "top_logprobs": 5,
                      "template_chars": 1_365, "batch_size": 1}


def alpaca_eval_judge(spec) -> dict:
    """The judge spec (as the items carry it) of notebook 03's ``alpaca_eval`` block: its annotator's model,
    answer length, prompt template and batch size read from the installed alpaca_eval's ``evaluators_configs``
    (without importing alpaca_eval; alpaca_eval 0.6.6's ``weighted_alpaca_eval_gpt4_turbo`` where it is not
    installed), prices from :data:`ANNOTATOR_PRICES`. ``AlpacaEvalJudge.annotate`` sends one request per pair
    (``batch_size`` 1: the instruction, the baseline's output and the model's, in an order alpaca_eval
    randomises), answered with one token and its top log-probabilities."""
    import importlib.util

    import yaml

    name = getattr(spec, "annotator", "weighted_alpaca_eval_gpt4_turbo")
    config, template, source = dict(_DEFAULT_ANNOTATOR), None, "alpaca_eval 0.6.6's config (not installed here)"
    found = importlib.util.find_spec("alpaca_eval")
    if found and found.submodule_search_locations:
        root = Path(list(found.submodule_search_locations)[0]) / "evaluators_configs"
        file = root / name / "configs.yaml"
        if file.is_file():
            cfg = (yaml.safe_load(file.read_text()) or {}).get(name, {})
            kwargs = cfg.get("completions_kwargs") or {}
            config = {"model_name": kwargs.get("model_name", config["model_name"]),
                      "max_tokens": kwargs.get("max_tokens", config["max_tokens"]),
                      "logprobs": bool(kwargs.get("logprobs")), "top_logprobs": kwargs.get("top_logprobs"),
                      "batch_size": int(cfg.get("batch_size", 1))}
            if (root / cfg.get("prompt_template", "")).is_file():
                template = (root / cfg["prompt_template"]).read_text()
            source = f"alpaca_eval's {file.relative_to(root.parent.parent)}"
    if config.get("batch_size", 1) != 1:
        raise ParamsError(f"alpaca_eval.annotator {name!r}: batch_size {config['batch_size']} (several pairs per "
                          "request) is not counted by the estimate")
    model = config["model_name"]
    price_in, price_out, price_source = ANNOTATOR_PRICES.get(model, (0.0, 0.0, f"no price known for {model}: $0"))
    return {"kind": "alpaca_eval", "model": f"alpaca_eval:{name} ({model})", "annotator": name,
            "verdict": "logprobs" if config.get("logprobs") else "text", "max_tokens": config["max_tokens"],
            "template": template if template is not None else "x" * config.get("template_chars", 0),
            "input_price": price_in, "output_price": price_out, "price_source": price_source,
            "config_source": source, "concurrency": spec.concurrency, "base_url": spec.base_url}


#: A parameter count in a hub name ("tulu-2-dpo-70b", "Starling-LM-7B-beta"): billions.
_BILLIONS = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z0-9])")
#: Bytes per parameter of a checkpoint stored in bf16 (the extrapolated folder keeps the aligned model's dtype).
BYTES_PER_PARAMETER = 2


def model_billions(world: Mapping, role: str) -> float | None:
    """The role's parameter count in billions, from its hub name (None where the name gives none)."""
    spec = ((world.get("roles") or {}).get(role) or {})
    hit = _BILLIONS.search(str(spec.get("model") or ""))
    return float(hit.group(1)) if hit else None


def _generated(notebook: str, item: str, responses: int, sampling, **kw) -> Item:
    return Item(notebook, item, responses=responses, max_new_tokens=sampling.max_new_tokens, **kw)


# ------------------------------------------------------------------------------------------ notebook 01


def count_01(P, sizes: Sizes) -> list[Item]:
    """Notebook 01 (:mod:`mfnb.ladder`): every chain role answers the split per sampling seed
    (``role_responses``, cached: the example and cost tables reuse them); Table 1 judges each adjacent pair of
    the chain on the split per seed; the judge check asks each judge (``judge`` and ``agreement.judges``) its
    pairs (``agreement.max_pairs`` of Table 1's, uncached, both orders)."""
    nb = "01_fidelity_winrates"
    n = split_size(P.world, P.split, sizes)
    seeds = len(P.sampling_seeds)
    steps = len(P.chain) - 1
    items = [_generated(nb, f"responses: {len(P.chain)} roles x {seeds} seeds x {n} {P.split} prompts",
                        len(P.chain) * seeds * n, P.sampling),
             Item(nb, f"Table 1: {steps} steps x {seeds} seeds x {n} pairs", judge_pairs=steps * seeds * n,
                  judge=dict(P.judge))]
    pairs = steps * seeds * n
    if P.agreement.max_pairs is not None:
        pairs = min(pairs, P.agreement.max_pairs)
    for name, spec in {"judge": dict(P.judge), **{k: dict(v) for k, v in P.agreement.judges.items()}}.items():
        items.append(Item(nb, f"judge check ({name}): {pairs} pairs", judge_pairs=pairs, judge=spec))
    return items


# ------------------------------------------------------------------------------------------ notebook 03


def count_03(P, sizes: Sizes) -> list[Item]:
    """Notebook 03 (:class:`mfnb.expo.ExpoExperiment`): one LoRA DPO adapter per data fraction and Figure 6
    control (fraction f trains on ceil(f * n) pairs), the learning-rate probe's extra adapters on all the data;
    each adapter's alpha sweep on the validation prompts (every alpha, every sweep seed; the probe's with one
    seed), the world's roles on those prompts (the paper world, which knows no quality, samples only the SFT
    role there, for its metrics on every sweep seed), Table 1's test responses (the SFT role, and every model at
    alpha 0 and at its chosen alpha, per report seed) each judged against the baseline role: by ``judge``, or,
    where ``alpaca_eval`` is set, by alpaca_eval's annotator (one request per pair). Table 2 (``off_the_shelf``,
    :meth:`mfnb.expo.ExpoExperiment.table2`): per pair, alpha 0 (the aligned model) and every alpha of its range
    on the validation prompts (first sweep seed), each nonzero alpha extrapolated into a full-model folder; then
    the aligned model and the chosen alpha (extrapolated again) on the test prompts per report seed, both judged
    against the baseline like Table 1.  Every default and control model is trained, swept and tested once per
    training seed (``train_seeds``)."""
    nb = "03_expo_alpha_curves"
    dpo = P.dpo
    if P.preference.n_pairs is not None:
        n_pairs = P.preference.n_pairs
    elif _world_kind(P.world) == "paper":
        n_pairs = sizes("ultrafeedback.train_prefs")
    else:
        raise ParamsError("preference.n_pairs: null leaves the pair count to the world's data; give a number")
    n_select = split_size(P.world, "validation", sizes)
    n_select = min(n_select, P.n_select) if P.n_select else n_select
    n_report = split_size(P.world, "test", sizes)
    n_report = min(n_report, P.n_report) if P.n_report else n_report
    rows = lambda f: max(1, math.ceil(f * n_pairs - 1e-9))
    # (fraction, lr, epochs) of every adapter the notebook trains: fractions, controls, then the probe's
    variants = [(f, dpo.lr, dpo.epochs) for f in P.fractions]
    variants += [(f, lr, dpo.epochs) for f in P.figure6.fractions for lr in P.figure6.lrs]
    variants += [(f, dpo.lr, e) for f in P.figure6.fractions for e in P.figure6.epochs]
    probe = [(1.0, lr, dpo.epochs) for lr in sorted(set(P.lr_probe) | {dpo.lr})]
    probe_new = [v for v in probe if v not in variants]
    trains = len(P.train_seeds)  # every default and control model once per training seed; the probe on the first
    items = []
    for label, group, times in (("data fractions and Figure 6 controls", variants, trains),
                                ("learning-rate probe", probe_new, 1)):
        if not group:
            continue
        n_rows = times * sum(rows(f) for f, _, _ in group)
        over = f" ({times} training seeds)" if times > 1 else ""
        items.append(Item(nb, f"DPO adapters ({label}): {times * len(group)} runs{over}, {n_rows} pairs",
                          train_kind="dpo", training_runs=times * len(group), train_rows=n_rows,
                          train_sequences=times * sum(2 * rows(f) * e for f, _, e in group), max_length=dpo.max_length,
                          optimizer_steps=times * sum(_steps(rows(f), dpo.batch_size, dpo.grad_accum, e)
                                                      for f, _, e in group),
                          full_ft=P.lora is None))
    alphas, seeds = len(P.alphas), len(P.sweep_seeds)
    swept = trains * len(variants)
    items.append(_generated(nb, f"alpha sweeps: {swept} models x {alphas} alphas x {seeds} seeds x "
                                f"{n_select} prompts", swept * alphas * seeds * n_select, P.sampling))
    if probe_new:
        items.append(_generated(nb, f"probe sweeps: {len(probe_new)} models x {alphas} alphas x {n_select} prompts",
                                len(probe_new) * alphas * n_select, P.sampling))
    # the paper world has no known quality: ExpoExperiment.role_answers (every role) is never asked for there, only
    # sft_metrics (the SFT role on every sweep seed); Table 2's roles are sampled by table2 (below)
    roles = [r for r in (P.world.get("roles") or {}) if r == P.sft_role
             and not (P.world["roles"][r] or {}).get("references")] if _world_kind(P.world) == "paper" else None
    if roles:
        role_seeds = len({P.sweep_seeds[0]} | ({*P.sweep_seeds} if P.sft_role in roles else set()))
        n_role = (len(roles) - 1) * n_select + (role_seeds * n_select if P.sft_role in roles else 0)
        named = ", ".join(roles) if len(roles) <= 4 else f"{len(roles)} roles"
        items.append(_generated(nb, f"roles on the validation prompts: {named}", n_role, P.sampling))
    # the oracle arm (alpha by the known quality) adds a row per default model where the world knows the quality
    oracle = trains * len(P.fractions) if _world_kind(P.world) != "paper" else 0
    models = 1 + 2 * trains * len(variants) + oracle
    reports = len(P.report_seeds)
    items.append(_generated(nb, f"Table 1 responses: {models} models x {reports} seeds x {n_report} test prompts",
                            models * reports * n_report, P.sampling))
    judge = alpaca_eval_judge(P.alpaca_eval) if getattr(P, "alpaca_eval", None) else dict(P.judge)
    by = f" by {judge['annotator']}" if judge.get("kind") == "alpaca_eval" else ""
    items.append(Item(nb, f"Table 1: {models} models x {reports} seeds x {n_report} pairs against {P.baseline_role}{by}",
                      judge_pairs=models * reports * n_report, judge=judge))
    pairs = list(getattr(P, "off_the_shelf", None) or [])
    for pair in pairs:
        size = model_billions(P.world, pair.aligned_role)
        gb = lambda n: n * size * BYTES_PER_PARAMETER if size else 0.0
        unsized = "" if size else f"; no parameter count in {pair.aligned_role}'s model name: its GB not counted"
        grid = 1 + len(pair.alphas)
        note = (f"{size:g}B parameters (from the name), one {size * BYTES_PER_PARAMETER:g} GB folder at a time; "
                if size else "") + "sampled by mfnb.models.generate at the sampling rate" + unsized
        items.append(_generated(nb, f"Table 2 alpha search ({pair.name}): {grid} alphas (0 and {len(pair.alphas)} "
                                    f"extrapolated) x {n_select} validation prompts", grid * n_select, P.sampling,
                                extrapolations=len(pair.alphas), extrapolated_gb=gb(len(pair.alphas)), note=note))
        items.append(_generated(nb, f"Table 2 test responses ({pair.name}): aligned and chosen alpha x {reports} seeds "
                                    f"x {n_report} test prompts", 2 * reports * n_report, P.sampling,
                                extrapolations=1, extrapolated_gb=gb(1), note=note))
    if pairs:
        items.append(Item(nb, f"Table 2: {2 * len(pairs)} models x {reports} seeds x {n_report} pairs against "
                              f"{P.baseline_role}{by}", judge_pairs=2 * len(pairs) * reports * n_report,
                          judge=judge))
    return items


# ------------------------------------------------------------------------------------------ notebook 04


def _hbat_runs(P) -> list[tuple[Any, int]]:
    """(HbatParams, seed) of every distinct run notebook 04 makes (Table 4, Figure 2, the lambda runs), as
    :class:`mfnb.hbat.HbatExperiment` does; a run with the params and seed of an earlier one is read back."""
    from mfnb.hbat.config import method_params

    def method(name: str, **changes):
        return method_params(P.hbat, name, **changes)

    jobs = [(method(m), s) for s in P.seeds for m in P.methods]
    for n in P.n_grid:
        jobs += [(method("HbAT", n_splits=n), s) for s in P.grid_seeds]
    for f in P.fmax_grid:
        jobs += [(method("HbAT", fmax=float(f)), s) for s in P.grid_seeds]
    jobs += [(method("DPO"), s) for s in P.grid_seeds]
    if P.lam_grid:
        jobs += [(method("HbAT", lam=float(lam)), s) for lam in P.lam_grid for s in P.grid_seeds]
        jobs += [(method("DPO"), s) for s in P.grid_seeds]
    seen, out = set(), []
    for params, seed in jobs:
        key = (params.model_dump_json(), seed)
        if key not in seen:
            seen.add(key)
            out.append((params, seed))
    return out


def _stage_spec(params, kind: str, constraint: str) -> tuple:
    """What a stage's cache key holds besides its place in the chain (:func:`mfnb.hbat.store.stage_key`)."""
    e = params.ewc
    spec: tuple = (kind, (params.sft if kind == "sft" else params.dpo).model_dump_json(), constraint)
    if constraint == "ewc" and e.importance != "changes":
        spec += (e.importance, e.fisher_scale, e.lam, e.lam_placement, e.accumulate, e.fmax if e.fisher_scale == "fmax" else None)
    elif constraint == "ewc":
        spec += (e.reduce, e.change_scale, e.accumulate, e.fmax, e.lam, e.lam_placement, e.min_fraction)
    elif constraint == "freeze":
        spec += (e.reduce, e.change_scale, e.accumulate, e.fmax, e.freeze_fraction)
    return spec


def _parts(n: int, n_splits: int) -> list[int]:
    bounds = [round(k * n / n_splits) for k in range(n_splits + 1)]
    return [bounds[k + 1] - bounds[k] for k in range(n_splits)]


def count_04(P, sizes: Sizes) -> list[Item]:
    """Notebook 04 (:class:`mfnb.hbat.HbatExperiment`): every distinct run of Table 4, Figure 2 and the lambda
    sweep trains Algorithm 1's stages (sft 0, dpo 0, sft 1, ...; a stage with the same chain, data part, settings
    and seed as one already trained is read back from the store, as :func:`mfnb.hbat.store.stage_key` keys it),
    samples the validation prompts after each new stage and the test prompts once per run, and judges each
    response against the references; Table 7 retrains DPO, HbAT and the original EWC ``efficiency_repeats``
    times in fresh processes (training only)."""
    from mfnb.hbat.algorithm import stage_plan

    nb = "04_hbat_ablations"
    kind = _world_kind(P.world)
    n_sft, n_pref = P.conflict.get("n_sft"), P.conflict.get("n_pref")
    if kind == "paper" and (P.world.get("data") or {}).get("dataset") == "alpaca_farm":
        n_sft = n_sft or sizes("alpaca_farm.sft")
        n_pref = n_pref or sizes("alpaca_farm.human_preference")
    if not n_sft or not n_pref:
        raise ParamsError("conflict.n_sft / conflict.n_pref: null leaves the data size to the world; give numbers")
    n_val = min(P.n_validation, split_size(P.world, "validation", sizes))
    n_test = min(P.n_test, split_size(P.world, "test", sizes))
    full = P.lora is None
    stages: set[tuple] = set()
    train = {"sft": [0, 0, 0.0, 0, 0], "dpo": [0, 0, 0.0, 0, 0]}   # runs, rows, sequences, steps, max_length
    new_stages = 0
    runs = _hbat_runs(P)

    def add(kind_: str, rows: int, params) -> None:
        step = params.sft if kind_ == "sft" else params.dpo
        t = train[kind_]
        t[0] += 1
        t[1] += rows
        t[2] += rows * step.epochs * (2 if kind_ == "dpo" else 1)
        t[3] += _steps(rows, step.batch_size, getattr(step, "grad_accum", 1), step.epochs)
        t[4] = max(t[4], step.max_length)

    for params, seed in runs:
        prev: tuple = ("init", params.n_splits)
        touched = {"sft": False, "dpo": False}
        n_rows = {"sft": _parts(n_sft, params.n_splits), "dpo": _parts(n_pref, params.n_splits)}
        for index, (kind_, part) in enumerate(stage_plan(params.n_splits, params.preference)):
            other = "dpo" if kind_ == "sft" else "sft"
            constraint = params.constraint if touched[other] else "none"
            key = (prev, part, seed * 1009 + index, seed, _stage_spec(params, kind_, constraint))
            if key not in stages:
                stages.add(key)
                new_stages += 1
                add(kind_, n_rows[kind_][part], params)
            touched[kind_] = True
            prev = key
    repeats = P.efficiency_repeats
    table7 = 0
    if repeats:
        from mfnb.hbat.config import for_method

        for name in ("DPO", "HbAT", "HbAT w/ original EWC"):
            params = for_method(P.hbat, name)
            for _ in range(repeats):
                for kind_, part in stage_plan(params.n_splits, params.preference):
                    add(kind_, _parts(n_sft if kind_ == "sft" else n_pref, params.n_splits)[part], params)
                    table7 += 1
    items = []
    for kind_, (n_runs, rows, seqs, steps, max_length) in train.items():
        if n_runs:
            items.append(Item(nb, f"{kind_.upper()} stages: {n_runs} ({rows} rows)", train_kind=kind_,
                              training_runs=n_runs, train_rows=rows, train_sequences=seqs, max_length=max_length,
                              optimizer_steps=steps, full_ft=full,
                              note=f"{table7} of the stages are Table 7's retraining" if table7 and kind_ == "dpo" else ""))
    responses = new_stages * n_val + len(runs) * n_test
    items.append(_generated(nb, f"responses: {new_stages} new stages x {n_val} validation + {len(runs)} runs x "
                                f"{n_test} test prompts", responses, P.sampling))
    items.append(Item(nb, f"win rate against the references: {responses} pairs", judge_pairs=responses,
                      judge=dict(P.conflict.get("judge") or {"kind": "oracle"})))
    return items


COUNTERS = {"01_fidelity_winrates": count_01, "03_expo_alpha_curves": count_03, "04_hbat_ablations": count_04}
