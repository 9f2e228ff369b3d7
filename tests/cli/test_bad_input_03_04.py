"""Bad values for notebook 03's and 04's new parameters (the Figure 6 control, seed lists, the lambda grid,
the original EWC) are one message naming the field, through ``python -m mfnb run`` and plain papermill,
before any work is done."""
from __future__ import annotations

import contextlib
import io

import pytest

from mfnb import cli
from mfnb.core import paths

ROOT = paths.project_root()


@pytest.fixture
def results(tmp_path, monkeypatch):
    folder = tmp_path / "results"
    monkeypatch.setenv("MFNB_RESULTS", str(folder))
    return folder


def _run(*argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = cli.main(list(argv))
    return status, err.getvalue()


@pytest.mark.parametrize("notebook, argv, message", [
    ("03", ["-p", "figure6.fractions", "[0.3]"],
     "parameter 'figure6': Value error, figure6.fractions [0.3] are not in fractions"),
    ("03", ["-p", "figure6", "{fractions: [0.1]}"], "figure6 gives fractions but neither lrs nor epochs"),
    ("03", ["-p", "figure6.lrs", "[0.0]"], "parameter 'figure6.lrs.0': Input should be greater than 0"),
    ("03", ["-p", "report_seeds", "[0, 0]"], "parameter 'report_seeds': Value error, report_seeds must be distinct"),
    ("03", ["-p", "sampling.engine.kind", "llamacpp"],
     "parameter 'sampling.engine': Value error, kind 'llamacpp' samples a GGUF file, not a trained model"),
    ("04", ["-p", "sampling.engine", "{kind: hf, dtype: float16}"], "parameter 'sampling.engine.dtype'"),
    ("03", ["-p", "report_seed", "0"], "unknown parameter 'report_seed' (did you mean 'report_seeds'?)"),
    ("03", ["-p", "train_seeds", "[0, 0]"], "parameter 'train_seeds': Value error, train_seeds must be distinct"),
    ("03", ["-p", "train_seed", "1"], "unknown parameter 'train_seed' (did you mean 'train_seeds'?)"),  # old params
    ("03", ["-p", "n_boot", "5"], "parameter 'n_boot': Input should be greater than or equal to 100"),
    ("04", ["-p", "seeds", "[1, 1]"], "parameter 'seeds': Value error, seeds: [1] repeated in [1, 1]"),
    ("04", ["-p", "lam_grid", "[-1.0]"], "parameter 'lam_grid': Value error, lam_grid: lambda must be >= 0"),
    ("04", ["-p", "methods", "[HbAT, original EWC]"], "methods: unknown ['original EWC']"),
    ("04", ["-p", "hbat.ewc.importance", "hessian"], "parameter 'hbat.ewc.importance': Input should be 'changes', 'fisher' or 'uniform'"),
    ("04", ["-p", "hbat.ewc.fisher_scale", "max"], "parameter 'hbat.ewc.fisher_scale'"),
    ("03", ["-p", "dpo.micro_batch_size", "3"], "micro_batch_size (3) must divide batch_size"),
    ("04", ["-p", "hbat.ewc.importance", "uniform", "-p", "hbat.constraint", "freeze"],
     "ewc.importance 'uniform' is a penalty that does not rank tensors; constraint 'freeze' needs importance"),
    ("04", ["-p", "hbat.constraint", "freeze", "-p", "hbat.ewc.importance", "fisher"],
     "ewc.importance 'fisher' is a penalty that does not rank tensors; constraint 'freeze' needs importance"),
])
def test_cli_names_the_field(results, notebook, argv, message):
    status, err = _run("run", notebook, "--check", *argv)
    assert status == 2, err
    assert message in err, err
    assert "Traceback" not in err and not results.exists()


@pytest.mark.parametrize("notebook, parameters, message", [
    ("03_expo_alpha_curves", {"report_seeds": [0, 0]}, "parameter 'report_seeds'"),
    ("04_hbat_ablations", {"grid_seeds": [2, 2]}, "parameter 'grid_seeds'"),
])
def test_plain_papermill_names_the_field(tmp_path, results, notebook, parameters, message):
    pm = pytest.importorskip("papermill")
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / "notebooks" / f"{notebook}.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters=parameters, kernel_name="python3", cwd=str(ROOT / "notebooks"),
                            progress_bar=False)
    assert err.value.ename == "ParamsError" and message in err.value.evalue
    assert "from_namespace" in err.value.source   # the first cell after the imports: no work done
    tables = results / "tiny" / "tables"
    assert not tables.exists() or not any(tables.iterdir())
