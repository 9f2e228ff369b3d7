"""The command line, ``python -m mfnb <command>``; ``make notebook`` and ``make reproduce`` call it.

``run NOTEBOOK --profile P [-p key value]...`` checks ``params/<P>/<NOTEBOOK>.yaml`` and the overrides
against the notebook's schema before anything runs (one message naming the field and the file), then
executes the notebook with papermill into ``results/<P>/notebooks/NOTEBOOK.ipynb``.  That file is replaced
only by a run that succeeded: a failed, interrupted or killed run leaves ``NOTEBOOK.failed.ipynb`` beside
it, and the message says which cell failed and which tables and figures the run had already rewritten.

``python -m mfnb NOTEBOOK -f params.yaml`` is short for ``run`` (a cluster batch job's form); ``--processes`` and
``--launch-config`` set the notebook's ``launch`` parameter, which sends its training steps (SFT, DPO, HbAT
stages) through ``accelerate launch`` (:mod:`mfnb.training.launch`). ``train STEP --spec FILE`` runs one step from a
:class:`mfnb.training.config.TrainSpec`; ``estimate`` prints what notebooks 01-04 of a profile will cost
(:mod:`mfnb.estimate`).

Exit status: 0 success, 1 the notebook failed, 2 bad input (nothing ran), 130 interrupted.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from mfnb.core import allocator, paths
from mfnb.core.imports import resolve
from mfnb.core.params import PROFILES, Params, ParamsError, did_you_mean, load_yaml, merge_overlay, parse_value
from mfnb.core.secrets import redact
from mfnb.rehearsal.run import RehearsalError, rehearse
from mfnb.reports import tables_folder, write_report

# Each notebook's parameter schema, in its package's config module; imported only when that notebook is run.
SCHEMAS = {
    "01_fidelity_winrates": "mfnb.ladder.config:FidelityWinratesParams",
    "02_multifidelity_traces": "mfnb.multifidelity.config:TracesParams",
    "03_expo_alpha_curves": "mfnb.expo.config:ExpoParams",
    "04_hbat_ablations": "mfnb.hbat.config:HbatNotebookParams",
    "05_hoeffding_bounds": "mfnb.bounds.config:HoeffdingParams",
}


class UsageError(Exception):
    """Bad input found before anything ran (exit status 2)."""


class RunFailed(Exception):
    """The notebook ran and failed or was interrupted; the message says what was kept (exit status 1/130)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------- notebooks


def notebook_name(arg: str) -> str:
    """``05_hoeffding_bounds``, ``notebooks/05_hoeffding_bounds.ipynb`` or a unique prefix such as ``05``."""
    name = Path(arg).name.removesuffix(".ipynb")
    if name in SCHEMAS:
        return name
    matches = [n for n in SCHEMAS if n.startswith(name)] if name else []
    if len(matches) == 1:
        return matches[0]
    raise UsageError(f"unknown notebook {arg!r}{did_you_mean(name, set(SCHEMAS))}; one of: {', '.join(SCHEMAS)}")


def schema_for(name: str) -> type[Params]:
    return resolve(SCHEMAS[name], f"SCHEMAS[{name!r}]")


def notebook_defaults(path: Path) -> dict[str, Any]:
    """The values of the notebook's ``parameters`` cell (what papermill's injected values override)."""
    import nbformat

    cells = [c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise UsageError(f"{path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    values = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


# -------------------------------------------------------------------------------------------- parameters


def apply_overrides(values: dict[str, Any], overrides: Sequence[tuple[str, str]],
                    defaults: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each ``-p key value`` set (value read as YAML; ``a.b`` sets key b of mapping a,
    starting from the file's mapping or else the notebook's default)."""
    out = dict(values)
    for key, text in overrides:
        parts = key.split(".")
        if parts[0] == "profile":
            raise UsageError("-p profile: choose the profile with --profile")
        if len(parts) == 1:
            out[key] = parse_value(text)
            continue
        top = out.get(parts[0], defaults.get(parts[0]))
        top = {} if top is None else top
        if not isinstance(top, dict):
            raise UsageError(f"-p {key}: parameter {parts[0]!r} is not a mapping (it is {top!r})")
        out[parts[0]] = node = _deep_copy(top)
        for part in parts[1:-1]:
            child = node.get(part)
            if child is not None and not isinstance(child, dict):
                raise UsageError(f"-p {key}: {part!r} is not a mapping (it is {child!r})")
            node[part] = node = dict(child or {})
        node[parts[-1]] = parse_value(text)
    return out


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def resolve_parameters(name: str, profile: str | None, params_file: str | None,
                       overrides: Sequence[tuple[str, str]],
                       overlays: Sequence[str] = ()) -> tuple[str, dict[str, Any], Path]:
    """Validate the params file, then each overlay laid over it (e.g. ``params/rehearsal/``: the paper params at
    small sizes), then the overrides; returns the profile, the values to inject and the file.  Raises
    ParamsError/UsageError naming the field and where it came from."""
    file = Path(params_file) if params_file else paths.params_file(name, profile or "tiny")
    if not params_file and not file.is_file():
        raise UsageError(f"no params file for notebook {name} and profile {profile or 'tiny'}: {file}")
    values = load_yaml(file)
    file_profile = values.get("profile")
    if profile is not None and file_profile is not None and file_profile != profile:
        raise UsageError(f"{file}: profile is {file_profile!r} but --profile is {profile!r}")
    schema = schema_for(name)
    defaults = notebook_defaults(paths.project_root() / "notebooks" / f"{name}.ipynb")
    schema.validate_mapping({**defaults, **values}, source=str(file))
    for overlay in overlays:
        path = Path(overlay)
        if not path.is_file():
            raise UsageError(f"--overlay: {path} not found")
        layer = load_yaml(path)
        if "profile" in layer:
            raise UsageError(f"{path}: an overlay changes parameters of a profile's file, not the profile")
        values = merge_overlay(values, layer)
        schema.validate_mapping({**defaults, **values}, source=f"{file} with {path}")
    values = apply_overrides(values, overrides, defaults)
    if profile is not None:
        values["profile"] = profile
    validated = schema.validate_mapping({**defaults, **values}, source="command line (-p)")
    return validated.profile, values, file


# ------------------------------------------------------------------------------------------- execution


def execute(notebook: Path, out: Path, parameters: dict[str, Any], *, cwd: Path,
            watch: Sequence[Path] = (), progress: bool = True) -> Path:
    """Run ``notebook`` with papermill into ``out``, replacing ``out`` only when the run succeeded.

    The run writes ``<name>.running.ipynb`` beside ``out`` (papermill saves it after every cell, so it can be
    watched), renamed to ``out`` on success (and an old ``<name>.failed.ipynb`` removed), or to
    ``<name>.failed.ipynb`` on an error, Ctrl-C or SIGTERM; then :class:`RunFailed` says which cell failed
    and which files under ``watch`` the run had rewritten.  A SIGKILL leaves the ``.running`` file.
    """
    import papermill

    out.parent.mkdir(parents=True, exist_ok=True)
    running = out.with_name(f"{out.stem}.running.ipynb")
    failed = out.with_name(f"{out.stem}.failed.ipynb")
    before = _file_state(watch)
    try:
        # the kernel reuses freed tensor memory (see mfnb.core.allocator)
        with _sigterm_raises_interrupt(), allocator.for_child_processes():
            papermill.execute_notebook(str(notebook), str(running), parameters=parameters, kernel_name="python3",
                                       cwd=str(cwd), progress_bar=progress)
    except BaseException as err:  # an error, Ctrl-C or SIGTERM: keep the partial run, never the good one
        kept = running.exists()
        if kept:
            os.replace(running, failed)
        lines = [_what_failed(notebook.stem, err),
                 f"  partial notebook: {failed}" if kept else "  the run wrote no partial notebook",
                 f"  last good run, unchanged: {out}" if out.exists() else f"  no earlier successful run at {out}"]
        updated = [p for p, state in _file_state(watch).items() if before.get(p) != state]
        if updated:
            lines.append("  files this run rewrote (each written whole, atomically; the others are untouched):")
            lines += [f"    {p}" for p in sorted(updated)]
        if not isinstance(err, (Exception, KeyboardInterrupt)):
            raise  # SystemExit and the like: not a failed run
        status = 130 if isinstance(err, KeyboardInterrupt) else 1
        raise RunFailed(redact("\n".join(lines)), status) from None
    tidy_executed(running, root=cwd.parent)
    os.replace(running, out)
    failed.unlink(missing_ok=True)
    return out


RUN_TIMES = ("start_time", "end_time", "duration")


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# a tqdm meter's timing: "[00:01<00:00,  5.44it/s]", "[1:02:03<?, ?it/s]", "[00:01, 3.2it/s]" (no total)
METER_TIMING = re.compile(r" ?\[(?:\d+:)?\d+:\d+(?:<[^,\]]*)?, *[^\]\n]*\]")


def tidy_executed(path: Path, root: Path) -> None:
    """Drop what changes on every run although the results do not: the kernel's and papermill's
    timestamps and durations, absolute paths (written relative to ``root``), the progress bars' widget
    ids and widget state (a saved notebook has no live widgets; each bar keeps its final text line) and
    their timing and rate. A rerun with unchanged numbers then rewrites the executed notebook byte for
    byte (the run's time is printed by the CLI)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)
    meta = nb.metadata.get("papermill", {})
    for key in RUN_TIMES:
        meta.pop(key, None)
    for key in ("input_path", "output_path"):
        if meta.get(key) and Path(meta[key]).is_absolute():
            try:
                meta[key] = Path(meta[key]).resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                meta[key] = Path(meta[key]).name
    if meta.get("output_path", "").endswith(".running.ipynb"):
        meta["output_path"] = meta["output_path"].removesuffix(".running.ipynb") + ".ipynb"
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = "injected-parameters"  # papermill gives the cell it inserts a random id
        cell.metadata.pop("execution", None)
        for key in RUN_TIMES:
            cell.metadata.get("papermill", {}).pop(key, None)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                del data[WIDGET_VIEW]
                if "text/plain" in data:
                    data["text/plain"] = METER_TIMING.sub("", data["text/plain"])
    nbformat.write(nb, path)


def _what_failed(name: str, err: BaseException) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        first = next((ln for ln in (err.source or "").splitlines() if ln.strip()), "")
        return (f"notebook {name} failed at In [{err.exec_count}] (cell {err.cell_index + 1} of the executed notebook, "
                f"starting {first.strip()[:70]!r}): {err.ename}: {err.evalue}")
    if isinstance(err, _Terminated):
        return f"notebook {name} stopped: the run received SIGTERM"
    if isinstance(err, KeyboardInterrupt):
        return f"notebook {name} stopped: interrupted (Ctrl-C)"
    return f"notebook {name} could not run: {type(err).__name__}: {err}"


def _file_state(folders: Sequence[Path]) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size)
            for folder in folders if folder.is_dir() for p in folder.rglob("*") if p.is_file()}


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so that the partial notebook is kept."""


@contextmanager
def _sigterm_raises_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------------ commands


def cmd_run(args: argparse.Namespace) -> int:
    name = notebook_name(args.notebook)
    overrides = list(args.p)
    launch = _launch_flags(args)
    if launch is not None:
        if "launch" not in schema_for(name).model_fields:
            trains = [n for n in SCHEMAS if "launch" in schema_for(n).model_fields]
            raise UsageError(f"--processes / --launch-config: notebook {name} trains nothing; they apply to "
                             f"{', '.join(trains)}")
        # each flag sets its own field, so --processes alone keeps the params' config (ddp, deepspeed_zero2, ...)
        overrides += [(f"launch.{key}", json.dumps(value)) for key, value in launch.items()]
    profile, values, file = resolve_parameters(name, args.profile, args.params, overrides, args.overlay)
    if args.check:
        import yaml

        layers = "".join(f" + {o}" for o in args.overlay)
        print(f"# {name}: {file}{layers}" + (" with -p overrides" if args.p else "") + ": valid", file=sys.stderr)
        print(yaml.safe_dump(values, sort_keys=False, default_flow_style=None), end="")
        return 0
    root = paths.project_root()
    out = paths.results_dir(profile, "notebooks") / f"{name}.ipynb"
    print(f"mfnb run: {name} with {file}" + (f" and {len(args.p)} override(s)" if args.p else "") + f" -> {out}",
          file=sys.stderr)
    start = time.perf_counter()
    execute(root / "notebooks" / f"{name}.ipynb", out, values, cwd=root / "notebooks",
            watch=[paths.results_dir(profile) / "tables", paths.results_dir(profile) / "figures"],
            progress=not args.no_progress)
    print(f"mfnb run: {name} done in {time.perf_counter() - start:.0f} s: {out}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mfnb.training import launch as launcher  # deferred: loads torch

    file = Path(args.spec)
    if not file.is_file():
        raise UsageError(f"--spec: {file} not found")
    try:
        values = json.loads(file.read_text()) if file.suffix == ".json" else load_yaml(file)
    except json.JSONDecodeError as err:
        raise UsageError(f"--spec: {file} is not valid JSON: {err}") from None
    values = {"step": args.step, **values}
    if values["step"] != args.step:
        raise UsageError(f"step {args.step!r} does not match the spec's step {values['step']!r} ({file})")
    spec = launcher.TrainSpec.validate_mapping(values, source=str(file))
    launch = _launch_flags(args) or {}
    if launch and "processes" not in launch:
        launch["processes"] = "all"  # a config named alone runs on every GPU
    try:
        result = launcher.train(spec, launch, stream=not args.quiet)
    except launcher.DistributedError as err:
        raise RunFailed(redact(err)) from None
    print(json.dumps({k: result[k] for k in ("metrics", "world_size", "seconds") if k in result}, indent=2, default=str))
    return 0


def _size(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    try:
        n = int(value.replace(",", "").replace("_", ""))
    except ValueError:
        n = -1
    if not sep or n < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=N with N a positive whole number, got {text!r}")
    return name, n


def cmd_estimate(args: argparse.Namespace) -> int:
    from mfnb import estimate
    from mfnb.estimate.show import show

    names = [notebook_name(n) for n in args.notebooks] if args.notebooks else list(estimate.NOTEBOOKS)
    unknown = [n for n in names if n not in estimate.NOTEBOOKS]
    if unknown:
        raise UsageError(f"estimate: {', '.join(unknown)} has no cost to estimate (it samples, trains and judges "
                         f"nothing); estimate one of {', '.join(estimate.NOTEBOOKS)}")
    if (args.params or args.p) and len(names) != 1:
        raise UsageError("estimate: -f and -p apply to one notebook; name it (e.g. python -m mfnb estimate 02 -p ...)")
    profile = args.profile or "paper"
    params, files = {}, {}
    for name in names:
        overlays = [str(Path(d) / f"{name}.yaml") for d in args.overlay_dir if (Path(d) / f"{name}.yaml").is_file()]
        _, values, file = resolve_parameters(name, profile, args.params, args.p, overlays)
        defaults = notebook_defaults(paths.project_root() / "notebooks" / f"{name}.ipynb")
        params[name] = estimate.validate(name, {**defaults, **values}, str(file))
        files[name] = " + ".join([str(_shown(file)), *map(str, map(_shown, overlays))])
    sizes = estimate.Sizes()
    for key, n in args.size:
        if key not in sizes.values:
            raise UsageError(f"--size {key}: unknown dataset; known: {', '.join(sizes.values)}")
        sizes.set(key, n, "given with --size")
    ledger = measured = None
    header = [f"# estimate of {', '.join(n[:2] for n in names)} for profile {profile}: "
              + "; ".join(f"{n[:2]} {files[n]}" for n in names)]
    if "02_multifidelity_traces" in names:
        ledger = Path(args.ledger) if args.ledger else paths.project_root() / "results" / (
            profile if profile in ("tiny", "smol") else "tiny") / "tables"
        measured_file = Path(args.measured_params) if args.measured_params else paths.params_file(
            "02_multifidelity_traces", ledger.resolve().parent.name if ledger.name == "tables" else "tiny")
        if not measured_file.is_file():
            raise UsageError(f"--measured-params: {measured_file} not found (the params the ledger was made with)")
        defaults = notebook_defaults(paths.project_root() / "notebooks" / "02_multifidelity_traces.ipynb")
        measured = estimate.validate("02_multifidelity_traces", {**defaults, **load_yaml(measured_file)},
                                     str(measured_file))
        header.append(f"# 02 is scaled from the ledger in {_shown(ledger)} (made with {_shown(measured_file)}): how "
                      "many iterations its traces take is known only by running them; 01, 03 and 04 are counted "
                      "from their params")
    tokenizer, counted = None, "characters / 4"
    if args.tokenizer:
        from mfnb.models import load_tokenizer  # deferred: loads torch

        tokenizer, counted = load_tokenizer(args.tokenizer), f"counted with {args.tokenizer}'s tokenizer"
    assume = estimate.Assumptions(prompt_tokens=args.prompt_tokens, response_tokens=args.response_tokens,
                                  judge_latency_s=args.judge_latency, rate_limit=args.judge_rate_limit,
                                  tokens_per_minute=args.judge_tokens_per_minute)
    try:
        items = estimate.count(params, sizes, ledger=ledger, measured=measured)
        est = estimate.price(items, profile, assume=assume, throughput_file=args.throughputs, tokenizer=tokenizer,
                             sizes=sizes, sampling=args.sampling_tps, training=args.training_tps,
                             training_full=args.training_full_tps)
    except (estimate.EstimateError, estimate.ThroughputError, ValueError) as err:
        raise UsageError(str(err)) from None
    show(est, header, template_counted=counted)
    if args.csv:
        from mfnb.core.atomic import write_csv

        write_csv(Path(args.csv), est.table.drop(columns=["judge"]))
        print(f"# items written to {args.csv}")
    return 0


def _shown(path) -> Path:
    root, path = paths.project_root().resolve(), Path(path).resolve()
    return path.relative_to(root) if path.is_relative_to(root) else path


def cmd_rehearse(args: argparse.Namespace) -> int:
    names = [notebook_name(n) for n in args.notebooks] if args.notebooks else list(SCHEMAS)
    try:
        outcomes = rehearse(names, judge=args.judge, processes=args.processes, device=args.device,
                            work=args.work, results=args.results, progress=args.progress)
    except RehearsalError as err:
        raise UsageError(str(err)) from None
    return 0 if all(o.status == "ok" for o in outcomes) else 1


def cmd_report(args: argparse.Namespace) -> int:
    profiles = list(dict.fromkeys(args.profile))
    if "all" in profiles:
        profiles = [p for p in PROFILES if tables_folder(p).is_dir()]
        if not profiles:
            raise UsageError(f"--profile all: no profile has tables ({tables_folder('<profile>')} is missing for "
                             f"every one of {', '.join(PROFILES)})")
    for profile in profiles:  # all checked before any report is written
        if not tables_folder(profile).is_dir():
            raise UsageError(f"profile {profile!r} has no tables: {tables_folder(profile)} does not exist (run its "
                             f"notebooks first: make reproduce PROFILE={profile})")
    for profile in profiles:
        print(f"mfnb report: {profile} -> {write_report(profile)}", file=sys.stderr)
    return 0


def _launch_flags(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--processes`` / ``--launch-config`` as a ``launch`` mapping (None when neither is given)."""
    if args.processes is None and args.launch_config is None:
        return None
    flags = {"processes": args.processes, "config": args.launch_config}
    return {key: value for key, value in flags.items() if value is not None}


def _processes(value: str) -> int | str:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of processes or 'all', got {value!r}") from None


def _add_launch_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--processes", type=_processes, default=None, metavar="N|all",
                        help="training processes under accelerate launch (a number, or all = one per GPU); sets the "
                             "params' launch.processes")
    parser.add_argument("--launch-config", default=None, metavar="NAME_OR_FILE",
                        help="ddp, deepspeed_zero2, deepspeed_zero3 (configs/accelerate/) or an accelerate config "
                             "YAML; sets the params' launch.config")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mfnb", description="mfnb: run the notebooks of the suite "
                                     "(python -m mfnb NOTEBOOK ... is short for python -m mfnb run NOTEBOOK ...).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="validate a notebook's parameters, then run it with papermill",
                              description="Validate the params file and overrides, then run the notebook into "
                                          "results/<profile>/notebooks/ (replaced only by a successful run).")
    run.add_argument("notebook", help=f"notebook name, file or unique prefix: {', '.join(SCHEMAS)}")
    run.add_argument("--profile", choices=PROFILES, default=None,
                     help="parameter profile: params/<profile>/<notebook>.yaml (default: tiny)")
    run.add_argument("-f", "--params", metavar="FILE", help="another params file (default: the profile's)")
    run.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                     help="override one parameter; VALUE is read as YAML (0.5, 1e-4, true, [a, b]); "
                          "KEY may be nested: -p dpo.lr 1e-4")
    run.add_argument("--overlay", action="append", default=[], metavar="FILE",
                     help="a YAML file laid over the params file (mappings merge key by key), e.g. "
                          "params/rehearsal/<notebook>.yaml; may be given more than once")
    run.add_argument("--check", action="store_true", help="only validate; print the parameters it would inject")
    run.add_argument("--no-progress", action="store_true", help="no papermill progress bar")
    _add_launch_flags(run)
    run.set_defaults(func=cmd_run)

    train = commands.add_parser("train", help="one SFT or DPO step from a spec, under accelerate launch",
                                description="Run a TrainSpec (JSON or YAML: model, data, output, sft/dpo, lora, "
                                            "global_batch_size, ...) in this process or under accelerate launch "
                                            "(DDP, DeepSpeed ZeRO-2/3); the adapter or model lands in spec.output.")
    train.add_argument("step", choices=["sft", "dpo"])
    train.add_argument("--spec", required=True, help="a TrainSpec as JSON or YAML (mfnb.training.config.TrainSpec)")
    train.add_argument("--quiet", action="store_true", help="do not stream the workers' output (it stays in launch.log)")
    _add_launch_flags(train)
    train.set_defaults(func=cmd_train)

    reh = commands.add_parser("rehearse", help="run the paper profile's notebooks on stand-in models, data and judge",
                              description="The paper profile's code path end to end at small sizes: params/paper with "
                                          "params/rehearsal laid over them, stand-in models under the hub names "
                                          "(HF_HUB_OFFLINE=1), local dataset folders, an OpenAI-compatible judge on "
                                          "127.0.0.1, training under accelerate launch; ends with a summary "
                                          "(results/rehearsal/summary.csv). Exit status 1 if a notebook failed.")
    reh.add_argument("notebooks", nargs="*", help="notebooks or prefixes (default: all five)")
    reh.add_argument("--judge", choices=["llamacpp", "stub"], default="llamacpp",
                     help="llamacpp: SmolLM2-135M-Instruct served by llama.cpp (default); stub: fixed answers in the "
                          "papers' format (where llama.cpp cannot run)")
    reh.add_argument("--processes", type=int, default=2, metavar="N",
                     help="training processes per launched step in 02-04 (default 2; 1 trains in the notebook's "
                          "process except where the config is DeepSpeed)")
    reh.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                     help="where the stand-ins run (auto: a GPU when one is visible)")
    reh.add_argument("--work", type=Path, default=None, help="stand-ins and the run's cache (default: <cache>/rehearsal)")
    reh.add_argument("--results", type=Path, default=None, help="default: results/rehearsal")
    reh.add_argument("--progress", action="store_true", help="papermill's progress bars in the logs")
    reh.set_defaults(func=cmd_rehearse)

    est = commands.add_parser("estimate", help="what notebooks 01-04 of a profile will cost: tokens, judge dollars, "
                              "GPU hours, judge wall-clock",
                              description="Counts what each notebook will sample, train and judge from its params "
                                          "(02: scaled from a finished run's ledger), then tokens, judge requests, "
                                          "tokens and dollars, GPU hours at the stated throughputs and the judge's "
                                          "wall-clock at its rate limits; every assumption is printed beside them.")
    est.add_argument("notebooks", nargs="*", help="notebooks or prefixes (default: 01 02 03 04)")
    est.add_argument("--profile", choices=PROFILES, default=None, help="params profile (default: paper)")
    est.add_argument("-f", "--params", metavar="FILE", help="another params file (one notebook)")
    est.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                     help="override one parameter (one notebook)")
    est.add_argument("--overlay-dir", action="append", default=[], metavar="DIR",
                     help="lay DIR/<notebook>.yaml over each params file, e.g. params/rehearsal (the rehearsal's sizes)")
    est.add_argument("--ledger", default=None, metavar="DIR",
                     help="02: folder with 02_ledger.csv and 02_iterations.csv (default: results/<profile>/tables; "
                          "for paper results/tiny/tables, which runs the paper's sizes)")
    est.add_argument("--measured-params", metavar="FILE",
                     help="02: the params the ledger was made with (default: params/<profile of the ledger>/02_...yaml)")
    est.add_argument("--prompt-tokens", type=float, default=256.0, help="mean prompt length in tokens (default 256, "
                     "assumed: pass your data's)")
    est.add_argument("--response-tokens", type=float, default=None,
                     help="mean response length (default: each item's max_new_tokens, an upper bound)")
    est.add_argument("--judge-latency", type=float, default=5.0, metavar="SECONDS",
                     help="seconds per judge request (default 5, assumed); with the judge's concurrency")
    est.add_argument("--judge-rate-limit", type=float, default=None, metavar="RPM",
                     help="requests per minute for judges whose params set no rate_limit (your key's limit)")
    est.add_argument("--judge-tokens-per-minute", type=float, default=None, metavar="TPM",
                     help="tokens per minute for judges whose params set no tokens_per_minute (your key's limit)")
    est.add_argument("--tokenizer", default=None, metavar="NAME_OR_FOLDER",
                     help="count the judge template's tokens with this tokenizer (default: characters / 4)")
    est.add_argument("--throughputs", default=None, metavar="CSV",
                     help="measured tokens/s: kind,tokens_per_second,source or gpu_scale.py's gpu_scale.csv "
                          "(default: benchmarks/throughput.csv when present, else the stated defaults)")
    est.add_argument("--sampling-tps", type=float, default=None, help="sampling tokens/s per GPU")
    est.add_argument("--training-tps", type=float, default=None, help="LoRA training tokens/s per GPU")
    est.add_argument("--training-full-tps", type=float, default=None, help="full fine-tuning tokens/s per GPU")
    est.add_argument("--size", type=_size, action="append", default=[], metavar="NAME=N",
                     help="a dataset's row count where the params say 'all of it' (e.g. ultrafeedback.train_prefs=61135)")
    est.add_argument("--csv", default=None, metavar="FILE", help="also write the items as CSV")
    est.set_defaults(func=cmd_estimate)

    rep = commands.add_parser("report", help="write results/<profile>/REPORT.md from the profile's result tables",
                              description="Render each profile's findings (headline tables, the verdict on each paper "
                                          "claim with its interval and the paper's number) from results/<profile>/"
                                          "tables/*.csv into results/<profile>/REPORT.md.")
    rep.add_argument("--profile", nargs="+", choices=[*PROFILES, "all"], default=["tiny"], metavar="PROFILE",
                     help=f"one or more of {', '.join(PROFILES)}, or all (every profile with tables); default: tiny")
    rep.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        argv = ["run", *argv]  # python -m mfnb 02_multifidelity_traces -f params.yaml: a batch job's form of run
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ParamsError) as err:
        print(f"mfnb {args.command}: error: {redact(err)}\nnothing was run.", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"mfnb {args.command}: {err}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt:
        print(f"mfnb {args.command}: interrupted before the notebook started; nothing was run.", file=sys.stderr)
        return 130
