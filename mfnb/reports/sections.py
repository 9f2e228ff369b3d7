"""What each notebook's section of a report shows: its headline tables and the verdict on each paper claim, with
our interval and the paper's number beside it where the tables carry one.

Every verdict is the notebook's own, read from its tables (or decided by the same function the notebook uses);
nothing here is typed from a run.  A section returns Markdown blocks; a notebook whose headline tables are
missing gets :func:`missing_line` instead.
"""
from __future__ import annotations

from typing import Callable

import pandas as pd

from mfnb import stats
from mfnb.bounds.report import coverage_lines, theorem5_lines
from mfnb.core.formatting import fmt
from mfnb.multifidelity.verdicts import overall_verdict
from mfnb.reports.render import bullets, count, estimate, missing, number, table
from mfnb.reports.tables import Tables

PAPER = "(reference)"


def missing_line(notebook: str, profile: str, absent: list[str]) -> str:
    """The one line a notebook without its headline tables gets."""
    return (f"Not run for this profile: no {', '.join(f'`{n}.csv`' for n in absent)} in `results/{profile}/tables/` "
            f"(`make notebook NB={notebook} PROFILE={profile}` writes them).")


# ------------------------------------------------------------------------------------------------- 01


def ladder(t: Tables) -> list[str]:
    """Table 1 of the multi-fidelity paper: each expert against the model below it, in both tie conventions."""
    frame = t.csv("01_fidelity_winrates")
    rows = []
    for r in frame.to_dict("records"):
        step = stats.verdict(r["exact_low"], r["exact_high"]).replace("multi-fidelity ", "")
        paper = r.get(f"paper_wins_over_total {PAPER}")
        rows.append([f"{r['candidate']} over {r['baseline']}", count(r["n"]),
                     " / ".join(count(r[k]) for k in ("wins", "ties", "losses", "failed")),
                     estimate(r["win_rate"], r["exact_low"], r["exact_high"]),
                     estimate(r["wins_over_total"], r["wins_over_total_low"], r["wins_over_total_high"]),
                     "" if missing(paper) else f"{number(paper)} ({r[f'paper_pair {PAPER}']})", step])
    blocks = [table(["step", "n", "wins / ties / losses / failed", "WinFreq (ties 1/2), exact interval",
                     "wins / total", "paper, wins / total (reference)", "step verdict"], rows)]
    ordered = bool((frame["exact_low"] > 0.5).all())
    on_average = bool((frame["win_rate"] > 0.5).all())
    verdict = ("**ordered**: every step resolved by its exact WinFreq interval" if ordered else
               "**ordered on average**, but not every step is resolved at this n" if on_average else
               "**not ordered**: at least one expert does not beat the model below it")
    ties = frame["ties"].sum() / frame["n"].sum()
    blocks.append(f"Claim (Algorithm 2 needs it): each expert beats the model below it. The ladder is {verdict}. "
                  f"Ties are {fmt(float(ties), 1, percent=True)} of the judgements: wins / total (the paper's metric) "
                  "counts them as not won, WinFreq as half won.")
    agreement = t.csv("01_judge_agreement")
    if agreement is not None:
        blocks.append("How far to trust the judge (`01_judge_agreement.csv`):\n\n" + table(
            ["judge", "parse rate", "pairs the checker separates", "agreement with the checker"],
            [[r["judge"], number(r["parse_rate"]), count(r["agreement_n"]),
              estimate(r["agreement"], r["agreement_low"], r["agreement_high"])]
             for r in agreement.to_dict("records")]))
    return blocks


# ------------------------------------------------------------------------------------------------- 02


def multifidelity(t: Tables) -> list[str]:
    """Table 4 (multi-fidelity against each baseline at equal budget), the paper's claim, the spend to match
    vanilla and how many validation decisions the validation set supports.  The claim's verdict comes from
    notebook 02's own rule (:func:`mfnb.multifidelity.verdicts.overall_verdict`) applied to its Table 4."""
    t4 = t.csv("02_table4")
    rows = []
    for r in t4.to_dict("records"):
        note = (f"skipped {r['skipped']} in {count(r['seeds_mf_skipped'])} of "
                f"{count(r['seeds'])} seeds" if r["seeds_mf_skipped"] else "")
        if r.get("identical_models") in (True, "True"):
            note = "; ".join(filter(None, [note, "the two runs ended with the same model"]))
        rows.append([count(r["batch_size"]), r["baseline"], r["compared_at"], count(r["seeds"]),
                     estimate(r["win_rate"], r["win_rate_low"], r["win_rate_high"]),
                     estimate(r["wins_over_total"], r["wins_over_total_low"], r["wins_over_total_high"]),
                     number(r.get(f"paper_wins_over_total {PAPER}")), f"**{r['verdict']}**", note])
    o = overall_verdict(t4)
    blocks = [
        "Table 4: the multi-fidelity model's test win rate against each baseline at equal expert budget (intervals "
        "over training seeds and test prompts; the verdict reads WinFreq against one half):\n\n"
        + table(["B", "baseline", "compared at", "seeds", "WinFreq", "wins / total", "paper, wins / total (reference)",
                 "verdict", "flag (the multi-fidelity run)"], rows),
        (f"Claim (Table 4): multi-fidelity alignment beats vanilla DPO at equal budget: **{o['paper_claim']}** "
         f"({o['paper_better']} of {o['paper_comparisons']} comparisons with the paper's vanilla baselines resolved "
         f"in its favour, {o['paper_better_without_skips']} of them without a skipped fidelity; {o['paper_worse']} "
         f"against it). Over all {o['comparisons']} comparisons: better in {o['better']}, worse in {o['worse']}, "
         f"inconclusive in {o['inconclusive']}.")]
    spend = t.csv("02_spend_ratio")
    if spend is not None and len(spend):
        blocks.append(
            "The spend at which the multi-fidelity run first matched vanilla(m=M)'s final test win rate against the "
            "top expert, over vanilla's spend (a ratio below one is cheaper; t-interval over seeds):\n\n"
            + table(["B", "seeds", "seeds that matched", "spend ratio", "median"],
                    [[r["batch_size"], count(r["seeds"]), count(r["reached"]), estimate(r["mean"], r["low"], r["high"]),
                      number(r["median"])] for r in spend.to_dict("records")]))
    decisions = t.csv("02_decisions_summary")
    if decisions is not None:
        blocks.append(
            "The runs' validation decisions, and how many the validation set supports (gamma outside the look's "
            "exact interval, or outside Lemma 1's radius):\n\n"
            + table(["action", "looks", "statistical", "supported (exact)", "supported (Lemma 1)",
                     "same under the other tie convention"],
                    [[r["action"], count(r["looks"]), count(r["statistical"]), count(r["supported_exact"]),
                      count(r["supported_lemma1"]), count(r["same_under_other_convention"])]
                     for r in decisions.to_dict("records")]))
    return blocks


# ------------------------------------------------------------------------------------------------- 03


def claim_bullets(claims: pd.DataFrame) -> str:
    """One line per claim row: its verdict, the paper's numbers and ours with their intervals."""
    lines = []
    for r in claims.to_dict("records"):
        scope = f", {r['scope']}" if not missing(r.get("scope")) else ""
        detail = f" ({r['per_metric']})" if not missing(r.get("per_metric")) else ""
        lines.append(f"**{r['claim']}**{scope} ({r['source']}): **{r['verdict']}**{detail}. "
                     f"Paper: {r['paper']}. Ours: {r['ours']}.")
    return bullets(lines)


def expo(t: Tables) -> list[str]:
    """ExPO: one verdict per claim, the optimal alpha per data fraction, Table 1 and the reward model behind it."""
    verdicts, claims = t.csv("03_verdicts"), t.csv("03_claims")
    blocks = ["One verdict per claim, over the data fractions or control models it applies to:\n\n" + table(
        ["claim", "source", "verdict", "reproduced / reversed / inconclusive / not testable"],
        [[r["claim"], r["source"], f"**{r['verdict']}**",
          " / ".join(count(r.get(k, 0)) for k in ("reproduced", "reversed", "inconclusive", "not_testable"))]
         for r in verdicts.to_dict("records")])]
    optimal = t.csv("03_optimal_alpha")
    if optimal is not None:
        seeded = "train_seed" in optimal and optimal["train_seed"].nunique() > 1
        blocks.append("The optimal alpha per data fraction" + (" and training seed" if seeded else "") + ", chosen by "
                      "the reward model (bootstrap interval over the validation prompts), beside the paper's (its "
                      "Table 3):\n\n" + table(
                          ["data", "optimal alpha", "paper (reference)", "update norm", "extrapolated norm"],
                          [[r["data"] + (f" (seed {int(r['train_seed'])})" if seeded else ""),
                            estimate(r["alpha_by_reward"], r["alpha_low"], r["alpha_high"], 1),
                            number(r["paper_optimal_alpha"], 1), number(r["delta_norm"], 2),
                            number(r["extrapolated_norm"], 2)] for r in optimal.to_dict("records")]))
    table1 = t.csv("03_expo_table1")
    if table1 is not None:
        seeds = "alpha_per_seed" in table1
        blocks.append("Table 1 on the test prompts (" + ("intervals crossed over training seeds and prompts; alpha: "
                      "the median of the seeds' choices" if seeds else "paired bootstrap intervals") + "), the paper's "
                      "numbers beside ours:\n\n"
                      + table(["model", "alpha", "reward", "win rate", "LC win rate", "paper reward",
                               "paper win rate", "paper LC win rate"],
                              [[r["model"], "" if r["alpha"] < 0 else number(r["alpha"], 1),
                                estimate(r["reward"], r["reward_low"], r["reward_high"]),
                                estimate(r["win_rate"], r["win_rate_low"], r["win_rate_high"]),
                                estimate(r["lc_win_rate"], r["lc_win_rate_low"], r["lc_win_rate_high"]),
                                number(r["paper_reward"], 2), number(r["paper_win_rate"]),
                                number(r["paper_lc_win_rate"])] for r in table1.to_dict("records")]))
    accuracy = t.csv("03_reward_model_accuracy")
    if accuracy is not None:
        blocks.append("The reward model that chooses alpha, against the world's known quality:\n\n" + table(
            ["pairs from", "pairs", "accuracy"],
            [[r["pairs_from"], count(r["pairs"]), number(r["accuracy"])] for r in accuracy.to_dict("records")]))
    blocks.append("Each claim per data fraction or control model:\n\n" + claim_bullets(claims))
    return blocks


# ------------------------------------------------------------------------------------------------- 04


def hbat(t: Tables) -> list[str]:
    """HbAT: the alignment tax the ablations need, Table 4 beside the paper's, every claim, the orderings, Table 7."""
    blocks = []
    tax = t.json("04_conflict_check")
    if tax and {"quality", "reward"} <= set(tax):
        q, w = tax["quality"], tax["reward"]
        over = f"seeds: {q['seeds']}" + (f"; paired over {q['prompts']} test prompts" if "prompts" in q else "")
        blocks.append("The alignment tax HbAT addresses, two-stage DPO minus SFT (`04_conflict_check.json`): quality "
                      f"{estimate(q['mean'], q['low'], q['high'], signed=True)}, reward "
                      f"{estimate(w['mean'], w['low'], w['high'], signed=True)} "
                      f"({over}): " + ("a tax, resolved." if q["high"] < 0 < w["low"] else "no tax resolved."))
    t4 = t.csv("04_table4")
    blocks.append("Table 4, our mean over seeds with its t-interval; the paper's scores are on its own scales "
                  "(PandaLM, reward-model score, GPT-4 win rate in percent):\n\n" + table(
                      ["method", "seeds", "quality", "reward", "win rate", "paper PandaLM", "paper reward",
                       "paper GPT-4 win", "paper source"],
                      [[r["method"], count(r["seeds"]), estimate(r["quality"], r["quality_low"], r["quality_high"]),
                        estimate(r["reward"], r["reward_low"], r["reward_high"]),
                        estimate(r["win_rate"], r["win_rate_low"], r["win_rate_high"]),
                        number(r["paper_pandalm"], 2), number(r["paper_reward"], 2), number(r["paper_gpt4_win"], 2),
                        "" if missing(r["paper_source"]) else r["paper_source"]] for r in t4.to_dict("records")]))
    blocks.append("Each claim, the paper's numbers and ours with their intervals:\n\n" + claim_bullets(t.csv("04_claims")))
    orderings = t.csv("04_orderings")
    if orderings is not None:
        counts = orderings.groupby(["metric", "paper_metric"], sort=False)["verdict"].value_counts().unstack(fill_value=0)
        blocks.append(f"The paper's {len(orderings)} pairwise orderings of methods (Tables 1 and 4), each judged by "
                      "the t-interval of the paired difference over seeds:\n\n" + table(
                          ["our score", "paper's score", "reproduced", "reversed", "inconclusive"],
                          [[metric, paper_metric, *(str(int(row.get(v, 0))) for v in stats.CLAIM_VERDICTS)]
                           for (metric, paper_metric), row in counts.iterrows()]))
    mechanism = t.csv("04_mechanism")
    if mechanism is not None and len(mechanism):
        blocks.append("Does the importance weighting matter? HbAT minus the same penalty with other weights "
                      "(not in the paper; `04_mechanism.csv`):\n\n" + table(
                          ["control", "score", "HbAT minus control", "paired over", "reading"],
                          [[r["control"], r["metric"], estimate(r["difference"], r["low"], r["high"], signed=True),
                            "" if missing(r["over"]) else f"{count(r['n'])} {r['over']}", r["reading"]]
                           for r in mechanism.to_dict("records")]))
    t7 = t.csv("04_table7")
    if t7 is None:
        blocks.append("Table 7 (time and memory) was not measured in this profile (no `04_table7.csv`).")
    else:
        blocks.append("Table 7, each method relative to DPO (fresh processes):\n\n" + table(
            ["method", "time", "CPU time", "peak memory", "paper time (reference)", "paper memory (reference)"],
            [[r["method"], number(r["relative_time"], 2), number(r["relative_cpu"], 2),
              number(r["relative_peak_rss"], 2), number(r["paper_relative_time"], 2),
              number(r["paper_relative_memory"], 2)] for r in t7.to_dict("records")]))
    return blocks


# ------------------------------------------------------------------------------------------------- 05


def bounds(t: Tables) -> list[str]:
    """Lemma 1 against tighter intervals, the paper's own decisions, and Theorem 5's bounds; the sentences are
    notebook 05's own (:mod:`mfnb.bounds.report`), computed from the same tables."""
    blocks = []
    plan = t.csv("05_sample_size_plan")
    if plan is not None:
        blocks.append("Validation prompts needed for a given radius: Lemma 1's constant against Hoeffding's own:\n\n"
                      + table(["radius", "n (Lemma 1)", "n (Hoeffding)"],
                              [[number(r["radius"], 2), count(r["n_lemma1_paper"]), count(r["n_hoeffding"])]
                               for r in plan.to_dict("records")]))
    coverage = t.csv("05_coverage")
    if coverage is not None and len(coverage):
        delta = 1 - float(coverage["level"].iloc[0])
        blocks.append("Claim (Lemma 1): the interval covers the true win rate with probability at least the level. "
                      "Coverage by simulation:\n\n" + "\n".join(coverage_lines(coverage, delta)))
    decisions = t.csv("05_paper_decisions_summary")
    blocks.append("The paper's own decisions (its Tables 2-3): how many each check supports at its validation "
                  "size:\n\n" + table(
                      ["kind", "decision", "looks", "Lemma 1", "Hoeffding", "union bound", "exact",
                       "median n Lemma 1 needs"],
                      [[r["kind"], r["decision"], count(r["looks"]), count(r["supported_paper"]),
                        count(r["supported_hoeffding"]), count(r["supported_union"]), count(r["supported_exact"]),
                        count(r["median_n_needed_paper"])] for r in decisions.to_dict("records")]))
    setting, region = t.csv("05_theorem5_paper_setting"), t.csv("05_theorem5_region")
    if setting is not None and region is not None:
        blocks.append("Claim (Theorem 5): the multi-fidelity cost bound (Eq. 2) is below the high-fidelity one "
                      "(Eq. 3):\n\n" + "\n".join(theorem5_lines(setting, region)))
    return blocks


# ------------------------------------------------------------------------------------------------- order

# in the notebooks' order: (notebook, title, the tables its section cannot do without, the section)
SECTIONS: tuple[tuple[str, str, tuple[str, ...], Callable[[Tables], list[str]]], ...] = (
    ("01_fidelity_winrates", "fidelity win rates, the multi-fidelity paper's Table 1", ("01_fidelity_winrates",),
     ladder),
    ("02_multifidelity_traces", "multi-fidelity alignment, Algorithm 2 and Table 4", ("02_table4",), multifidelity),
    ("03_expo_alpha_curves", "ExPO, weak-to-strong extrapolation", ("03_verdicts", "03_claims"), expo),
    ("04_hbat_ablations", "HbAT, hybrid alignment training", ("04_table4", "04_claims"), hbat),
    ("05_hoeffding_bounds", "Lemma 1 and Theorem 5 of the multi-fidelity paper", ("05_paper_decisions_summary",),
     bounds),
)
