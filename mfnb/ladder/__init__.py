"""Notebook 01: is the fidelity ladder ordered (Table 1), and can the judge tell (agreement with the world's checker)?

* :mod:`.config` -- the notebook's parameters.
* :mod:`.winrates` -- Table 1: each step's win rate, intervals, the paper's number beside ours.
* :mod:`.agreement` -- each judge's parse rate and agreement with the checker on Table 1's pairs.
"""
from mfnb.ladder.agreement import (agreement_rows, checker_lines, checker_table, judge_agreement, truth_from,
                                   verdict_rows)
from mfnb.ladder.config import AgreementParams, FidelityWinratesParams
from mfnb.ladder.winrates import ladder_pairs, ladder_statement, ladder_table
