"""The generated reports: each committed results/<profile>/REPORT.md is what the committed tables render to (so a
report is never edited by hand nor left stale), the Markdown helpers' exact output, and a notebook without tables."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from mfnb.cli import main
from mfnb.core.params import PROFILES
from mfnb.reports import ReportError, render_report, write_report
from mfnb.reports.render import count, estimate, number, table
from mfnb.reports.sections import SECTIONS, missing_line

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"
COMMITTED = sorted(p.parent.name for p in RESULTS.glob("*/REPORT.md"))


def test_the_profiles_with_tables_have_a_report():
    with_tables = sorted(p for p in PROFILES if (RESULTS / p / "tables").is_dir())  # not results/rehearsal (uncommitted)
    assert {"tiny", "smol"} <= set(with_tables)
    assert set(with_tables) <= set(COMMITTED), "run: python -m mfnb report --profile all"


@pytest.mark.parametrize("profile", COMMITTED)
def test_committed_report_is_the_rendering_of_the_committed_tables(profile):
    committed = (RESULTS / profile / "REPORT.md").read_text(encoding="utf-8")
    assert render_report(profile, RESULTS) == committed, f"run: python -m mfnb report --profile {profile}"


def test_markdown_table():
    assert table(["a", "b"], [["1", "x|y"], [2, "two\nlines"]]) == (
        "| a | b |\n|---|---|\n| 1 | x\\|y |\n| 2 | two lines |")


def test_numbers_as_the_notebooks_round_them():
    # half up on the decimal digits (0.6775 -> 0.678), as mfnb.core.formatting does for the notebooks' tables
    assert estimate(0.6775, 0.624683526478466, 0.7224708282513044) == "0.678 [0.625, 0.722]"
    assert estimate(0.920, 0.7435737484890013, 1.0964262515109988, signed=True) == "+0.920 [0.744, 1.096]"
    assert estimate(30.0, 20.0, 30.0, 1) == "30.0 [20.0, 30.0]"
    assert estimate(0.24193548387096775, math.nan, math.nan) == "0.242"  # one seed: no interval
    assert estimate(math.nan, 0.1, 0.2) == "n/a"
    assert count(1024.0) == "1024" and count(np.int64(3)) == "3" and count(6461.5) == "6462" and count(math.nan) == ""
    assert number(0.519875) == "0.520" and number(3.42, 2) == "3.42" and number(None) == ""


def test_a_notebook_without_tables_gets_one_line(tmp_path):
    tables = tmp_path / "x" / "tables"
    tables.mkdir(parents=True)
    shutil.copy(RESULTS / "tiny" / "tables" / "01_fidelity_winrates.csv", tables)
    text = render_report("x", tmp_path)
    assert "Tables found for notebooks: 01." in text
    assert missing_line("02_multifidelity_traces", "x", ["02_table4"]) == (
        "Not run for this profile: no `02_table4.csv` in `results/x/tables/` "
        "(`make notebook NB=02_multifidelity_traces PROFILE=x` writes them).")
    section_02 = text.split("## 02_multifidelity_traces")[1].split("\n## ")[0]
    assert section_02.strip().splitlines()[-1] == missing_line("02_multifidelity_traces", "x", ["02_table4"])
    assert text.count("Not run for this profile") == len(SECTIONS) - 1
    assert "| g1 over student |" in text  # 01 is there, without its optional judge-agreement table


def test_no_tables_at_all(tmp_path):
    (tmp_path / "x" / "tables").mkdir(parents=True)
    text = render_report("x", tmp_path)
    assert "Tables found for notebooks: none." in text and text.count("Not run for this profile") == len(SECTIONS)
    with pytest.raises(ReportError, match="'y' has no tables"):
        render_report("y", tmp_path)


def test_write_report_is_deterministic(tmp_path):
    shutil.copytree(RESULTS / "tiny" / "tables", tmp_path / "tiny" / "tables")
    path = write_report("tiny", tmp_path)
    first = path.read_bytes()
    assert path == tmp_path / "tiny" / "REPORT.md"
    assert write_report("tiny", tmp_path).read_bytes() == first


def test_report_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MFNB_RESULTS", str(tmp_path))
    assert main(["report", "--profile", "all"]) == 2
    assert "no profile has tables" in capsys.readouterr().err
    shutil.copytree(RESULTS / "tiny" / "tables", tmp_path / "tiny" / "tables")
    assert main(["report", "--profile", "tiny", "smol"]) == 2  # smol has no tables here: nothing is written
    err = capsys.readouterr().err
    assert "profile 'smol' has no tables" in err and not (tmp_path / "tiny" / "REPORT.md").exists()
    assert main(["report", "--profile", "all"]) == 0
    assert (tmp_path / "tiny" / "REPORT.md").read_text(encoding="utf-8") == render_report("tiny", tmp_path)


def test_the_hbat_section_renders_the_mechanism_table_when_measured(tmp_path):
    import shutil

    import pandas as pd

    from mfnb.reports import sections
    from mfnb.reports.tables import Tables

    folder = tmp_path / "tables"
    shutil.copytree(RESULTS / "tiny" / "tables", folder)
    (folder / "04_mechanism.csv").unlink(missing_ok=True)  # tables from before the mechanism was measured
    assert not any(b.startswith("Does the importance weighting matter?") for b in sections.hbat(Tables(folder)))
    pd.DataFrame([{"control": "HbAT w/ uniform anchor", "metric": "reward", "difference": 0.1, "low": 0.05,
                   "high": 0.15, "n": 3, "over": "seeds", "reading": "higher"}]).to_csv(folder / "04_mechanism.csv",
                                                                                      index=False)
    block = next(b for b in sections.hbat(Tables(folder)) if b.startswith("Does the importance weighting matter?"))
    assert "| HbAT w/ uniform anchor | reward | +0.100 [0.050, 0.150] | 3 seeds | higher |" in block


def test_each_notebook_section_names_the_machine_its_tables_came_from(tmp_path):
    import json
    import shutil

    shutil.copytree(RESULTS / "tiny" / "tables", tmp_path / "tiny" / "tables")
    record = {"cpu": "Test CPU", "logical_cores": 2, "torch_threads": 2, "native_bf16": False, "gpus": [],
              "torch": "2.13.0", "date": "2026-12-07"}
    (tmp_path / "tiny" / "tables" / "02_machine.json").write_text(json.dumps(record))
    (tmp_path / "tiny" / "tables" / "01_machine.json").unlink(missing_ok=True)  # tables from before the record
    text = render_report("tiny", tmp_path)
    section = text.split("## 02")[1].split("## 03")[0]
    assert "Ran on: Test CPU, 2 logical cores, torch 2.13.0 on 2 threads, no native bf16, no GPU (2026-12-07)." in section
    assert "is not recorded (they predate the record)" in text.split("## 01")[1].split("## 02")[0]
