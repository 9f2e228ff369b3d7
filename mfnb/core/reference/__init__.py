"""The papers' reported numbers, transcribed as CSV, for "paper vs ours" tables.

They are only ever shown as labelled references beside our measurements.
"""
from importlib import resources

import pandas as pd

TABLES = {
    "mf_table1": "mf_table1_fidelity_winrates.csv",
    "mf_traces": "mf_tables2_3_traces.csv",
    "mf_table4": "mf_table4_test_vs_vanilla.csv",
    "expo_table1": "expo_table1_less_data.csv",
    "expo_table2": "expo_table2_off_the_shelf.csv",
    "expo_table3": "expo_table3_alpha_search.csv",
    "hbat_table1": "hbat_table1_main.csv",
    "hbat_table4": "hbat_table4_ablation.csv",
    "hbat_table7": "hbat_table7_efficiency.csv",
}


def load(name: str) -> pd.DataFrame:
    """One of the papers' tables by short name (see TABLES)."""
    if name not in TABLES:
        raise KeyError(f"unknown reference table {name!r}; known: {sorted(TABLES)}")
    with resources.files(__package__).joinpath(TABLES[name]).open() as f:
        return pd.read_csv(f)
