"""AlpacaEval 2.0 as the ExPO paper scored it: the ``alpaca_eval`` package's own weighted GPT-4 Turbo annotator
(``weighted_alpaca_eval_gpt4_turbo``) through any OpenAI-compatible endpoint, and its length-controlled win rate
(``alpaca_eval.metrics.get_length_controlled_winrate``).

* :class:`AlpacaEvalSpec` -- the parameters (a params block, validated before anything runs).
* :class:`AlpacaEvalJudge` -- ``compare(prompts, first, second)`` like the project's pairwise judges, but each
  outcome is the annotator's probability that ``first`` is preferred (AlpacaEval's weighted preference, read from
  the endpoint's log-probabilities of the letters ``m`` / ``M``), NaN where the endpoint gave neither letter.
  The baseline is always AlpacaEval's ``output_1`` and the model its ``output_2``; alpaca_eval itself randomises
  which is shown first.  Annotations are cached by alpaca_eval in one JSON file under the project's cache.
* :func:`length_controlled` -- alpaca_eval's LC win rate on one model's annotations.
* :func:`write_model_outputs` -- a model's outputs in AlpacaEval's format (a JSON list of ``{instruction,
  output, generator, dataset}``), for rerunning the official evaluator (``alpaca_eval --model_outputs ...``).

The key: read from the environment variable ``api_key_env`` names at each request and handed to the openai
client in memory only; alpaca_eval logs its request arguments without keys, the annotations it caches hold no
request arguments, and every error raised here passes :func:`mfnb.core.secrets.redact`.

The LC win rate reads ``df_gamed.csv`` of the hub dataset ``tatsu-lab/alpaca_eval`` (each AlpacaEval
instruction's difficulty, and two gamed baselines' annotations that the regularised GLM is fitted with).
alpaca_eval fetches it from the hub; here it is always the local copy ``difficulty_file`` names (the download
function alpaca_eval calls is replaced by a local lookup for the duration of the call), and a missing copy is an
error saying how to get one. No network request is made for it.
"""
from __future__ import annotations

import json
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

from pydantic import Field

from mfnb.core.params import Params
from mfnb.core.secrets import redact, register_variable
from mfnb.judges.protocol import JudgeError, JudgeStats

PACKAGE_PIN = "alpaca-eval==0.6.6"
ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
HUB_REPO = "tatsu-lab/alpaca_eval"
DIFFICULTY_FILE = "df_gamed.csv"
GLMS = ("length_controlled_v1", "length_controlled_noreg", "length_controlled_minimal")
BASELINE = "gpt4_turbo"
DATASET = "alpaca_eval"


class AlpacaEvalError(JudgeError):
    """alpaca_eval is missing, or what it needs (its instruction-difficulty file, a key) is; the message says how
    to provide it."""


class AlpacaEvalSpec(Params):
    """How Table 1 is scored by ``alpaca_eval`` (notebook 03's ``alpaca_eval`` block)."""

    annotator: str = ANNOTATOR                     # an evaluators_configs name of alpaca_eval
    base_url: str = "https://api.openai.com/v1"    # any OpenAI-compatible endpoint
    api_key_env: str = "OPENAI_API_KEY"            # the variable holding the key (never the key itself)
    difficulty_file: str | None = None             # local copy of tatsu-lab/alpaca_eval's df_gamed.csv
    glm: Literal["length_controlled_v1", "length_controlled_noreg", "length_controlled_minimal"] = \
        "length_controlled_v1"
    concurrency: int = Field(default=5, ge=1)      # requests in flight (alpaca_eval's num_procs)
    max_retries: int = Field(default=5, ge=1)      # per request, on rate limits
    cache: bool = True                             # alpaca_eval's annotation cache under $MFNB_CACHE/alpaca_eval


def _pkg_resources_stand_in():
    """What ``alpaca_eval.utils`` uses of ``pkg_resources`` (``parse_version``, ``get_distribution(name).version``),
    from ``packaging`` and ``importlib.metadata``: setuptools 81+ no longer ships ``pkg_resources``."""
    import types
    from importlib import metadata

    from packaging.version import parse

    module = types.ModuleType("pkg_resources")
    module.__doc__ = "mfnb's stand-in for the two pkg_resources functions alpaca_eval 0.6.6 calls"
    module.parse_version = parse
    module.get_distribution = lambda name: types.SimpleNamespace(version=metadata.version(name))
    return module


def require_alpaca_eval(field: str = "alpaca_eval"):
    """The imported package, or an error naming the pin to install.

    alpaca_eval 0.6.6 imports ``pkg_resources``, which setuptools 81+ dropped; where it is missing, a stand-in
    with the two functions alpaca_eval calls is in ``sys.modules`` only while alpaca_eval is imported (its modules
    keep their reference; nothing else ever sees it)."""
    import sys

    if "alpaca_eval.utils" in sys.modules:
        return sys.modules["alpaca_eval"]
    stand_in = None
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        stand_in = sys.modules["pkg_resources"] = _pkg_resources_stand_in()
    try:
        import alpaca_eval
        import alpaca_eval.utils  # noqa: F401  (the module that imports pkg_resources)
        import alpaca_eval.metrics  # noqa: F401
    except ImportError as err:
        raise AlpacaEvalError(f"{field}: scoring with AlpacaEval needs the PyPI package alpaca_eval and its "
                              f"dependencies ({err}): pip install '{PACKAGE_PIN}' (or pip install -e "
                              "'.[alpaca_eval]'; make venv installs it)") from None
    finally:
        if stand_in is not None and sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]
    return alpaca_eval


def difficulty_path(path: str | os.PathLike | None, field: str = "alpaca_eval.difficulty_file") -> Path:
    """The local ``df_gamed.csv``; when it is not given or not there, an error naming the field and how to get it."""
    how = (f"download it where there is network (hf download {HUB_REPO} {DIFFICULTY_FILE} --repo-type dataset "
           f"--local-dir <folder>) and set {field} to <folder>/{DIFFICULTY_FILE}; mfnb never fetches it itself")
    if path is None:
        raise AlpacaEvalError(f"{field}: not set. alpaca_eval's length-controlled win rate needs {HUB_REPO}'s "
                              f"{DIFFICULTY_FILE} (the instructions' difficulty and the gamed baselines): {how}")
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / DIFFICULTY_FILE
    if not file.is_file():
        raise AlpacaEvalError(f"{field}: {str(file)!r} does not exist. alpaca_eval's length-controlled win rate "
                              f"needs {HUB_REPO}'s {DIFFICULTY_FILE}: {how}")
    return file


@contextmanager
def local_hub_files(difficulty_file: Path) -> Iterator[None]:
    """While inside, alpaca_eval's LC reads ``df_gamed.csv`` from ``difficulty_file``; any other hub file it asks
    for is an error (never a download)."""
    require_alpaca_eval()
    from unittest import mock

    from alpaca_eval.metrics import glm_winrate

    def local(repo_id: str, filename: str, **_: Any) -> str:
        if repo_id == HUB_REPO and filename == DIFFICULTY_FILE:
            return str(difficulty_file)
        raise AlpacaEvalError(f"alpaca_eval asked for {repo_id}/{filename}, which mfnb has no local copy of (it "
                              "fetches nothing from the network)")

    with mock.patch.object(glm_winrate, "hf_hub_download", local):
        yield


def annotation_frame(instructions: Sequence[str], outputs: Sequence[str], baseline_outputs: Sequence[str],
                     preferences: Sequence[float], *, generator: str = "model", baseline: str = BASELINE,
                     annotator: str = ANNOTATOR):
    """AlpacaEval's annotation table, one row per instruction in AlpacaEval's order (row i is instruction i):
    ``output_1`` the baseline's, ``output_2`` the model's, ``preference`` 1 + P(model preferred) (NaN kept)."""
    import pandas as pd

    n = len(instructions)
    if not n == len(outputs) == len(baseline_outputs) == len(preferences):
        raise ValueError(f"instructions, outputs, baseline_outputs and preferences differ in length: {n}, "
                         f"{len(outputs)}, {len(baseline_outputs)}, {len(preferences)}")
    prefs = [math.nan if p is None else 1.0 + float(p) for p in preferences]
    return pd.DataFrame({"instruction": list(instructions), "output_1": list(baseline_outputs),
                         "output_2": list(outputs), "generator_1": baseline, "generator_2": generator,
                         "annotator": annotator, "preference": prefs})


def length_controlled(instructions: Sequence[str], outputs: Sequence[str], baseline_outputs: Sequence[str],
                      preferences: Sequence[float], *, difficulty_file, glm: str = "length_controlled_v1",
                      generator: str = "model", field: str = "alpaca_eval.difficulty_file") -> dict[str, float]:
    """alpaca_eval's ``get_length_controlled_winrate`` on one model against the baseline: ``win_rate``,
    ``lc_win_rate`` and ``lc_standard_error`` as fractions, ``n`` the annotations it fitted on. ``preferences``:
    P(model preferred) per instruction (NaN: no annotation), instructions in AlpacaEval's order from the first."""
    if glm not in GLMS:
        raise ValueError(f"glm must be one of {GLMS}, got {glm!r}")
    file = difficulty_path(difficulty_file, field)
    frame = annotation_frame(instructions, outputs, baseline_outputs, preferences, generator=generator)
    require_alpaca_eval()
    from alpaca_eval.metrics import get_length_controlled_winrate

    with local_hub_files(file), _quiet_alpaca_eval():
        metrics = get_length_controlled_winrate(frame, glm_name=glm, save_weights_dir=None,
                                                is_add_glm_preference_inplace=False, is_warn_extreme_changes=False)
    return {"win_rate": float(metrics["win_rate"]) / 100, "lc_win_rate": float(metrics["length_controlled_winrate"]) / 100,
            "lc_standard_error": float(metrics["lc_standard_error"]) / 100,
            "n": int(frame["preference"].notna().sum())}


def write_model_outputs(path: str | os.PathLike, instructions: Sequence[str], outputs: Sequence[str], generator: str,
                        dataset: str = DATASET) -> Path:
    """``outputs`` in AlpacaEval's format at ``path`` (a JSON list of {instruction, output, generator, dataset})."""
    from mfnb.core.atomic import write_text

    if len(instructions) != len(outputs):
        raise ValueError(f"{len(instructions)} instructions but {len(outputs)} outputs")
    rows = [{"instruction": i, "output": o, "generator": generator, "dataset": dataset}
            for i, o in zip(instructions, outputs)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    return path


@contextmanager
def _quiet_alpaca_eval() -> Iterator[None]:
    """alpaca_eval logs every step at INFO on the root logger: only its warnings reach the notebook (not
    scikit-learn's FutureWarnings about the arguments alpaca_eval's GLM passes, nor its notices about the settings
    chosen here on purpose: no client-config file, an explicit cache path)."""
    import warnings

    root = logging.getLogger()
    old = root.level
    root.setLevel(max(old, logging.WARNING))
    root.addFilter(_client_config_notice)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's about the arguments alpaca_eval passes
            yield
    finally:
        root.setLevel(old)
        root.removeFilter(_client_config_notice)


def _client_config_notice(record: logging.LogRecord) -> bool:
    """Drop alpaca_eval's warnings about what is chosen here on purpose: no client-config file (the client is
    configured in memory, see :meth:`AlpacaEvalJudge.annotate`) and an explicit annotation cache path."""
    message = record.getMessage()
    return not any(notice in message for notice in _NOTICES)


_NOTICES = ("We are using environment variables to construct the client configs", "Saving_path is given but not")


class AlpacaEvalJudge:
    """alpaca_eval's annotator ``spec.annotator`` against ``spec.base_url``; see the module docstring.

    ``compare`` returns P(first preferred) per pair (NaN: failed); ``stats`` counts pairs, new requests
    (``calls``), cache hits and failures, like the project's judges."""

    order_symmetric = False

    def __init__(self, spec: AlpacaEvalSpec, cache_dir: str | os.PathLike | None = None):
        self.spec = spec
        self.stats = JudgeStats()
        self._query: Callable[[str], str] | None = None
        register_variable(spec.api_key_env)
        self.cache_path = None
        if spec.cache:
            from mfnb.core import paths

            folder = Path(cache_dir) if cache_dir else paths.cache_dir("alpaca_eval")
            folder.mkdir(parents=True, exist_ok=True)
            self.cache_path = folder / f"annotations_{spec.annotator}.json"
        self._annotator = None

    @property
    def model_name(self) -> str:
        return f"alpaca_eval:{self.spec.annotator}"

    def set_query_view(self, query: Callable[[str], str], key: str | None = None) -> None:
        """Annotate the dataset's own instruction text of each prompt (as the other judges read it)."""
        self._query = query

    def _key(self) -> str:
        key = os.environ.get(self.spec.api_key_env)
        if not key:
            raise AlpacaEvalError(f"alpaca_eval.api_key_env: ${self.spec.api_key_env} is not set (export the "
                                  "endpoint's key there; it is read from the environment only)")
        return key

    def check_access(self, field: str = "alpaca_eval") -> None:
        """A model-list request, so that a refused key or a dead endpoint stops the notebook before any work."""
        import openai

        require_alpaca_eval(field)
        try:
            openai.OpenAI(api_key=self._key(), base_url=self.spec.base_url, max_retries=0).models.list()
        except openai.APIStatusError as err:
            if err.status_code in (401, 403):
                raise AlpacaEvalError(redact(f"{field}: {self.spec.base_url} refused the key in "
                                             f"${self.spec.api_key_env} (HTTP {err.status_code})")) from None
            if err.status_code not in (404, 405):
                raise AlpacaEvalError(redact(f"{field}: {self.spec.base_url} answered HTTP {err.status_code}: "
                                             f"{err.message}")) from None
        except openai.APIConnectionError as err:
            raise AlpacaEvalError(redact(f"{field}.base_url: {self.spec.base_url} cannot be reached ({err})")) from None

    def annotator(self):
        if self._annotator is None:
            require_alpaca_eval()
            from alpaca_eval.annotators import PairwiseAnnotator

            with _quiet_alpaca_eval():
                self._annotator = PairwiseAnnotator(annotators_config=self.spec.annotator,
                                                    caching_path=self.cache_path, seed=0)
        return self._annotator

    def annotate(self, instructions: Sequence[str], outputs: Sequence[str],
                 baseline_outputs: Sequence[str]) -> list[float]:
        """P(output preferred over the baseline's) per instruction, NaN where the annotator gave none."""
        if not len(instructions) == len(outputs) == len(baseline_outputs):
            raise ValueError(f"instructions, outputs and baseline_outputs differ in length: {len(instructions)}, "
                             f"{len(outputs)}, {len(baseline_outputs)}")
        if not instructions:
            return []
        annotator = self.annotator()
        rows = [{"instruction": i, "output_1": b, "output_2": o}
                for i, o, b in zip(instructions, outputs, baseline_outputs)]
        known = annotator.df_annotations
        seen = set()
        if known is not None and not known.empty:
            done = known[known["preference"].notna()]
            seen = set(zip(done["instruction"], done["output_1"], done["output_2"]))
        hits = sum((r["instruction"], r["output_1"], r["output_2"]) in seen for r in rows)
        # the key goes to the openai client in memory; alpaca_eval's client-config file is bypassed so that no
        # other configuration (or key) on this machine is used
        settings = {"openai_api_keys": [self._key()], "openai_api_base": self.spec.base_url,
                    "client_config_path": os.devnull, "num_procs": self.spec.concurrency,
                    "n_retries": self.spec.max_retries}
        try:
            with _quiet_alpaca_eval():
                annotated = annotator.annotate_pairs(rows, **settings)
        except Exception as err:  # the endpoint's or the parser's failure, never with the key in it
            raise AlpacaEvalError(redact(f"alpaca_eval ({self.spec.annotator} at {self.spec.base_url}) failed: "
                                         f"{type(err).__name__}: {err}")) from None
        by_pair = {(a["instruction"], a["output_1"], a["output_2"]): a.get("preference") for a in annotated}
        out = []
        for r in rows:
            p = by_pair.get((r["instruction"], r["output_1"], r["output_2"]))
            p = math.nan if p is None or (isinstance(p, float) and math.isnan(p)) else float(p)
            # AlpacaEval: preference 1 = output_1 (the baseline) preferred, 2 = output_2; 0 = identical outputs
            out.append(0.5 if p == 0 else (p - 1.0 if math.isfinite(p) else math.nan))
        self.stats.pairs += len(rows)
        self.stats.cache_hits += hits
        self.stats.calls += len(rows) - hits
        self.stats.failures += sum(math.isnan(x) for x in out)
        return out

    def compare(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                shuffle_order: bool = True) -> list[float]:
        """P(``first[i]`` preferred over ``second[i]``) on ``prompts[i]``: ``second`` is AlpacaEval's baseline
        (alpaca_eval randomises the order shown; ``shuffle_order`` is accepted for the judges' signature)."""
        instructions = [self._query(p) for p in prompts] if self._query else list(prompts)
        return self.annotate(instructions, list(first), list(second))
