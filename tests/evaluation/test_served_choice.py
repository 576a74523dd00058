"""What the server's choice earns on generated candidates: the summary over requests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.evaluation.served_choice import summarize


def _requests(n_shoppers: int = 40, per_shopper: int = 20) -> pd.DataFrame:
    """Half the shoppers gain +100% from the pick, half nothing: the requests of one shopper
    move together."""
    user = np.repeat(np.arange(n_shoppers), per_shopper)
    gains = user % 2 == 0
    return pd.DataFrame({"user_id": [f"u{u}" for u in user], "uniform": 0.1, "pick": np.where(gains, 0.2, 0.1),
                         "served": np.where(gains, 0.18, 0.1), "best": 0.2, "differ": True, "scored": True})


def test_the_lifts_interval_resamples_shoppers_not_requests():
    report = summarize(_requests(), seed=0)
    assert report["requests"] == 800 and report["shoppers"] == 40
    assert report["lift_pick"] == pytest.approx(0.5) and report["gap_closed"] == pytest.approx(0.5)
    low, high = report["lift_pick_ci"]
    # 40 independent shoppers: [0.35, 0.65]. Resampling the 800 requests gave [0.465, 0.533], as
    # if a shopper's 20 requests were 20 shoppers.
    assert low < 0.42 and high > 0.58
    assert low > 0.25 and high < 0.75
