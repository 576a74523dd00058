"""The per-profile retrain lock, which a retrain and a prune both take."""

from __future__ import annotations

import pytest

from components.retrain_lock import RetrainBusy, one_retrain_at_a_time


def test_a_second_holder_is_refused_naming_both_a_retrain_and_a_prune_as_the_holder(make_cfg):
    """A prune holds this lock too: a retrain refused while a prune runs must not be told that
    another retrain is running (nor a prune that meets another prune)."""
    cfg = make_cfg()
    with one_retrain_at_a_time(cfg) as path:  # a prune, say
        with pytest.raises(RetrainBusy, match="a retrain or a prune of profile 'quick' is running") as refused:
            with one_retrain_at_a_time(cfg):
                pass
        assert str(path) in str(refused.value)
    with one_retrain_at_a_time(cfg):  # released: the next one gets it
        pass
