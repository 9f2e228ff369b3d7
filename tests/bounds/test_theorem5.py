"""Theorem 5's bounds (Eqs. 2-3, constants dropped) and notebook 05's parameter schema (mfnb.bounds)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mfnb import bounds


def test_theorem5_bounds():
    costs, gaps = [1.0, 4.0, 16.0], [0.785, 0.52, 0.695]
    terms = bounds.theorem5_cost_terms(costs, gaps, alpha=1, beta=1, gamma=0.3, rad=0.1, B=0)
    expected = np.log((0.2 + np.array(gaps)) / 0.6)
    np.testing.assert_allclose(terms["log_term"], expected)
    mf = bounds.mf_cost_bound(costs, gaps, 1, 1, 0.3, 0.1, B=10)
    assert mf == pytest.approx(float(np.sum(np.array(costs) * (expected + 10))))
    assert bounds.hf_cost_bound(16, 0.9, 1, 1, 0.3, 0.1, 10) == pytest.approx(16 * (math.log(1.1 / 0.6) + 10))
    with pytest.raises(ValueError, match="1 - gamma - rad > 0"):
        bounds.mf_cost_bound(costs, gaps, 1, 1, 0.8, 0.3, 1)
    with pytest.raises(ValueError, match="equal length"):
        bounds.mf_cost_bound(costs, gaps[:2], 1, 1, 0.3, 0.1, 1)
    # additive B per fidelity: with a large B the MF bound can never be below HF
    grid = bounds.theorem5_grid([1, 4, 16], [0.55, 0.9], 3, [1.0], 1.0, 0.3, 0.1, [1024])
    assert not grid["mf_wins"].any()
    assert bounds.chain_win_rate([0.5, 0.5]) == pytest.approx(0.5)


def test_params_schema_ranges(tmp_path):
    from mfnb.core.params import ParamsError
    base = bounds.HoeffdingParams.for_profile("05_hoeffding_bounds", "tiny").model_dump()
    for key, bad in (("delta", 1.0), ("n_reps", 0), ("deltas", [0.05, 0.0]), ("flip_probs", [0.5])):
        with pytest.raises(ParamsError, match=key):
            bounds.HoeffdingParams.validate_mapping({**base, key: bad})
    with pytest.raises(ParamsError, match="not reachable"):
        bounds.HoeffdingParams.validate_mapping({**base, "true_win_rates": [0.05], "tie_rates": [0.2]})
    with pytest.raises(ParamsError, match="unknown parameter 'bogus'"):
        bounds.HoeffdingParams.validate_mapping({**base, "bogus": 1})
