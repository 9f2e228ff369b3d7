"""No typed results in the notebooks' prose (issue 10): every number a reader sees in a markdown cell must be
printed by a code cell from the run's tables, or be a labelled paper reference read from ``mfnb/reference``.

The check fails on any digit in a markdown cell of a committed notebook once these are taken out:

* equations: ``$...$`` and ``$$...$$`` (the papers' formulas and symbols, e.g. $\\sqrt{\\log(2/\\delta)/n}$);
* code spans: ```...``` (parameter names and values, module paths, commands);
* heading numbering: the number(s) right after the ``#`` marks (``## 2b · Repeated checks``, ``# 02 · ...``);
* list numbering: ``1.`` at the start of a line;
* citations of a paper's own numbered parts: ``Table 4``, ``Tables 2-3``, ``Figure 5``, ``Eq. 2``, ``Eqs. 2-3``,
  ``Section 2``, ``Lemma 1``, ``Theorem 5``, ``Algorithm 2``, ``Assumption 3``, ``Appendix B``, and of other
  papers by author and year (``Maurer & Pontil 2009``, ``Howard et al. 2021``);
* names that contain digits: a word that starts with a letter (``GPT-4o``, ``Llama3-8B``, ``g1``, ``SmolLM2``),
  a model size (``7B``, ``135M``), or a benchmark named with its version (``AlpacaEval 2.0``).

Anything else with a digit (``0.3``, ``200 prompts``, ``1:4:16``, ``1/2``) is typed and fails: print it from code,
or write it as a symbol or a code span that names the parameter it comes from.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.S)
_CODE = re.compile(r"`[^`\n]+`")
_HEADING = re.compile(r"^(#+\s+)[0-9]+[a-z]?(?:\.[0-9]+)*\b", re.M)
_LIST = re.compile(r"^(\s*)[0-9]+\.(?=\s)", re.M)
_CITATION = re.compile(r"\b(?:Tables?|Figures?|Fig\.|Eqs?\.|Equations?|Sections?|Lemmas?|Theorems?|Algorithms?|"
                       r"Assumptions?|Appendix)\s+[0-9A-Z]+(?:\s*(?:[-–,/]|and)\s*[0-9]+)*"
                       r"|\b[A-Z][A-Za-z-]+(?:\s+et al\.)?,?\s+(?:19|20)[0-9]{2}\b"
                       r"|\bAlpacaEval\s+[0-9](?:\.[0-9])?\b")
_TOKEN = re.compile(r"[^\s=()\[\]{},;:!?/<>*\"'’“”|+~^&]+")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]*[A-Za-z0-9]?$|^[0-9]+(?:\.[0-9]+)?[A-Za-z]{1,2}$")


def typed_numbers(markdown: str) -> list[str]:
    """The words of a markdown cell that carry a digit outside the allowed patterns (see module docstring)."""
    text = _MATH.sub(" ", markdown)
    text = _CODE.sub(" ", text)
    text = _HEADING.sub(r"\1", text)
    text = _LIST.sub(r"\1", text)
    text = _CITATION.sub(" ", text)
    bad = []
    for token in _TOKEN.findall(text):
        token = token.strip(".-–·")
        if any(ch.isdigit() for ch in token) and not _NAME.match(token):
            bad.append(token)
    return bad


def test_the_check_itself():
    allowed = ("## 2b · Repeated checks\n1. radius of Lemma 1 ($\\sqrt{\\log(2/\\delta)/n}$), Tables 2-3, Eqs. 2-3, Eqs. 6/9\n"
               "`n_reps = 4000` judged by GPT-4o on Llama3-8B and Qwen2-7B (7B models), g1 < g2, Table 4, Section 5, "
               "Maurer & Pontil 2009, Howard et al. 2021, AlpacaEval 2.0")
    assert typed_numbers(allowed) == []
    assert typed_numbers("the radius is 0.136 at 200 prompts") == ["0.136", "200"]
    assert typed_numbers("costs 1:4:16, ties count 1/2") == ["1", "4", "16", "1", "2"]
    assert typed_numbers("B = 512 and 20% of the judgements") == ["512", "20%"]
    assert typed_numbers("a 200-prompt validation set") == ["200-prompt"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_markdown_cells_type_no_results(path):
    cells = json.loads(path.read_text())["cells"]
    found = {i: typed_numbers("".join(c["source"])) for i, c in enumerate(cells) if c["cell_type"] == "markdown"}
    found = {i: words for i, words in found.items() if words}
    assert not found, f"{path.name}: typed numbers in markdown cells (cell index: words): {found}"
