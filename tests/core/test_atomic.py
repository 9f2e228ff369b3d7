"""Atomic writes: complete or absent, never half-written; readable like an ordinary file."""
from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from mfnb.core.atomic import atomic_dir, atomic_path, write_csv, write_json


def test_failed_write_keeps_the_old_file_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "table.csv"
    write_csv(target, pd.DataFrame({"a": [1]}))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert pd.read_csv(target)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_written_files_have_ordinary_permissions(tmp_path):
    write_json(tmp_path / "x.json", {"a": 1})
    mode = stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH


def test_atomic_dir_replaces_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("v2-partial")
            raise RuntimeError("killed")
    assert (target / "weights").read_text() == "v1"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_kill_between_the_two_renames_is_recovered(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    os.replace(target, tmp_path / ".model.old")  # what a kill after the first rename leaves
    with pytest.raises(RuntimeError):
        with atomic_dir(target):
            raise RuntimeError("killed again")
    assert (target / "weights").read_text() == "v1"
