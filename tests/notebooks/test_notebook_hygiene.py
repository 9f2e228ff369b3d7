"""Source notebooks are committed without outputs and with one stable metadata block, so opening and
running them in JupyterLab (behind the nbstripout filter that `make venv` configures) leaves git clean."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
STABLE_METADATA = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}}
EXTRA_KEYS = "metadata.language_info metadata.widgets"  # as in the Makefile's git-filters target


def _clean(data: bytes) -> bytes:
    """What the git clean filter stores for these bytes."""
    return subprocess.run([sys.executable, "-m", "nbstripout", "-t", "--extra-keys", EXTRA_KEYS],
                          input=data, capture_output=True, check=True).stdout


def _committed(path: Path) -> bytes:
    """The notebook as committed (HEAD), so a Run All saved in JupyterLab does not fail these tests; the file
    on disk outside a git checkout."""
    rel = path.relative_to(ROOT).as_posix()
    proc = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=ROOT, capture_output=True)
    return proc.stdout if proc.returncode == 0 else path.read_bytes()


def test_gitattributes_filter_only_the_source_notebooks():
    lines = [l for l in (ROOT / ".gitattributes").read_text().splitlines() if l and not l.startswith("#")]
    assert lines == ["notebooks/*.ipynb filter=nbstripout diff=ipynb"]
    assert EXTRA_KEYS in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs_and_stable_metadata(path):
    """The committed notebook (HEAD) has no outputs and stable metadata (the filter's output would have none
    by construction, so this reads what was really committed)."""
    nb = json.loads(_committed(path))
    assert nb["metadata"] == STABLE_METADATA
    for cell in nb["cells"]:
        assert set(cell["metadata"]) <= {"tags"}, (cell["id"], cell["metadata"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["id"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_what_the_filter_would_commit(path):
    """The git clean filter leaves the committed bytes unchanged (so a fresh clone shows no diff)."""
    committed = _committed(path)
    assert _clean(committed).decode() == committed.decode()


def test_filter_strips_what_jupyterlab_writes():
    nb = json.loads(_committed(NOTEBOOKS[0]))
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.7"}
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hello\n"]}]
    code["execution_count"] = 7
    assert _clean(json.dumps(nb, indent=1).encode()).decode() == _committed(NOTEBOOKS[0]).decode()
