"""Notebook 05's sentences (mfnb.bounds.report): exact text on small hand-made tables, so a sentence and its table
cannot drift apart unnoticed."""
from __future__ import annotations

import pandas as pd

from mfnb import bounds


def test_radius_lines_read_the_table_and_compare():
    at_n = pd.DataFrame({"n": [200] * 3, "delta": [0.05] * 3, "method": ["Lemma 1 (paper)", "hoeffding", "cs_mixture"],
                         "radius": [0.136, 0.096, 0.150]})
    assert bounds.radius_lines(at_n, 200, 0.05) == [
        "- At n = 200 and delta = 0.05: Lemma 1's radius is 0.136, Hoeffding's own constant gives 0.096 (a factor "
        "1.42 smaller), and the mixture confidence sequence, valid at every n at once, has radius 0.150: wider than "
        "Lemma 1's fixed-n radius."]
    at_n.loc[2, "radius"] = 0.120
    assert bounds.radius_lines(at_n, 200, 0.05)[0].endswith("radius 0.120: narrower than Lemma 1's fixed-n radius.")


def test_convention_threshold_line_places_gamma_in_both_conventions():
    assert bounds.convention_threshold_line(0.3, [0.0, 0.2, 0.2]) == (
        "- The two conventions put gamma in different places: WinFreq = P(win) + ties/2, so WinFreq = 0.30 is reached "
        "with P(win) = 0.20 at tie rate 0.20, while wins / total = 0.30 needs P(win) = 0.30 whatever the ties.")
    assert "the same P(win) without ties" in bounds.convention_threshold_line(0.3, [0.0])


def test_noise_lines_give_the_true_win_rate_a_noisy_judge_shows_at_gamma():
    noise = pd.DataFrame({"flip_prob": [0.0, 0.1, 0.2], "z": [0.5, -2.25, 1.0]})
    assert bounds.noise_lines(noise, 0.3) == [
        "- Largest |simulated - closed form| / SE: 2.25 (about 3.5 is the most one expects by chance over this many "
        "cells): the closed form holds.",
        "- At flip probability 0.10 a true WinRate of 0.250 is seen as gamma = 0.30: a noisy judge triggers upgrades "
        "early."]


def test_theorem5_lines_say_where_the_mf_bound_wins():
    paper = pd.DataFrame({"alpha": [1.0, 2.0], "B": [0.0, 1024.0], "mf_wins": [True, False],
                          "mf_over_hf": [0.8, 1.7]})
    region = pd.DataFrame({"B": [0.0, 0.0, 1024.0, 1024.0], "mf_wins": [True, False, False, False]})
    assert bounds.theorem5_lines(paper, region) == [
        "- At the paper's own setting (its Table 1 win rates, costs 1 : c : c^2 with c = 4): the MF bound is below the "
        "HF bound only at alpha = 1, B = 0 of 2 (alpha, B) settings; MF / HF ranges from 0.80 to 1.70.",
        "- Over the grid at B = 0: the MF bound is smaller in 50.0% of the (alpha, cost ratio, step win rate) cells.",
        "- Over the grid at B = 1024: the MF bound is smaller in 0.0% of the (alpha, cost ratio, step win rate) cells.",
        "- So at batch sizes like the paper's, Eqs. 2-3 as printed never favour multi-fidelity alignment in this grid: "
        "every fidelity pays its own additive B term. The paper's measured savings (Tables 2-4) are not what these "
        "equations establish."]

