"""Parameter files and parameter cells: validated, typed, and in step with each other."""
from __future__ import annotations

import ast
import importlib

import nbformat
import pytest
import yaml

from mfnb.cli import SCHEMAS  # notebook -> its schema ("module:Class"), the one registry
from mfnb.core import paths
from mfnb.core.params import ParamsError
from mfnb.ladder.config import FidelityWinratesParams

ROOT = paths.project_root()
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9]*.ipynb"))
PARAM_FILES = sorted((ROOT / "params").glob("*/**/*.yaml"))  # profiles and their variants (params/paper/tldr/)


def _schema(notebook: str):
    module, name = SCHEMAS[notebook].split(":")
    return getattr(importlib.import_module(module), name)


def _parameters_cell(notebook: str) -> dict:
    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{notebook}: exactly one cell must be tagged 'parameters'"
    values = {}
    for node in ast.parse(tagged[0].source).body:
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def test_every_notebook_has_a_schema_and_tiny_params():
    assert NOTEBOOKS, "no notebooks found"
    for notebook in NOTEBOOKS:
        assert notebook in SCHEMAS, f"{notebook}: add its schema to SCHEMAS"
        assert (ROOT / "params" / "tiny" / f"{notebook}.yaml").is_file()


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_parameters_cell_is_the_tiny_profile(notebook):
    """The notebook's own defaults are the embedded `tiny` profile: same keys, same values."""
    cell = _parameters_cell(notebook)
    tiny = yaml.safe_load((ROOT / "params" / "tiny" / f"{notebook}.yaml").read_text())
    assert cell == tiny
    assert set(cell) == set(_schema(notebook).model_fields)


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_params_file_validates(path):
    if path.parent.name == "rehearsal":  # an overlay: the paper profile's file with these sizes laid over it
        from mfnb.core.params import merge_overlay

        paper = yaml.safe_load((ROOT / "params" / "paper" / path.name).read_text())
        _schema(path.stem).validate_mapping(merge_overlay(paper, yaml.safe_load(path.read_text())), str(path))
        return
    _schema(path.stem).from_yaml(path)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebooks_carry_no_outputs(notebook):
    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def _tiny01(tmp_path, **changes):
    values = yaml.safe_load((ROOT / "params" / "tiny" / "01_fidelity_winrates.yaml").read_text())
    values.update(changes)
    path = tmp_path / "01_fidelity_winrates.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_typo_key_names_field_and_file(tmp_path):
    path = _tiny01(tmp_path, chian=["student", "g1"])
    with pytest.raises(ParamsError, match=r"01_fidelity_winrates.yaml: unknown parameter 'chian'"):
        FidelityWinratesParams.from_yaml(path)


def test_negative_batch_size_names_nested_field(tmp_path):
    values = yaml.safe_load(_tiny01(tmp_path).read_text())
    values["sampling"]["batch_size"] = -4
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ParamsError, match=r"bad.yaml: parameter 'sampling.batch_size': .*greater than or equal to 1"):
        FidelityWinratesParams.from_yaml(path)


def test_out_of_range_delta_and_wrong_type(tmp_path):
    with pytest.raises(ParamsError, match=r"parameter 'delta': .*less than 1"):
        FidelityWinratesParams.from_yaml(_tiny01(tmp_path, delta=1.5))
    with pytest.raises(ParamsError, match=r"parameter 'split'"):
        FidelityWinratesParams.from_yaml(_tiny01(tmp_path, split="training"))
    with pytest.raises(ParamsError, match=r"parameter 'chain'"):
        FidelityWinratesParams.from_yaml(_tiny01(tmp_path, chain="student,g1"))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="params file not found: .*nowhere.yaml"):
        FidelityWinratesParams.from_yaml(tmp_path / "nowhere.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("chain: [student\n")
    with pytest.raises(ParamsError, match="bad.yaml: not valid YAML"):
        FidelityWinratesParams.from_yaml(bad)


def test_from_namespace_reports_missing_parameters():
    with pytest.raises(ParamsError, match=r"missing parameter\(s\) \['world'"):
        FidelityWinratesParams.from_namespace({"profile": "tiny"})


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_no_cell_rebinds_a_parameter_before_it_is_read(notebook):
    """Between the parameters cell and ``from_namespace(globals())`` an import or assignment would silently
    replace a parameter's value (e.g. ``from mfnb.models import torch_threads`` shadowing the
    ``torch_threads`` parameter). Afterwards the notebook reads ``P`` and may reuse the names."""
    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    params = set(_parameters_cell(notebook))
    cells = [c for c in nb.cells if c.cell_type == "code"]
    start = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    statements = []
    for cell in cells[start + 1:]:
        for stmt in ast.parse(cell.source).body:
            if "from_namespace" in ast.unparse(stmt):
                break
            statements.append(stmt)
        else:
            continue
        break
    else:
        pytest.fail(f"{notebook}: no cell reads the parameters with from_namespace(globals())")
    for stmt in statements:
        for node in ast.walk(stmt):
            bound = set()
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                bound = {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                bound = {node.id}
            assert not bound & params, f"{notebook}: a cell rebinds parameter(s) {sorted(bound & params)}"
