"""The real entry points with bad input (issue 9): ``python -m mfnb run`` validates before it runs, plain
papermill stops at the notebook's parameter check, and a failed, interrupted or killed run never replaces
the last good executed notebook."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from mfnb import cli
from mfnb.cli import RunFailed, UsageError, apply_overrides, execute, notebook_name
from mfnb.core import paths

ROOT = paths.project_root()
NB05 = "05_hoeffding_bounds"
# notebook 05 with small settings: about 25 s through papermill
SMALL05 = {"n_reps": "300", "n_max": "500", "n_batches": "8", "coverage_ns": "[50]",
           "t5_cost_ratios": "[1.0, 4.0, 16.0]", "t5_step_winrates": "[0.6, 0.8]"}


@pytest.fixture
def results(tmp_path, monkeypatch):
    """Results (and the executed notebooks) go to a tmp folder, as in every test."""
    folder = tmp_path / "results"
    monkeypatch.setenv("MFNB_RESULTS", str(folder))
    return folder


def _params05(tmp_path, replace: tuple[str, str] | None = None, text: str | None = None, **changes) -> Path:
    """A copy of the tiny params of notebook 05 with ``changes``, a text replacement, or another ``text``."""
    if text is None:
        text = (ROOT / "params" / "tiny" / f"{NB05}.yaml").read_text()
    if changes:
        text = yaml.safe_dump({**yaml.safe_load(text), **changes}, sort_keys=False)
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    path = tmp_path / f"{NB05}.yaml"
    path.write_text(text)
    return path


def _run(*argv) -> tuple[int, str]:
    """cli.main in-process; returns the exit status and what it wrote to stderr."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = cli.main(list(argv))
    return status, err.getvalue()


# ------------------------------------------------------------------------------ arguments and validation


def test_notebook_names_paths_and_prefixes():
    assert notebook_name("05_hoeffding_bounds") == NB05
    assert notebook_name("notebooks/05_hoeffding_bounds.ipynb") == NB05
    assert notebook_name("05") == NB05
    with pytest.raises(UsageError, match=r"unknown notebook '05_hoefding_bounds' \(did you mean '05_hoeffding_bounds'"):
        notebook_name("05_hoefding_bounds")
    assert set(cli.SCHEMAS) == {p.stem for p in (ROOT / "notebooks").glob("[0-9]*.ipynb")}


def test_overrides_are_yaml_values_and_may_be_nested():
    values = {"gamma": 0.3, "dpo": {"lr": 5e-4, "beta": 0.1}}
    out = apply_overrides(values, [("gamma", "0.5"), ("dpo.lr", "1e-4"), ("seeds", "[0, 1]"), ("flag", "true"),
                                   ("lora.r", "4"), ("name", "g2")], defaults={"lora": None})
    assert out == {"gamma": 0.5, "dpo": {"lr": 1e-4, "beta": 0.1}, "seeds": [0, 1], "flag": True, "lora": {"r": 4},
                   "name": "g2"}
    assert values == {"gamma": 0.3, "dpo": {"lr": 5e-4, "beta": 0.1}}  # the file's values are not modified
    with pytest.raises(UsageError, match=r"-p gamma.x: parameter 'gamma' is not a mapping \(it is 0.3\)"):
        apply_overrides(values, [("gamma.x", "1")], {})
    with pytest.raises(UsageError, match="-p profile: choose the profile with --profile"):
        apply_overrides(values, [("profile", "smol")], {})


def test_check_prints_the_values_it_would_inject(results, capsys):
    assert cli.main(["run", "02", "--check", "-p", "dpo.lr", "1e-4", "-p", "gamma", "0.5"]) == 0
    values = yaml.safe_load(capsys.readouterr().out)
    assert values["gamma"] == 0.5 and values["dpo"]["lr"] == 1e-4 and values["dpo"]["beta"] == 0.1
    assert not results.exists()


@pytest.mark.parametrize("make_file, argv, message", [
    (lambda t: _params05(t, gama=0.5), [], r"{file}: unknown parameter 'gama' \(did you mean 'gamma'\?\)"),
    (lambda t: _params05(t, n_reps="many"), [], r"{file}: parameter 'n_reps': Input should be a valid integer"),
    (lambda t: _params05(t, gamma=1.5), [], r"{file}: parameter 'gamma': Input should be less than 1 \(got 1.5\)"),
    (lambda t: _params05(t, profile="tinyy"), [], r"{file}: parameter 'profile': .*must be one of tiny, smol, paper"),
    (lambda t: _params05(t, text="# nothing here yet\n"), [], r"{file}: the params file is empty"),
    (lambda t: _params05(t, ("gamma: 0.3", "gamma: [0.3")), [], r"{file}: not valid YAML at line \d+, column \d+"),
    (lambda t: _params05(t), ["-p", "gama", "0.5"],
     r"command line \(-p\): unknown parameter 'gama' \(did you mean 'gamma'\?\)"),
    (lambda t: _params05(t), ["-p", "delta", "1e-4", "-p", "gamma", "1.5"],
     r"command line \(-p\): parameter 'gamma': Input should be less than 1"),
    (lambda t: _params05(t), ["--profile", "smol"], r"{file}: profile is 'tiny' but --profile is 'smol'"),
])
def test_bad_input_is_refused_before_anything_runs(tmp_path, results, make_file, argv, message):
    file = make_file(tmp_path)
    status, err = _run("run", NB05, "--params", str(file), *argv)
    assert status == 2
    assert _search(message.format(file=file), err), err
    assert "nothing was run." in err and "Traceback" not in err
    assert not results.exists()  # no notebook, table or figure folder was even created


def _search(pattern, text):
    import re

    return re.search(pattern, text)


def test_scientific_notation_in_a_params_file_is_a_number(tmp_path, results, capsys):
    file = _params05(tmp_path, ("delta: 0.05", "delta: 5e-2"))
    assert cli.main(["run", NB05, "--params", str(file), "--check"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["delta"] == 0.05


def test_entry_point_exit_status_and_message_without_traceback(results):
    proc = subprocess.run([sys.executable, "-m", "mfnb", "run", NB05, "-p", "gama", "0.5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "mfnb run: error: command line (-p): unknown parameter 'gama' (did you mean 'gamma'?)" in proc.stderr
    assert "Traceback" not in proc.stderr and not results.exists()
    proc = subprocess.run([sys.executable, "-m", "mfnb", "run", NB05, "--profile", "tinyy"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'tinyy'" in proc.stderr


# ----------------------------------------------------------------------- plain papermill, notebook 05


def _tables(results):
    return sorted((results / "tiny" / "tables").glob("*")) if (results / "tiny" / "tables").exists() else []


def test_plain_papermill_with_a_typo_stops_at_the_parameter_check(tmp_path, results):
    pm = pytest.importorskip("papermill")
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / "notebooks" / f"{NB05}.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"gama": 0.5}, kernel_name="python3", cwd=str(ROOT / "notebooks"),
                            progress_bar=False)
    assert err.value.ename == "ParamsError"
    assert err.value.evalue.startswith("parameters injected by papermill (-p / -f): unknown parameter 'gama' "
                                       "(did you mean 'gamma'?)")
    assert "from_namespace" in err.value.source  # the first cell after the imports: no work done
    assert _tables(results) == []


def test_plain_papermill_cli_with_a_typo_in_the_yaml_file(tmp_path, results):
    file = _params05(tmp_path, n_rep=10)  # a key of the right shape and the wrong name
    proc = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / f"{NB05}.ipynb"),
                           str(tmp_path / "out.ipynb"), "-f", str(file), "-k", "python3", "--cwd",
                           str(ROOT / "notebooks"), "--no-progress-bar"],
                          capture_output=True, text=True, timeout=300, env=os.environ)
    assert proc.returncode != 0
    assert "unknown parameter 'n_rep' (did you mean 'n_reps'?)" in proc.stderr
    assert _tables(results) == []


# ------------------------------------------------------------------ python -m mfnb run, notebook 05


def test_failed_run_keeps_the_good_notebook_then_a_good_run_replaces_it(results):
    notebooks = results / "tiny" / "notebooks"
    notebooks.mkdir(parents=True)
    good = notebooks / f"{NB05}.ipynb"
    good.write_text('{"the": "last good run"}')
    (notebooks / f"{NB05}.failed.ipynb").write_text("an older failure")
    (results / "tiny" / "figures").write_text("a file where the figures folder should be")  # save_figure fails
    overrides = [a for k, v in SMALL05.items() for a in ("-p", k, v)]

    status, err = _run("run", NB05, "--no-progress", *overrides)
    assert status == 1
    assert f"notebook {NB05} failed at In [" in err and "FileExistsError" in err
    assert f"partial notebook: {notebooks / (NB05 + '.failed.ipynb')}" in err
    assert f"last good run, unchanged: {good}" in err
    tables = results / "tiny" / "tables"
    assert f"files this run rewrote (each written whole, atomically; the others are untouched):\n" \
           f"    {tables / '05_machine.json'}\n    {tables / '05_radius_vs_n.csv'}\n" in err + "\n"
    assert good.read_text() == '{"the": "last good run"}'
    failed = nbformat.read(notebooks / f"{NB05}.failed.ipynb", as_version=4)
    assert any(o.get("ename") == "FileExistsError" for c in failed.cells for o in c.get("outputs", []))
    assert not (notebooks / f"{NB05}.running.ipynb").exists()

    (results / "tiny" / "figures").unlink()
    status, err = _run("run", NB05, "--no-progress", *overrides)
    assert status == 0, err
    executed = nbformat.read(good, as_version=4)
    injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "n_reps = 300" in injected.source and "coverage_ns = [50]" in injected.source
    assert not (notebooks / f"{NB05}.failed.ipynb").exists()
    assert (results / "tiny" / "figures" / "05_coverage.png").is_file()


# ------------------------------------------------------------- the executor on small scratch notebooks


def _notebook(folder: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("value = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "scratch.ipynb"
    nbformat.write(nb, path)
    return path


def test_success_replaces_the_notebook_and_clears_an_old_failure(tmp_path):
    nb = _notebook(tmp_path, "print('value is', value)")
    out = tmp_path / "out" / "scratch.ipynb"
    out.parent.mkdir()
    out.write_text("old")
    (out.parent / "scratch.failed.ipynb").write_text("old failure")
    execute(nb, out, {"value": 7}, cwd=tmp_path, progress=False)
    assert "value is 7" in out.read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["scratch.ipynb"]


def test_error_names_the_cell_and_the_files_it_rewrote(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "untouched.csv").write_text("a\n1\n")
    (tables / "rewritten.csv").write_text("a\n1\n")
    nb = _notebook(tmp_path, f"open({str(tables / 'rewritten.csv')!r}, 'w').write('a\\n2\\n')",
                   f"open({str(tables / 'new.csv')!r}, 'w').write('b\\n')", "raise ValueError('bad value')")
    out = tmp_path / "out.ipynb"
    out.write_text("good")
    with pytest.raises(RunFailed) as err:
        execute(nb, out, {}, cwd=tmp_path, watch=[tables], progress=False)
    message = str(err.value)
    assert message.startswith("notebook scratch failed at In [4] (cell 4 of the executed notebook, starting "
                              "\"raise ValueError('bad value')\"): ValueError: bad value")
    assert f"    {tables / 'new.csv'}\n    {tables / 'rewritten.csv'}" in message and "untouched.csv" not in message
    assert err.value.status == 1 and out.read_text() == "good"
    assert "bad value" in (tmp_path / "out.failed.ipynb").read_text()


@pytest.mark.parametrize("signum, status, says", [(signal.SIGTERM, 130, "the run received SIGTERM"),
                                                  (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_sigterm_and_ctrl_c_keep_the_partial_notebook(tmp_path, signum, status, says):
    marker = tmp_path / "kernel.pid"
    nb = _notebook(tmp_path, f"import os; open({str(marker)!r}, 'w').write(str(os.getpid())); print('started')",
                   "import time; time.sleep(60)")
    out = tmp_path / "out.ipynb"
    out.write_text("good")
    # a job started in the background by a non-interactive shell inherits SIGINT ignored: restore Ctrl-C's default
    code = ("import signal, sys; from pathlib import Path; from mfnb.cli import execute, RunFailed\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "try:\n"
            f"    execute(Path({str(nb)!r}), Path({str(out)!r}), {{}}, cwd=Path({str(tmp_path)!r}), progress=False)\n"
            "except RunFailed as err:\n"
            "    print(err, file=sys.stderr); sys.exit(err.status)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not marker.exists() or not marker.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, "the notebook did not start"
        time.sleep(0.2)
    running = tmp_path / "out.running.ipynb"  # papermill saves it after every cell: wait for the first output
    while not (running.exists() and "started" in running.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the first cell's output was never saved"
        time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert f"notebook scratch stopped: {says}" in err and f"partial notebook: {tmp_path / 'out.failed.ipynb'}" in err
    assert out.read_text() == "good"
    assert "started" in (tmp_path / "out.failed.ipynb").read_text()
    kernel = int(marker.read_text())
    for _ in range(50):  # the kernel does not outlive the run
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"kernel {kernel} still running after the run stopped")


def test_an_api_key_echoed_by_the_endpoint_never_reaches_the_notebook(tmp_path, monkeypatch):
    from misbehaving_endpoint import KEY, Endpoint

    monkeypatch.setenv("MFNB_CLI_TEST_KEY", KEY)  # the kernel inherits the environment
    server = Endpoint("echo401")
    try:
        nb = _notebook(tmp_path, f"""
            from mfnb.judges import OpenAIJudge
            judge = OpenAIJudge("judge-model", base_url={server.url!r}, api_key_env="MFNB_CLI_TEST_KEY",
                                max_retries=0, progress=False)
            judge.compare(["q"], ["a"], ["b"])
            """)
        out = tmp_path / "out.ipynb"
        with pytest.raises(RunFailed) as err:
            execute(nb, out, {}, cwd=tmp_path, progress=False)
    finally:
        server.close()
    assert server.requests in (1, 2)  # both orders of the pair may be in flight
    assert "JudgeError" in str(err.value) and "Bearer ***" in str(err.value) and KEY not in str(err.value)
    executed = (tmp_path / "out.failed.ipynb").read_text()
    assert "Incorrect API key provided: Bearer ***" in executed and KEY not in executed
    assert KEY not in json.dumps(nbformat.read(tmp_path / "out.failed.ipynb", as_version=4))


def test_executed_notebooks_carry_no_run_times_or_absolute_paths(tmp_path):
    import nbformat

    from mfnb.cli import tidy_executed

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1")
    cell.metadata.update(execution={"iopub.status.busy": "2026-12-02T14:50:52Z"},
                         papermill={"duration": 0.9, "start_time": "x", "end_time": "y", "status": "completed"})
    nb.cells.append(cell)
    injected = nbformat.v4.new_code_cell("gamma = 0.3")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.append(injected)
    nb.metadata["papermill"] = {"duration": 10.9, "start_time": "a", "end_time": "b", "parameters": {"gamma": 0.3},
                                "input_path": str(tmp_path / "notebooks" / "05.ipynb"),
                                "output_path": str(tmp_path / "results" / "tiny" / "notebooks" / "05.running.ipynb")}
    path = tmp_path / "run.ipynb"
    nbformat.write(nb, path)
    tidy_executed(path, root=tmp_path)
    first = path.read_bytes()
    tidy = nbformat.read(path, as_version=4)
    assert tidy.metadata.papermill == {"parameters": {"gamma": 0.3}, "input_path": "notebooks/05.ipynb",
                                       "output_path": "results/tiny/notebooks/05.ipynb"}
    assert dict(tidy.cells[0].metadata) == {"papermill": {"status": "completed"}}
    assert tidy.cells[1].id == "injected-parameters"  # papermill's random id made stable
    tidy_executed(path, root=tmp_path)
    assert path.read_bytes() == first


def _bar_notebook(path, model_id: str, meter: str):
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("for _ in progress(range(6)): pass", id="0")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": model_id, "version_major": 2, "version_minor": 0},
        "text/plain": f"runs: 100%|##########| 6/6 {meter}"})]
    nb.cells.append(cell)
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {model_id: {}}}}
    nbformat.write(nb, path)
    return path


def test_progress_bars_tidy_to_the_same_bytes_whatever_their_widget_id_and_speed(tmp_path):
    import nbformat

    from mfnb.cli import tidy_executed

    a = _bar_notebook(tmp_path / "a.ipynb", "a886533dbff34d6bb22f8c517d60fb6a", "[00:00<00:00,  5.44it/s]")
    b = _bar_notebook(tmp_path / "b.ipynb", "fc399f6693d442f2aff8364ead486b5d", "[01:02<00:00, 10.11s/it]")
    for path in (a, b):
        tidy_executed(path, root=tmp_path)
    assert a.read_bytes() == b.read_bytes()
    tidy = nbformat.read(a, as_version=4)
    assert "widgets" not in tidy.metadata
    assert tidy.cells[0].outputs[0]["data"] == {"text/plain": "runs: 100%|##########| 6/6"}


@pytest.mark.parametrize("name, override, message", [
    ("01_fidelity_winrates", ("judge.tie_margn", "0.05"),
     r"parameter 'judge': .*judge spec field 'tie_margn': not a parameter of the 'oracle' judge"),
    ("02_multifidelity_traces", ("world.sede", "1"), r"parameter 'world': .*world: unknown parameter 'sede'"),
    ("03_expo_alpha_curves", ("world.kind", "tinyy"), r"parameter 'world': .*world.kind: unknown kind 'tinyy'"),
    ("04_hbat_ablations", ("world.seed", "x"), r"parameter 'world': .*seed"),
])
def test_typos_inside_world_and_judge_specs_stop_the_check(results, capsys, name, override, message):
    assert cli.main(["run", name, "--check", "-p", *override]) == 2
    err = capsys.readouterr().err
    assert _search(message, err), err
    assert "nothing was run." in err and not results.exists()
