"""params/paper/: every file passes ``python -m mfnb run NB --profile paper --check`` (nothing runs), and sets
every field of its notebook's schema itself, so none of the tiny defaults of the notebook's parameters cell
slips into a paper run."""
from __future__ import annotations

import pytest
import yaml

from mfnb import cli
from mfnb.core import paths

PAPER = sorted((paths.project_root() / "params" / "paper").glob("*.yaml"))


def test_a_paper_params_file_for_every_notebook():
    assert sorted(p.stem for p in PAPER) == sorted(cli.SCHEMAS)


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_params_pass_the_cli_check(path, capsys):
    assert cli.main(["run", path.stem, "--profile", "paper", "--check"]) == 0
    out, err = capsys.readouterr()
    assert f"{path}: valid" in err
    injected = yaml.safe_load(out)
    assert injected["profile"] == "paper" and injected.get("world", {"kind": "paper"})["kind"] == "paper"
    unset = [k for k in cli.schema_for(path.stem).model_fields if k not in yaml.safe_load(path.read_text())]
    assert unset == [], f"{path.name} leaves {unset} to the notebook's tiny defaults"


def test_a_stale_paper_field_is_named(tmp_path, capsys):
    values = yaml.safe_load((paths.project_root() / "params" / "paper" / "02_multifidelity_traces.yaml").read_text())
    values["vanilla_fidelities"] = [2, 3]  # the schema before the baselines list
    (tmp_path / "02.yaml").write_text(yaml.safe_dump(values))
    assert cli.main(["run", "02", "--params", str(tmp_path / "02.yaml"), "--check"]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter 'vanilla_fidelities'" in err and "nothing was run" in err


def test_vllm_asked_for_where_it_is_not_installed_is_refused_by_the_cli_check(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert cli.main(["run", "01", "--profile", "paper", "-p", "world.engine", "vllm", "--check"]) == 2
    err = capsys.readouterr().err
    assert "world.engine: vllm needs vLLM" in err and "world.vllm.python" in err and "nothing was run" in err
