"""The command line, ``python -m mfnb <command>``; ``make notebook`` and ``make reproduce`` call it.

``run NOTEBOOK --profile P [-p key value]...`` checks ``params/<P>/<NOTEBOOK>.yaml`` and the overrides
against the notebook's schema before anything runs (one message naming the field and the file), then
executes the notebook with papermill into ``results/<P>/notebooks/NOTEBOOK.ipynb``.  That file is replaced
only by a run that succeeded: a failed, interrupted or killed run leaves ``NOTEBOOK.failed.ipynb`` beside
it, and the message says which cell failed and which tables and figures the run had already rewritten.

Exit status: 0 success, 1 the notebook failed, 2 bad input (nothing ran), 130 interrupted.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from mfnb import paths
from mfnb.params import PROFILES, Params, ParamsError, did_you_mean, load_yaml, parse_value
from mfnb.secrets import redact

# Each notebook's parameter schema, "module:Class", imported only when that notebook is run.
SCHEMAS = {
    "01_fidelity_winrates": "mfnb.evaluation:FidelityWinratesParams",
    "02_multifidelity_traces": "mfnb.multifidelity:TracesParams",
    "03_expo_alpha_curves": "mfnb.expo:ExpoParams",
    "04_hbat_ablations": "mfnb.hbat:HbatNotebookParams",
    "05_hoeffding_bounds": "mfnb.stats:HoeffdingParams",
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
    module, cls = SCHEMAS[name].split(":")
    return getattr(importlib.import_module(module), cls)


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
                       overrides: Sequence[tuple[str, str]]) -> tuple[str, dict[str, Any], Path]:
    """Validate the params file, then the file with the overrides; returns the profile, the values to
    inject and the file.  Raises ParamsError/UsageError naming the field and where it came from."""
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
        with _sigterm_raises_interrupt():
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


def tidy_executed(path: Path, root: Path) -> None:
    """Drop what changes on every run although the results do not: the kernel's and papermill's
    timestamps and durations, and absolute paths (written relative to ``root``). A rerun with unchanged
    numbers then rewrites the executed notebook byte for byte (the run's time is printed by the CLI)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
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
        cell.metadata.pop("execution", None)
        for key in RUN_TIMES:
            cell.metadata.get("papermill", {}).pop(key, None)
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
    profile, values, file = resolve_parameters(name, args.profile, args.params, args.p)
    if args.check:
        import yaml

        print(f"# {name}: {file}" + (" with -p overrides" if args.p else "") + ": valid", file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mfnb", description="mfnb: run the notebooks of the suite.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="validate a notebook's parameters, then run it with papermill",
                              description="Validate the params file and overrides, then run the notebook into "
                                          "results/<profile>/notebooks/ (replaced only by a successful run).")
    run.add_argument("notebook", help=f"notebook name, file or unique prefix: {', '.join(SCHEMAS)}")
    run.add_argument("--profile", choices=PROFILES, default=None,
                     help="parameter profile: params/<profile>/<notebook>.yaml (default: tiny)")
    run.add_argument("--params", metavar="FILE", help="another params file (default: the profile's)")
    run.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                     help="override one parameter; VALUE is read as YAML (0.5, 1e-4, true, [a, b]); "
                          "KEY may be nested: -p dpo.lr 1e-4")
    run.add_argument("--check", action="store_true", help="only validate; print the parameters it would inject")
    run.add_argument("--no-progress", action="store_true", help="no papermill progress bar")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
