import numpy as np
import pandas as pd

from components.features.history import recent_clicked_products


def test_history_is_the_last_n_clicks_strictly_before_most_recent_last():
    click_user = np.array([0, 0, 0, 0, 1])
    click_time = np.array([1, 2, 3, 5, 1])
    products = pd.Series(["a", "b", "c", "d", "z"])
    histories = recent_clicked_products(
        query_user=np.array([0, 0, 0, 1, 2]),
        query_time=np.array([5, 6, 1, 9, 9]),
        click_user=click_user,
        click_time=click_time,
        click_tiebreak=np.arange(5),
        click_product=products,
        length=2,
    ).to_pylist()
    # at t=5 the click at 5 is excluded; at 6 it is the most recent; t=1 sees nothing
    assert histories == [["b", "c"], ["c", "d"], [], ["z"], []]


def test_same_time_clicks_follow_the_tiebreak_order():
    histories = recent_clicked_products(
        np.array([0]), np.array([10]), np.array([0, 0]), np.array([4, 4]), np.array([1, 0]),
        pd.Series(["late", "early"]), length=5,
    ).to_pylist()
    assert histories == [["early", "late"]]
