"""Table 1's verdict lines (mfnb.ladder.winrates.ladder_statement): exact text from a hand-made table."""
from __future__ import annotations

import math

import pandas as pd

from mfnb.ladder import ladder_statement


def _row(candidate, baseline, wins, ties, losses, low, high, ref=math.nan, pair=""):
    n = wins + ties + losses
    return {"baseline": baseline, "candidate": candidate, "n": n, "wins": wins, "ties": ties, "losses": losses,
            "failed": 0, "win_rate": (wins + ties / 2) / n, "exact_low": low, "exact_high": high,
            "wins_over_total": wins / n, "wins_over_total_low": 0.1, "wins_over_total_high": 0.9,
            "paper_pair (reference)": pair, "paper_wins_over_total (reference)": ref}


def test_an_ordered_ladder_with_the_papers_number_beside_ours():
    table = pd.DataFrame([_row("g1", "student", 60, 20, 20, 0.55, 0.78, 0.785, "Llama3 over Vicuna"),
                          _row("g2", "g1", 40, 40, 20, 0.51, 0.69)])
    lines = ladder_statement(table, 0.05)
    assert lines[0] == ("- **g1 over student**: WinFreq 0.700 (95% exact interval [0.550, 0.780]; 60 wins, 20 ties, "
                        "20 losses, 0 failed judgements); wins / total 0.600 [0.100, 0.900], the paper's step (Llama3 "
                        "over Vicuna, wins / total): 0.785. Clearly better (exact interval above 0.5).")
    assert lines[1].endswith("wins / total 0.400 [0.100, 0.900]. Clearly better (exact interval above 0.5).")
    assert lines[3].startswith("The ladder is **ordered**")
    assert lines[4].startswith("Ties are 30.0% of the judgements")


def test_an_unresolved_step_and_a_reversed_one():
    unresolved = pd.DataFrame([_row("g1", "student", 30, 40, 30, 0.45, 0.62), _row("g2", "g1", 40, 40, 20, 0.55, 0.7)])
    lines = ladder_statement(unresolved, 0.05)
    assert lines[0].endswith("NOT better on average.")  # WinFreq 0.500 is not above one half
    assert lines[3] == "The ladder is **NOT ordered**: at least one expert does not beat the model below it."
    reversed_ = pd.DataFrame([_row("g1", "student", 10, 20, 70, 0.12, 0.3)])
    assert ladder_statement(reversed_, 0.05)[0].endswith("NOT better (exact interval below 0.5).")
    on_average = pd.DataFrame([_row("g1", "student", 35, 40, 25, 0.47, 0.63)])
    lines = ladder_statement(on_average, 0.05)
    assert lines[0].endswith("Better on average, but not resolved at this n.")
    assert lines[2] == "The ladder is ordered on average but not every step is resolved at this n."
