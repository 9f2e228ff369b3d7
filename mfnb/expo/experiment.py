"""Notebook 03's experiment: DPO models trained on fractions of one preference set (and the Figure 6
control), their alpha sweeps on the validation prompts, the alpha the reward model picks, Table 1 on the
test prompts, the learning-rate probe and the claims; each step a method that returns what the notebook
shows and writes.

Everything expensive is cached by a key of what shapes it, so a rerun or a killed notebook redoes nothing
finished: adapters (:func:`mfnb.expo.training.adapter_key`), responses per alpha
(:func:`mfnb.expo.sweep.sweep_responses`), the world's roles' responses
(:func:`mfnb.evaluation.role_responses`) and the judge's verdicts (its own cache). The experiment keeps what
a later step needs (the adapters, the per-prompt sweep scores, the alpha choice, the test samples'
bootstrap), so the steps run in the notebook's order: :meth:`~ExpoExperiment.train_adapters`,
:meth:`~ExpoExperiment.alpha_sweeps`, :meth:`~ExpoExperiment.choose_alpha`, :meth:`~ExpoExperiment.table1`,
then the rest.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from mfnb import evaluation
from mfnb.core.formatting import fmt
from mfnb.core.progress import progress as progress_bar
from mfnb.expo.alpha_judge import accuracy_on_pairs, accuracy_on_responses, reward_judge, sweep_pairs
from mfnb.expo.claims import (TREND_CLAIM, AlphaChoice, alpha_shift, alpha_summary, alpha_trend_claim, claims_table,
                              figure6_claims, medium_best_claim, table1_claims)
from mfnb.expo.control import Variant, control_variants
from mfnb.expo.findings import figure6_lines, length_lines, lr_lines, reward_model_lines, verdict_lines
from mfnb.expo.lora import lora_delta_norm
from mfnb.expo.report import (NOT_TRAINED, SampleStats, comparisons, departures, judged_samples, paper_table1,
                              samples_table)
from mfnb.expo.sweep import (alpha_sweep, optimal_alpha, optimal_alpha_table, response_metrics, seed_mean,
                             summarize_sweep, sweep_responses, sweep_scores)
from mfnb.expo.training import (adapter_info, adapter_path, dpo_steps, fraction_label, length_bias, load_aligned,
                                preference_rows, train_dpo_adapter)
from mfnb.stats import seed_alone_lines
from mfnb.worlds import has, make_world

if TYPE_CHECKING:
    from mfnb.expo.config import ExpoParams

PAPER_LR = 5e-7             # the paper's DPO learning rate (its Appendix B), marked in the learning-rate probe
PAPER_BEST_FRACTION = 0.2   # the paper's best data fraction after ExPO (Section 3.3): the examples show it
FULL_DATA = 1.0


class ExpoExperiment:
    """Notebook 03 on the world its parameters name (or ``world``, a world object): the world is made and
    checked here (preference data, a reward model, the roles), built by the notebook.

    ``reward``: the judge that scores responses for choosing alpha (anything with ``score(prompts,
    responses)`` and ``model_name``); None loads the parameters' ``reward_model`` in
    :meth:`load_reward_model`."""

    def __init__(self, params: ExpoParams, world=None, reward=None):
        self.P = params
        self.world = make_world(world if world is not None else params.world)
        params.check_world(self.world)
        self.judge = self._alpaca_eval_judge() if params.alpaca_eval else \
            evaluation.world_judge(self.world, params.judge, notebook="03")
        if params.torch_threads:
            import torch

            torch.set_num_threads(params.torch_threads)
        self.level = 1 - params.delta
        self.controls = control_variants(params)
        self.variants = [Variant(f) for f in params.fractions] + self.controls
        self.rm = reward
        self.seeds = list(params.train_seeds)    # every model is trained, swept and tested once per seed
        # per training seed: variant key -> adapter folder, ||delta theta|| (train_adapters), per-prompt sweep
        # scores (alpha_sweeps), and the seed's alpha choice (choose_alpha)
        self.adapters: dict[int, dict[str, Path]] = {s: {} for s in self.seeds}
        self.delta_norms: dict[int, dict[str, float]] = {s: {} for s in self.seeds}
        self.scores: dict[int, dict[str, object]] = {s: {} for s in self.seeds}
        self.choice: dict[int, AlphaChoice] = {}
        self.oracle_choice: dict[int, AlphaChoice] = {}  # alpha by the known quality (where the world knows it)
        self.all_sweeps = None                   # alpha_sweeps' table
        self.alpha_table = None                  # choose_alpha's table: one row per model and training seed
        self.stats: SampleStats | None = None    # table1's bootstrap over the test prompts
        self.test_texts: dict[int, tuple[dict, dict]] = {}  # table 1 / 2 -> (baseline, models) responses
        self.stats2: SampleStats | None = None   # table2's bootstrap over the test prompts

    def _alpaca_eval_judge(self):
        """alpaca_eval's annotator (``alpaca_eval``), checked before any work: the package, the local
        instruction-difficulty file its LC win rate needs, the key and the endpoint."""
        from mfnb.judges.alpaca_eval import AlpacaEvalJudge, difficulty_path, require_alpaca_eval

        require_alpaca_eval("alpaca_eval")
        difficulty_path(self.P.alpaca_eval.difficulty_file)
        judge = AlpacaEvalJudge(self.P.alpaca_eval)
        if has(self.world, "query"):
            judge.set_query_view(self.world.query, self.world.key)
        judge.check_access("alpaca_eval")
        return judge

    # -- prompts and the setting --------------------------------------------------------------------

    @property
    def select_prompts(self) -> list[str]:
        """The validation prompts alpha is chosen on (the paper's development set)."""
        return self.world.prompts["validation"][: self.P.n_select]

    @property
    def report_prompts(self) -> list[str]:
        """The test prompts of Table 1 (the paper's AlpacaEval 2.0)."""
        return self.world.prompts["test"][: self.P.n_report]

    @property
    def knows_quality(self) -> bool:
        return has(self.world, "quality")

    @property
    def quality_fn(self):
        return self.world.quality if self.knows_quality else None

    def departures(self):
        """The paper's setting beside ours (:func:`mfnb.expo.report.departures`)."""
        return departures(self.P, len(self.select_prompts), len(self.report_prompts))

    # -- the reward model ---------------------------------------------------------------------------

    def load_reward_model(self):
        """The reward model that picks alpha: the world's own (built or read from the cache) or a local one."""
        if self.rm is None:
            self.rm = reward_judge(self.world, self.P.reward_model)
        return self.rm

    @cached_property
    def role_answers(self) -> dict[str, list[str]]:
        """Each role's responses to the validation prompts (first sweep seed), to check the reward model on."""
        return {role: evaluation.role_responses(self.world, role, self.select_prompts, self.P.sampling,
                                                seed=self.P.sweep_seeds[0])
                for role in self.world.roles}

    def reward_model_accuracy(self):
        """The reward model's pairwise accuracy against the known quality: on pairs made like its training
        pairs (where the world makes them) and on pairs of the world's models' samples."""
        import pandas as pd

        answers, prompts = self.role_answers, self.select_prompts
        rows = []
        if has(self.world, "reward_pairs"):
            pairs = self.world.reward_pairs(list(prompts) * 5, seed=10_000)
            rows.append({"pairs_from": "perturbed answers (like its training pairs)",
                         **accuracy_on_pairs(self.rm, pairs, self.world.quality)})
        rows.append({"pairs_from": f"samples of the world's models ({', '.join(self.world.roles)})",
                     **accuracy_on_responses(self.rm, prompts, answers, self.world.quality)})
        return pd.DataFrame(rows)

    def role_scores(self):
        """Mean reward, known quality and length of each role's validation responses."""
        import pandas as pd

        return pd.DataFrame([{"model": role, **response_metrics(self.select_prompts, answers, reward_fn=self.rm.score,
                                                                quality_fn=self.world.quality)}
                             for role, answers in self.role_answers.items()])

    def accuracy_on_sweeps(self, accuracy):
        """``accuracy`` with a row for the ExPO models' own responses: for every Figure 5 model and sweep
        seed (and training seed), the response at each alpha != 0 against the one at alpha = 0 (same prompt,
        same seed)."""
        import pandas as pd

        pairs = []
        for train_seed, fraction in ((t, f) for t in self.seeds for f in self.P.fractions):
            adapter = self.adapters[train_seed][fraction_label(fraction)]
            model, tokenizer = load_aligned(self.world, self.P.sft_role, adapter)
            for seed in self.P.sweep_seeds:
                answers = sweep_responses(model, tokenizer, self.select_prompts, self.P.alphas, self.P.sampling,
                                          seed=seed, cache=adapter / "responses", progress=False)
                pairs += sweep_pairs(self.select_prompts, answers)
        if not pairs:
            return accuracy
        row = {"pairs_from": "ExPO responses at alpha vs at alpha = 0",
               **accuracy_on_pairs(self.rm, pairs, self.world.quality)}
        return pd.concat([accuracy, pd.DataFrame([row])], ignore_index=True)

    # -- the DPO models -----------------------------------------------------------------------------

    @property
    def preference_rows(self) -> list[dict]:
        """The full preference set in the first training seed's order (each fraction trains on a prefix)."""
        return self.seed_preference_rows(self.seeds[0])

    def seed_preference_rows(self, train_seed: int) -> list[dict]:
        """The full preference set in ``train_seed``'s order (:func:`mfnb.expo.training.preference_rows`)."""
        cache = self.__dict__.setdefault("_preference_rows", {})
        if train_seed not in cache:
            cache[train_seed] = preference_rows(self.world, self.P.preference, train_seed)
        return cache[train_seed]

    def train_adapters(self, progress: bool = True):
        """One LoRA DPO adapter per data fraction and control model and training seed, trained where not
        cached; a row each: model, training seed, data, pairs, learning rate, epochs, steps, training loss and
        margin, ||delta theta||, seconds, and whether it came from the cache."""
        import pandas as pd

        rows = []
        runs = [(seed, v) for seed in self.seeds for v in self.variants]
        for seed, v in progress_bar(runs, desc="DPO per data fraction, control model and training seed",
                                    disable=not progress):
            path = adapter_path(self.world, self.P, v.fraction, v.lr, epochs=v.epochs, seed=seed)
            cached = (path / "dpo.json").is_file()
            self.adapters[seed][v.key] = train_dpo_adapter(self.world, self.P, v.fraction, lr=v.lr, epochs=v.epochs,
                                                           rows=self.seed_preference_rows(seed), seed=seed)
            model, _ = load_aligned(self.world, self.P.sft_role, self.adapters[seed][v.key])
            norm = self.delta_norms[seed][v.key] = lora_delta_norm(model)
            rows.append(self._run_row(v, seed, adapter_info(self.adapters[seed][v.key]), norm, cached))
        return pd.DataFrame(rows)

    def _run_row(self, v: Variant, seed: int, info: dict, delta_norm: float, cached: bool) -> dict:
        metrics = info.get("metrics", {})
        return {"model": v.key, "train_seed": seed, "data": fraction_label(v.fraction), "control": v.change or "-",
                "pairs": info["pairs"], "lr": info["lr"], "epochs": info.get("epochs", self.P.dpo.epochs),
                "steps": info.get("steps", dpo_steps(info["pairs"], self.P.dpo)),
                "train_loss": metrics.get("train_loss"), "reward_margin": metrics.get("rewards/margins"),
                "delta_norm": delta_norm, "train_seconds": info["seconds"], "cached": cached}

    # -- Figure 5: the alpha sweeps -----------------------------------------------------------------

    def alpha_sweeps(self, progress: bool = True):
        """Every DPO model (the control's too) of every training seed at every alpha of the grid on the
        validation prompts: one row per model, training seed and alpha with the mean reward, known quality and
        length (Figure 5's lines; :func:`mfnb.expo.sweep.seed_mean` averages the seeds)."""
        import pandas as pd

        runs = [(seed, v) for seed in self.seeds for v in self.variants]
        for seed, v in progress_bar(runs, desc="alpha sweeps", disable=not progress):
            adapter = self.adapters[seed][v.key]
            model, tokenizer = load_aligned(self.world, self.P.sft_role, adapter)
            self.scores[seed][v.key] = sweep_scores(model, tokenizer, self.select_prompts, self.P.alphas,
                                                    self.P.sampling, seeds=self.P.sweep_seeds, reward_fn=self.rm.score,
                                                    quality_fn=self.quality_fn, cache=adapter / "responses",
                                                    progress=False)  # one bar over the models: a step is one sweep
        self.all_sweeps = pd.concat([summarize_sweep(self.scores[seed][v.key]).assign(
            model=v.key, train_seed=seed, data=fraction_label(v.fraction), fraction=v.fraction,
            control=v.change or "-", delta_norm=self.delta_norms[seed][v.key]) for seed, v in runs], ignore_index=True)
        return self.all_sweeps

    @property
    def sweeps(self):
        """The default models' rows of :meth:`alpha_sweeps` (Figure 5; the control's are Figure 6's)."""
        return self.all_sweeps[self.all_sweeps["control"] == "-"].reset_index(drop=True)

    @cached_property
    def sft_metrics(self) -> dict:
        """The SFT model's mean reward, known quality and length on the same prompts and seeds."""
        responses = [r for s in self.P.sweep_seeds for r in evaluation.role_responses(
            self.world, self.P.sft_role, self.select_prompts, self.P.sampling, seed=s)]
        return response_metrics(list(self.select_prompts) * len(self.P.sweep_seeds), responses,
                                reward_fn=self.rm.score, quality_fn=self.quality_fn)

    def choose_alpha(self):
        """The reward-optimal alpha of every model and training seed with its interval over the validation
        prompts (the choice redone in every bootstrap replicate; the same resampled prompts for every seed),
        and ||delta theta|| before and after extrapolation."""
        import pandas as pd

        self.choice = {seed: AlphaChoice(self.scores[seed], n_boot=self.P.n_boot, seed=self.P.boot_seed,
                                         level=self.level) for seed in self.seeds}
        if self.knows_quality:  # the oracle arm: ExPO tested apart from its reward model (default models only)
            self.oracle_choice = {seed: AlphaChoice({v.key: self.scores[seed][v.key] for v in self.variants
                                                     if v.is_default}, n_boot=self.P.n_boot, seed=self.P.boot_seed,
                                                    level=self.level, metric="quality") for seed in self.seeds}
        tables = [c.table(self.delta_norms[seed]).assign(train_seed=seed) for seed, c in self.choice.items()]
        table = pd.concat(tables, ignore_index=True)
        self.alpha_table = table[["model", "train_seed"] + [c for c in table if c not in ("model", "train_seed")]]
        return self.alpha_table

    def seed_chosen(self, train_seed: int) -> dict[str, float]:
        """Model key -> the alpha the reward model chose for ``train_seed``'s model (:meth:`choose_alpha`)."""
        return {k: self.choice[train_seed].point[k] for k in self.choice[train_seed].point}

    def seed_oracle_chosen(self, train_seed: int) -> dict[str, float]:
        """Default model key -> the alpha the known quality chose for ``train_seed``'s model ({} without one)."""
        choice = self.oracle_choice.get(train_seed)
        return dict(choice.point) if choice is not None else {}

    @property
    def chosen(self) -> dict[str, float]:
        """Model key -> the alpha the reward model chose (the median over training seeds: what the figures mark)."""
        import numpy as np

        return {k: float(np.median([self.seed_chosen(s)[k] for s in self.seeds])) for k in self.seed_chosen(self.seeds[0])}

    def alpha_summary(self):
        """Per model: its optimal alpha over the training seeds (mean, interval crossed over seeds and validation
        prompts; one seed: the choice and its interval), ||delta theta|| and (1 + alpha) ||delta theta||."""
        return alpha_summary(self.choice, self.delta_norms)

    def quality_best_alphas(self) -> dict[str, float] | None:
        """Data label -> the alpha best by known quality on the seed-averaged curves (what Figure 5 marks
        dotted), or None where the world knows no quality."""
        if not self.knows_quality:
            return None
        table = optimal_alpha_table(seed_mean(self.sweeps))
        return dict(zip(table["data"], table["alpha_by_quality"]))

    def optimal_alphas(self):
        """Per data fraction and training seed: the alpha by reward (with its interval) and by known quality,
        the values at alpha = 0 and at the choice, the update's size, and the paper's optimal alpha."""
        interval = self.alpha_table.rename(columns={"model": "data"})[
            ["data", "train_seed", "alpha_low", "alpha_high", "delta_norm", "extrapolated_norm"]]
        return optimal_alpha_table(self.sweeps).merge(interval, on=["data", "train_seed"], how="left")

    # -- Figure 6: the control ----------------------------------------------------------------------

    @property
    def control_keys(self) -> list[str]:
        """Figure 6's sweeps: each control model after the default model of its fraction."""
        return [k for v in self.controls for k in (v.default.key, v.key)]

    def alpha_shift(self):
        """Each control model's optimal alpha against its default model's (:func:`mfnb.expo.claims.alpha_shift`)."""
        return alpha_shift(self.choice, self.controls)

    # -- Table 1 on the test prompts ----------------------------------------------------------------

    def role_test_responses(self, role: str) -> dict[int, list[str]]:
        """Seed -> one of the world's roles' responses to the test prompts."""
        return {s: evaluation.role_responses(self.world, role, self.report_prompts, self.P.sampling, seed=s)
                for s in self.P.report_seeds}

    def test_responses(self, key: str, alphas, train_seed: int | None = None) -> dict[float, dict[int, list[str]]]:
        """Alpha -> seed -> the responses of model ``key`` (of ``train_seed``, the first by default)
        extrapolated by alpha, on the test prompts."""
        adapter = self.adapters[self.seeds[0] if train_seed is None else train_seed][key]
        model, tokenizer = load_aligned(self.world, self.P.sft_role, adapter)
        per_seed = {s: sweep_responses(model, tokenizer, self.report_prompts, alphas, self.P.sampling, seed=s,
                                       cache=adapter / "responses", progress=False)
                    for s in self.P.report_seeds}
        return {a: {s: per_seed[s][a] for s in self.P.report_seeds} for a in alphas}

    def test_models(self, train_seed: int, progress: bool = True) -> tuple[dict, dict]:
        """(Table 1 row -> seed -> test responses, Table 1 row -> its alpha) for one training seed: every DPO
        model without and with ExPO at its chosen alpha (and, where the world knows the quality, at the alpha the
        quality chose: the oracle arm), the full data first, the control last."""
        models, alphas, chosen = {}, {}, self.seed_chosen(train_seed)
        oracle = self.seed_oracle_chosen(train_seed)
        order = sorted(self.variants, key=lambda v: (v.is_default, v.fraction), reverse=True)
        for v in progress_bar(order, desc=f"test responses (training seed {train_seed})", disable=not progress):
            rows = [(v.name(), 0.0), (v.name(expo=True), chosen[v.key])]
            rows += [(v.name(oracle=True), oracle[v.key])] if v.key in oracle else []
            answers = self.test_responses(v.key, sorted({a for _, a in rows}), train_seed)
            for name, alpha in rows:
                models[name], alphas[name] = answers[alpha], alpha
        return models, alphas

    def table1(self, progress: bool = True):
        """Table 1: the SFT model and every model of every training seed against the baseline role on the test
        prompts (the same sampling seed for both), judged, with intervals over prompts (paired) and training
        seeds, the paper's numbers beside; a row's alpha is the median of its seeds' choices."""
        import numpy as np
        import pandas as pd

        baseline = self.role_test_responses(self.P.baseline_role)
        sft = {"SFT": self.role_test_responses(self.P.sft_role)}
        common = dict(reward_fn=self.rm.score, quality_fn=self.quality_fn, progress=progress)
        frames = [judged_samples(self.judge, self.report_prompts, baseline, sft, **common)]
        per_seed = {}
        for seed in self.seeds:
            models, alphas = per_seed[seed] = self.test_models(seed, progress)
            frames.append(judged_samples(self.judge, self.report_prompts, baseline, models, train_seed=seed, **common))
        first = per_seed[self.seeds[0]][0]
        self.test_texts[1] = (baseline, {**sft, **first})
        self.stats = SampleStats(pd.concat(frames, ignore_index=True), n_boot=self.P.n_boot, seed=self.P.boot_seed,
                                 level=self.level)
        alphas = {"SFT": -1.0, **{name: float(np.median([per_seed[s][1][name] for s in self.seeds])) for name in first}}
        table = samples_table(self.stats, ["SFT", *first], alphas=alphas)
        if len(self.seeds) > 1:
            table.insert(2, "alpha_per_seed", ["" if n == "SFT" else ", ".join(f"{per_seed[s][1][n]:g}" for s in self.seeds)
                                               for n in table["model"]])
        return table

    # -- AlpacaEval 2.0 as the paper scored it (``alpaca_eval``) ---------------------------------------

    @property
    def instructions(self) -> list[str]:
        """The test prompts' own text (AlpacaEval's instructions, in its order, in the paper world)."""
        query = self.world.query if has(self.world, "query") else (lambda p: p)
        return [query(p) for p in self.report_prompts]

    def alpaca_eval_table(self, table: int = 1):
        """Per row of Table ``table`` (1 or 2; first report seed): alpaca_eval's win rate and LC win rate
        (``get_length_controlled_winrate`` with ``alpaca_eval.glm`` on the annotations that table made), our LC win
        rate on the same annotations, and the paper's numbers, labelled ``paper_*``."""
        import pandas as pd

        from mfnb.expo.off_the_shelf import paper_table2
        from mfnb.judges.alpaca_eval import length_controlled

        if self.P.alpaca_eval is None or table not in self.test_texts:
            raise RuntimeError(f"alpaca_eval_table({table}) needs alpaca_eval in the params and table{table}() run first")
        spec, seed = self.P.alpaca_eval, self.P.report_seeds[0]
        baseline, models = self.test_texts[table]
        stats = self.stats if table == 1 else self.stats2
        paper = paper_table1() if table == 1 else {
            f"{name}+ExPO" if expo_on else name: v for (name, expo_on), v in paper_table2().items()}
        rows = []
        for name, by_seed in models.items():
            sub = stats.samples[(stats.samples["model"] == name) & (stats.samples["seed"] == seed)
                                & stats.samples["train_seed"].isin([self.seeds[0], NOT_TRAINED])]
            prefs = sub.sort_values("prompt")["outcome"].tolist()
            ae = length_controlled(self.instructions, by_seed[seed], baseline[seed], prefs,
                                   difficulty_file=spec.difficulty_file, glm=spec.glm, generator=name)
            rows.append({"model": name, "annotations": ae["n"], "win_rate": ae["win_rate"],
                         "lc_win_rate": ae["lc_win_rate"], "lc_standard_error": ae["lc_standard_error"],
                         "lc_win_rate_ours": stats.stat(name, "lc_win_rate")[0],
                         **{k: v for k, v in paper.get(name, {}).items() if k != "paper_reward"}})
        return pd.DataFrame(rows)

    def write_alpaca_eval_outputs(self, folder, table: int = 1) -> list:
        """Every row's test responses of Table ``table`` (first report seed) and the baseline's in AlpacaEval's
        format, one JSON file per model in ``folder``, so that the official evaluator can be rerun on them."""
        from mfnb.judges.alpaca_eval import BASELINE, write_model_outputs

        baseline, models = self.test_texts[table]
        seed = self.P.report_seeds[0]
        files = [write_model_outputs(Path(folder) / f"{BASELINE}.json", self.instructions, baseline[seed], BASELINE)]
        for name, by_seed in models.items():
            slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            files.append(write_model_outputs(Path(folder) / f"{slug}.json", self.instructions, by_seed[seed], name))
        return files

    # -- Table 2: off-the-shelf pairs ---------------------------------------------------------------

    def table2(self, progress: bool = True):
        """Table 2: each ``off_the_shelf`` pair's aligned model, extrapolated in full weights at every alpha of
        its range on the validation prompts (first sweep seed), the alpha with the highest mean reward chosen,
        then the aligned model and its chosen extrapolation scored on the test prompts like Table 1.
        Returns (the alpha search: one row per pair and alpha, Table 2 with the paper's numbers beside)."""
        import numpy as np
        import pandas as pd

        from mfnb.expo.off_the_shelf import pair_responses, paper_alpha, paper_table2

        device = self.P.world.get("device", "auto") if isinstance(self.P.world, dict) else "auto"
        baseline = self.role_test_responses(self.P.baseline_role)
        seed, prompts = self.P.sweep_seeds[0], list(self.select_prompts)
        search, models, alphas = [], {}, {}
        for pair in progress_bar(self.P.off_the_shelf, desc="Table 2: off-the-shelf pairs", disable=not progress):
            grid = [0.0] + list(pair.alphas)
            dev = pair_responses(self.world, pair, grid, prompts, self.P.sampling, seeds=[seed], device=device)
            means = {a: float(np.mean(self.rm.score(prompts, dev[a][seed]))) for a in grid}
            best = max(pair.alphas, key=lambda a: (means[a], -a))  # the smallest alpha on a tie
            search += [{"model": pair.name, "alpha": a, "reward": means[a],
                        "length_words": float(np.mean([len(r.split()) for r in dev[a][seed]])),
                        "chosen": a == best, "paper_optimal_alpha": paper_alpha(pair.name)} for a in grid]
            test = pair_responses(self.world, pair, [0.0, best], self.report_prompts, self.P.sampling,
                                  seeds=self.P.report_seeds, device=device)
            models[pair.name], alphas[pair.name] = test[0.0], 0.0
            models[f"{pair.name}+ExPO"], alphas[f"{pair.name}+ExPO"] = test[best], best
        self.test_texts[2] = (baseline, models)
        samples = judged_samples(self.judge, self.report_prompts, baseline, models, reward_fn=self.rm.score,
                                 quality_fn=self.quality_fn, progress=progress)
        self.stats2 = SampleStats(samples, n_boot=self.P.n_boot, seed=self.P.boot_seed, level=self.level)
        table = samples_table(self.stats2, list(models), alphas=alphas)
        paper = paper_table2()
        for column in ("paper_reward", "paper_win_rate", "paper_lc_win_rate"):
            table[column] = [paper.get((m.removesuffix("+ExPO"), m.endswith("+ExPO")), {}).get(column, float("nan"))
                             for m in table["model"]]
        return pd.DataFrame(search), table

    @property
    def default_rows(self) -> list[str]:
        """Table 1's rows for the paper's table: SFT and every default model without and with ExPO."""
        oracle = [{"oracle": True}] if self.knows_quality else []
        return ["SFT"] + [v.name(**kw) for v in self.variants if v.is_default
                          for kw in ({}, {"expo": True}, *oracle)]

    @property
    def control_rows(self) -> list[str]:
        """Table 1's rows of the Figure 6 control's models, without and with ExPO."""
        return [v.name(expo=e) for v in self.variants if not v.is_default for e in (False, True)]

    @property
    def control_beside(self) -> list[str]:
        """The default model + ExPO of each control fraction: what the control is compared with."""
        return sorted({Variant(v.fraction).name(expo=True) for v in self.controls})

    @property
    def full_model(self) -> str | None:
        """The full-data DPO model's row, or None when the fractions leave it out."""
        return Variant(FULL_DATA).name() if FULL_DATA in self.P.fractions else None

    def comparison_pairs(self) -> list[tuple[str, str]]:
        """The (a, b) pairs every verdict rests on: each model with ExPO against without (and, where the world
        knows the quality, the oracle arm against without), each smaller fraction + ExPO against full-data DPO,
        each control model (without and with ExPO) against the default model + ExPO."""
        fractions, full = self.P.fractions, self.full_model
        pairs = [(Variant(f).name(expo=True), Variant(f).name()) for f in fractions]
        if self.knows_quality:
            pairs += [(Variant(f).name(oracle=True), Variant(f).name()) for f in fractions]
        pairs += [(Variant(f).name(expo=True), full) for f in fractions if full and f < FULL_DATA]
        pairs += [(v.default.name(expo=True), other) for v in self.controls for other in (v.name(), v.name(expo=True))]
        return pairs

    def comparisons(self):
        """Each of :meth:`comparison_pairs` as a - b per metric with its paired interval over test prompts."""
        return comparisons(self.stats, self.comparison_pairs())

    # -- what the models say, the learning rate -----------------------------------------------------

    def examples(self, n: int = 8):
        """The first ``n`` validation prompts: the SFT model's answer and the answers of the DPO model
        closest to 20% data (first training seed) at alpha 0, at its chosen alpha and at the grid's largest,
        with known quality."""
        import pandas as pd

        label = fraction_label(min(self.P.fractions, key=lambda f: abs(f - PAPER_BEST_FRACTION)))
        adapter = self.adapters[self.seeds[0]][label]
        model, tokenizer = load_aligned(self.world, self.P.sft_role, adapter)
        show = sorted({0.0, self.seed_chosen(self.seeds[0])[label], max(self.P.alphas)})
        prompts, seed = self.select_prompts, self.P.sweep_seeds[0]
        answers = sweep_responses(model, tokenizer, prompts, show, self.P.sampling, seed=seed,
                                  cache=adapter / "responses", progress=False)
        sft = evaluation.role_responses(self.world, self.P.sft_role, prompts, self.P.sampling, seed=seed)
        table = {"prompt": prompts[:n], "SFT": sft[:n]}
        for alpha in show:
            table[f"{label}, alpha={alpha:g}"] = answers[alpha][:n]
            if self.knows_quality:
                table[f"q(alpha={alpha:g})"] = [fmt(self.world.quality(p, r), 2)
                                               for p, r in zip(prompts, answers[alpha][:n])]
        return pd.DataFrame(table)

    def lr_probe(self, progress: bool = True):
        """DPO on all the data at each learning rate of ``lr_probe`` and ours, each with its own alpha sweep
        (one sample per prompt; ours reuses its Figure 5 sweep; first training seed): the update's size and the
        reward and known quality at the smallest alpha and at the reward-chosen one."""
        import pandas as pd

        rows, seed = [], self.seeds[0]
        for lr in progress_bar(sorted(set(self.P.lr_probe) | {self.P.dpo.lr}), desc="learning-rate probe",
                               disable=not progress):
            path = train_dpo_adapter(self.world, self.P, FULL_DATA, lr=lr, rows=self.seed_preference_rows(seed),
                                     seed=seed)
            model, tokenizer = load_aligned(self.world, self.P.sft_role, path)
            if lr == self.P.dpo.lr and FULL_DATA in self.P.fractions:
                sweep = self.sweeps[(self.sweeps["fraction"] == FULL_DATA) & (self.sweeps["train_seed"] == seed)]
            else:
                sweep = alpha_sweep(model, tokenizer, self.select_prompts, self.P.alphas, self.P.sampling,
                                    seeds=self.P.sweep_seeds[:1], reward_fn=self.rm.score, quality_fn=self.quality_fn,
                                    cache=path / "responses", progress=False)
            best = optimal_alpha(sweep, "reward")
            at0, atb = sweep[sweep["alpha"] == sweep["alpha"].min()].iloc[0], sweep[sweep["alpha"] == best].iloc[0]
            rows.append({"lr": lr, "used": lr == self.P.dpo.lr, "paper": lr == PAPER_LR,
                         "delta_norm": lora_delta_norm(model),
                         "train_loss": adapter_info(path)["metrics"].get("train_loss"),
                         "alpha_min": float(at0["alpha"]), "reward_at_alpha_min": at0["reward"],
                         "quality_at_alpha_min": at0.get("quality"), "alpha_by_reward": best,
                         "reward_at_chosen": atb["reward"], "quality_at_chosen": atb.get("quality")})
        return pd.DataFrame(rows)

    # -- the claims and what the numbers say --------------------------------------------------------

    def claims(self, reward_doubt: str | None = None):
        """One row per claim of the paper and per fraction or control model it applies to, with its verdict
        (:mod:`mfnb.expo.claims`); what rests on the reward model is not testable under ``reward_doubt``."""
        return claims_table(self._claim_rows(self.stats, self.choice, reward_doubt))

    def _claim_rows(self, stats: SampleStats, choice, reward_doubt: str | None) -> list[dict]:
        rows = [alpha_trend_claim(choice, self.P.fractions, reward_doubt=reward_doubt),
                medium_best_claim(choice, self.P.fractions, reward_doubt=reward_doubt)]
        rows += table1_claims(stats, self.P.fractions, reward_doubt=reward_doubt, oracle=self.knows_quality)
        rows += figure6_claims(stats, self.controls, reward_doubt=reward_doubt)
        return rows

    def seed_claims(self, claims, reward_doubt: str | None = None):
        """How far single-seed verdicts move: every row of ``claims`` (:meth:`claims` with the same
        ``reward_doubt``) beside the verdict each training seed alone gives it (that seed's models and alpha
        choices, intervals over prompts only), whether any seed alone reads it otherwise, and how many seeds
        alone resolve it.  Empty with one training seed."""
        import pandas as pd

        if len(self.seeds) < 2:
            return pd.DataFrame()
        out = claims[["claim", "source", "scope", "verdict"]].copy()
        for seed in self.seeds:
            samples = self.stats.samples[self.stats.samples["train_seed"].isin([seed, NOT_TRAINED])]
            alone = SampleStats(samples, n_boot=self.P.n_boot, seed=self.P.boot_seed, level=self.level)
            rows = self._claim_rows(alone, {seed: self.choice[seed]}, reward_doubt)
            out[f"seed {seed}"] = [r["verdict"] for r in rows]
        seeds = [f"seed {s}" for s in self.seeds]
        out["moved"] = (out[seeds].ne(out["verdict"], axis=0)).any(axis=1)
        out["seeds_resolving"] = [sum(v in ("reproduced", "reversed") for v in row) for row in out[seeds].to_numpy()]
        return out

    def findings(self, verdicts, claims, shift, optimal, probe, reward_doubt: str | None = None,
                 seed_claims=None) -> list[str]:
        """The notebook's closing Markdown lines, from its tables: a verdict per claim, what the Figure 6
        control says, whether the reward model picks the right alpha, length, the learning rate, the judge."""
        lines = verdict_lines(verdicts) + seed_alone_lines(seed_claims)
        trend = verdicts.set_index("claim")["verdict"].get(TREND_CLAIM, "inconclusive")
        figure6 = claims[claims["source"] == "Figure 6"].to_dict("records")
        full = fraction_label(FULL_DATA) if self.full_model else None
        lines += figure6_lines(shift, self.alpha_summary(), figure6, self.controls, full, trend)
        lines += reward_model_lines(optimal)
        if reward_doubt:
            lines.append(f"- **The reward model is in doubt:** {reward_doubt}.")
        lines += length_lines(optimal, seed_mean(self.sweeps), length_bias(self.preference_rows))
        lines += lr_lines(probe, self.sft_metrics, self.P.dpo.lr, self.knows_quality)
        judge_stats = getattr(self.judge, "stats", None)
        if judge_stats is not None:
            lines.append(f"- Judge: {judge_stats.calls} new calls, {judge_stats.cache_hits} cache hits.")
        return lines
