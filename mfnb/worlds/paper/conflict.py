"""HbAT's alignment tax on the papers' data: human demonstrations (SFT) against human preferences (DPO).

AlpacaFarm (dialogue): the 10k demonstrations of its SFT split against its human pairwise preferences;
TL;DR (summarization): the filtered Reddit summaries against Stiennon et al.'s comparisons. The win rate is
against the evaluation set's reference responses, judged by the judge the params name (the paper: GPT-4
with the DPO paper's prompts; ``hbat`` / ``hbat_summary`` in :data:`mfnb.judges.TEMPLATES`).

The per-response scores need models the paper names only in part, so they come from params too:
``reward`` is a reward model (a hub sequence classifier or a folder) scoring (query, response), and
``quality`` stands in for the paper's PandaLM score (a pairwise judge model this package does not run): a
second reward model, or nothing (NaN, and the notebook's quality column stays empty). ``overall`` (what
the tiny world's oracle judge compares) is the reward here: the win rate comes from the LLM judge.

Same interface as :mod:`mfnb.worlds.tiny.conflict` (see :mod:`mfnb.hbat.ablations`).
"""
from __future__ import annotations

import math
import random
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field

from mfnb.core.params import Params, ParamsError
from mfnb.judges import RewardModelJudge, make_judge
from mfnb.worlds.shared.conflict import conflict_scores


class ScorerSpec(Params):
    """A reward model that scores one (query, response): a hub name or a folder."""

    name: str
    revision: str | None = None
    trust_remote_code: bool = False
    batch_size: int = Field(default=16, ge=1)
    max_length: int = Field(default=2048, ge=16)


class PaperConflictParams(Params):
    n_sft: int | None = Field(default=None, ge=1)     # demonstrations (None: all of them)
    n_pref: int | None = Field(default=None, ge=1)    # comparisons (None: all of them)
    reward: ScorerSpec | None = None
    quality: ScorerSpec | None = None                 # stands in for PandaLM; None: not scored
    judge: dict[str, Any] = Field(default_factory=lambda: {"kind": "openai", "model": "gpt-4o",
                                                          "prompt_template": "hbat", "cache": True})


class PaperConflict:
    """Demonstrations, preferences, references and scores of one paper dataset (AlpacaFarm or TL;DR)."""

    DATASETS = ("alpaca_farm", "tldr")

    def __init__(self, world, params: PaperConflictParams):
        self.world = world
        dataset = world.params.data.dataset
        if dataset not in self.DATASETS:
            raise ParamsError(f"conflict: HbAT's conflict needs {world.field}.data.dataset alpaca_farm or tldr; this "
                              f"world reads {dataset}")
        data = world.data
        self._sft: dict[str, str] = {}
        for r in data.sft_rows["train"]:
            self._sft.setdefault(r["prompt"], r["completion"])
        self._pref: dict[str, dict] = {}
        for r in data.preference_rows["train"]:
            self._pref.setdefault(r["prompt"], r)
        sizes = {}
        for field, wanted, have in (("n_sft", params.n_sft, len(self._sft)), ("n_pref", params.n_pref, len(self._pref))):
            if wanted is not None and wanted > have:
                raise ParamsError(f"conflict.{field}: {wanted} asked, {dataset} has {have} distinct prompts")
            sizes[field] = wanted or have
        self.params = params.model_copy(update=sizes)
        self._scorers: dict[str, Any] = {}
        # the scorers' folders are resolved now: a hub name that is not cached fails before any stage trains
        self._folders = {which: self._folder(which) for which in ("reward", "quality") if getattr(params, which)}

    def _folder(self, which: str):
        from mfnb.worlds.paper import hub_models  # deferred: loads torch

        spec, field = getattr(self.params, which), f"conflict.{which}.name"
        folder = hub_models.resolve(spec.name, revision=spec.revision, field=field,
                                    trust_remote_code=spec.trust_remote_code)
        hub_models.check_reward_model(folder, name=spec.name, field=field, trust_remote_code=spec.trust_remote_code)
        return folder

    @classmethod
    def from_spec(cls, world, spec: Mapping[str, Any]) -> "PaperConflict":
        return cls(world, PaperConflictParams.validate_mapping(dict(spec), source="conflict"))

    # -- data -----------------------------------------------------------------------------------

    def split_prompts(self, train_prompts: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
        """Seeded draws of ``n_sft`` demonstration prompts and ``n_pref`` comparison prompts (the dataset's own
        two sets; ``train_prompts``, the world's union of both, is not needed)."""
        p = self.params
        sft = sorted(self._sft)
        pref = sorted(self._pref)
        random.Random(f"paper-conflict-sft-{seed}").shuffle(sft)
        random.Random(f"paper-conflict-pref-{seed}").shuffle(pref)
        role = self.world.params.prompt_role
        return ([self.world.render(role, t) for t in sft[: p.n_sft]],
                [self.world.render(role, t) for t in pref[: p.n_pref]])

    def sft_rows(self, prompts: Sequence[str]) -> list[dict]:
        return [{"prompt": q, "completion": self._sft[self.world.query(q)]} for q in prompts]

    def preference_rows(self, prompts: Sequence[str], seed: int) -> list[dict]:
        out = []
        for q in prompts:
            row = self._pref[self.world.query(q)]
            out.append({"prompt": q, "chosen": row["chosen"], "rejected": row["rejected"]})
        return out

    def references(self, prompts: Sequence[str]) -> list[str]:
        return self.world.references(prompts)

    # -- scores ---------------------------------------------------------------------------------

    def _scorer(self, which: Literal["reward", "quality"]):
        spec = getattr(self.params, which)
        if spec is None:
            return None
        if which not in self._scorers:
            judge = RewardModelJudge(str(self._folders[which]), batch_size=spec.batch_size, max_length=spec.max_length,
                                     trust_remote_code=spec.trust_remote_code, progress=False, dtype="auto")
            judge.set_query_view(self.world.query, self.world.key)
            self._scorers[which] = judge
        return self._scorers[which]

    def _scores(self, which, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        scorer = self._scorer(which)
        if scorer is None:
            return [math.nan] * len(prompts)
        return scorer.score(list(prompts), list(responses))

    def quality(self, prompt: str, response: str) -> float:
        """The quality scorer's score (NaN when the params name none)."""
        return self._scores("quality", [prompt], [response])[0]

    def reward(self, prompt: str, response: str) -> float:
        """The reward model's score (NaN when the params name none)."""
        return self._scores("reward", [prompt], [response])[0]

    def overall(self, prompt: str, response: str) -> float:
        return self.reward(prompt, response)

    def judge(self, tie_margin: float = 0.05):
        """The win-rate judge of the params (an LLM judge reads the dataset's own prompt text)."""

        judge = make_judge(self.params.judge)
        judge.set_query_view(self.world.query, self.world.key)
        inner = getattr(judge, "inner", judge)
        if hasattr(inner, "check_access"):  # a refused key or a dead endpoint stops here, before any work
            inner.check_access("conflict.judge")
        return judge

    def scores(self, prompts: Sequence[str], responses: Sequence[str], judge=None, delta: float = 0.05) -> dict:
        """:func:`mfnb.worlds.shared.conflict.conflict_scores` under this world's quality, reward and judge."""
        prompts, responses = list(prompts), list(responses)
        quality, reward = self._scores("quality", prompts, responses), self._scores("reward", prompts, responses)
        return conflict_scores(prompts, responses, quality, reward, judge or self.judge(), self.references(prompts),
                               delta)
