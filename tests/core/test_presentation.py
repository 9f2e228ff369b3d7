"""What a reader sees: one rounding rule, byte-stable figures, progress bars that end truthfully."""
from __future__ import annotations

import json
import math
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import papermill  # noqa: E402
import pytest  # noqa: E402

from mfnb.core.formatting import fmt, fmt_interval, round_half_up, round_table  # noqa: E402
from mfnb.core.plots import save_figure  # noqa: E402


def test_table_and_sentence_round_the_same_way():
    # 135.5/200 is stored as 0.67749999...: f"{x:.3f}" says 0.677, pandas' round says 0.678
    x = 135.5 / 200
    assert f"{x:.3f}" == "0.677"
    assert fmt(x) == "0.678"
    assert round_table(pd.DataFrame({"w": [x]}))["w"][0] == 0.678
    assert fmt(2.675, 2) == "2.68" and fmt(-0.0005) == "-0.001" and fmt(0.0004) == "0.000"
    assert fmt(0.05, signed=True) == "+0.050" and fmt(-3, signed=True) == "-3"
    assert fmt(0.25, 1, percent=True) == "25.0%"
    assert fmt(7) == "7" and fmt(True) == "True" and fmt(None) == "n/a" and fmt(math.nan) == "n/a"
    assert fmt_interval(0.1234, 0.98765) == "[0.123, 0.988]"


def test_round_table_leaves_other_columns_alone():
    frame = pd.DataFrame({"a": [1.0005, math.nan], "b": ["x", "y"], "n": [1, 2]})
    out = round_table(frame)
    assert out["a"][0] == 1.001 and math.isnan(out["a"][1])
    assert list(out["b"]) == ["x", "y"] and list(out["n"]) == [1, 2]
    assert frame["a"][0] == 1.0005  # the input is not changed
    assert round_half_up(float("inf")) == float("inf")


def test_saving_the_same_figure_twice_gives_identical_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("MFNB_RESULTS", str(tmp_path))

    def save():
        fig, ax = plt.subplots()
        ax.plot([1, 3, 2], label="a")
        ax.set_title("stable")
        ax.legend()
        paths = save_figure(fig, "tiny", "same")
        plt.close(fig)
        return [p.read_bytes() for p in paths]

    first = save()
    time.sleep(1.1)  # a creation date would now differ by a second
    assert save() == first
    assert b"CreationDate" not in first[1]


def test_progress_bars_in_an_executed_notebook_end_on_their_final_line(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.cells = [nbformat.v4.new_code_cell(
        "from mfnb.core.progress import progress\n"
        "for _ in progress(range(3), desc='loop', leave=False):\n    pass\n"
        "bar = progress(total=5, desc='manual')\nbar.update(5)\nbar.close()")]
    source, out = tmp_path / "bars.ipynb", tmp_path / "bars.out.ipynb"
    nbformat.write(nb, source)
    papermill.execute_notebook(str(source), str(out), kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    texts = ["".join(o["data"]["text/plain"]) for o in json.loads(out.read_text())["cells"][0]["outputs"]
             if "data" in o]
    assert len(texts) == 2, texts
    assert "loop: 100%" in texts[0] and "3/3" in texts[0]
    assert "manual: 100%" in texts[1] and "5/5" in texts[1]
    assert not any(" 0/" in t for t in texts)
