import pandas as pd

from components.features.labels import impression_labels, link_outcomes
from tests.features.factories import event, frame, ts


def _impressions(events: pd.DataFrame) -> pd.DataFrame:
    return events[events["event_type"] == "impression"].reset_index(drop=True)


def test_click_links_to_the_latest_earlier_impression_with_the_same_copy():
    events = frame("events", [
        event("i1", "u", "p", "impression", ts(hours=0), "c1"),
        event("i2", "u", "p", "impression", ts(hours=1), "c2"),      # same product, other copy
        event("i3", "u", "p", "impression", ts(hours=2), "c1"),
        event("k1", "u", "p", "click", ts(hours=1, seconds=5), "c1"),  # -> i1 (i2 shows another copy)
        event("k2", "u", "p", "click", ts(hours=2), "c1"),             # same instant as i3 -> i3
        event("k3", "u", "q", "click", ts(hours=3), "c9"),             # no impression at all
    ])
    linked, report = link_outcomes(_impressions(events), events[events["event_type"] == "click"])
    assert linked.tolist()[:2] == ["i1", "i3"] and pd.isna(linked.tolist()[2])
    assert (report.linked, report.unlinked) == (2, 1)
    labels, counts = impression_labels(_impressions(events), events, label_window_days=0)
    assert labels["label"].tolist() == [1, 0, 1]
    assert counts["click_unlinked"] == 1


def test_outcomes_without_copy_link_on_user_and_product_like_obd():
    events = frame("events", [
        event("i1", "u", "p", "impression", ts(hours=0), None),
        event("i2", "v", "p", "impression", ts(hours=0), None),
        event("k1", "u", "p", "click", ts(seconds=3), None),
        event("b1", "v", "p", "purchase", ts(seconds=9), None, value=5.0),
    ])
    labels, _ = impression_labels(_impressions(events), events, label_window_days=0)
    assert labels["label"].tolist() == [1, 0]
    assert labels["label_purchase"].tolist() == [0, 1]


def test_simultaneous_impressions_in_two_slots_each_keep_their_click_like_obd():
    # OBD shows one item to one pseudo-user in two slots at the same instant; each click names
    # its slot. On user + product alone both clicks went to one impression.
    events = frame("events", [
        event("i1", "u", "p", "impression", ts(hours=0), None, position=1),
        event("i2", "u", "p", "impression", ts(hours=0), None, position=2),
        event("k1", "u", "p", "click", ts(hours=0), None, position=1),
        event("k2", "u", "p", "click", ts(hours=0), None, position=2),
    ])
    labels, counts = impression_labels(_impressions(events), events, label_window_days=0)
    assert labels["label"].tolist() == [1, 1] and counts["click_linked"] == 2


def test_window_labels_count_any_click_on_the_product_within_the_window():
    events = frame("events", [
        event("i1", "u", "p", "impression", ts(day=0), "c1"),
        event("i2", "u", "p", "impression", ts(day=10), "c1"),
        event("k1", "u", "p", "click", ts(day=1.5), "c2"),  # other copy, 1.5 days later
    ])
    one_day, _ = impression_labels(_impressions(events), events, label_window_days=1)
    two_days, _ = impression_labels(_impressions(events), events, label_window_days=2)
    assert one_day["label"].tolist() == [0, 0]
    assert two_days["label"].tolist() == [1, 0]


def test_a_click_long_after_the_last_impression_labels_nothing():
    """A click two weeks after the product's only impression answers something the log does not
    show; linked, it would label an old (training-period) impression with a test-period click."""
    events = frame("events", [
        event("i1", "u", "p", "impression", ts(hours=0), "c1"),
        event("i2", "u", "q", "impression", ts(hours=0), "c2"),
        event("k1", "u", "p", "click", ts(hours=14 * 24), "c1"),  # 14 days later
        event("k2", "u", "q", "click", ts(hours=23), "c2"),       # within the day
    ])
    linked, report = link_outcomes(_impressions(events), events[events["event_type"] == "click"], link_max_hours=24)
    assert pd.isna(linked.tolist()[0]) and linked.tolist()[1] == "i2" and (report.linked, report.unlinked) == (1, 1)
    labels, counts = impression_labels(_impressions(events), events, label_window_days=0, link_max_hours=24)
    assert labels["label"].tolist() == [0, 1] and counts["click_unlinked"] == 1
    unbounded, _ = impression_labels(_impressions(events), events, label_window_days=0)
    assert unbounded["label"].tolist() == [1, 1]  # what it was before link_max_hours
