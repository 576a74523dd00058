"""The copy server follows the champion release: a promote or rollback reaches a running server
within `serving.reload_seconds`, on a real registry (the world's generators are templates, so
the loader here only records which model it was asked for). While the registry is unreachable,
the champion it last named keeps serving."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from components.registry.promotion import promote, rollback
from components.serving.app import Champion, create_app
from components.tracking import StoreUnreachable
from tests.conftest import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_promote_and_a_rollback_reach_a_running_server_after_the_reload_interval(fresh_world):
    cfg = fresh_world.cfg.model_copy(update={"serving": fresh_world.cfg.serving.model_copy(update={"reload_seconds": 30})})
    loads, clock = [], Clock()
    champion = Champion(cfg, "generator", load=lambda ref: loads.append(ref) or f"generator from {ref}", clock=clock)

    first = champion.current()
    assert first.origin == "release 1 (champion)" and first.model == f"generator from {first.ref}"
    promote(cfg, note="test", actor="test")
    clock.now = 29.0
    assert champion.current() is first  # not looked up again yet
    clock.now = 30.0
    second = champion.current()
    assert second.origin == "release 2 (champion)" and second.ref != first.ref
    clock.now = 60.0
    assert champion.current().model == second.model  # same champion: not loaded again
    assert (first.release, second.release, champion.not_loaded) == ("1", "2", None)
    assert loads == [first.ref, second.ref]

    rollback(cfg, actor="test")
    clock.now = 90.0
    back = champion.current()
    assert back.origin == "release 1 (champion)" and back.ref == first.ref
    assert loads == [first.ref, second.ref, first.ref]


def test_the_last_champion_keeps_serving_while_the_registry_is_unreachable(fresh_world, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = fresh_world.cfg.model_copy(update={"serving": fresh_world.cfg.serving.model_copy(update={"reload_seconds": 30})})
    clock = Clock()
    champion = Champion(cfg, "generator", load=lambda ref: f"generator from {ref}", clock=clock)
    first = champion.current()
    down = f"http://127.0.0.1:{free_port()}"  # a tracking server nobody runs
    champion.cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": down})})
    clock.now = 30.0
    assert champion.current() is first and "StoreUnreachable: the MLflow server at" in champion.last_error
    champion.cfg = cfg  # back up
    clock.now = 60.0
    assert champion.current().ref == first.ref and champion.last_error is None

    unreachable = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": down})})
    fresh = Champion(unreachable, load=str)
    with pytest.raises(StoreUnreachable):  # nothing served yet: nothing to keep serving (a 503)
        fresh.current()
    client = TestClient(create_app(unreachable, Champion(unreachable, load=str)))
    for answer in (client.get("/health"), client.post("/copy", json={"user": "u", "product": "p"})):  # a 503, not a 500
        assert answer.status_code == 503 and "no generator to serve: the MLflow server at" in answer.text


def test_a_new_champion_that_fails_to_load_leaves_the_last_one_serving(fresh_world):
    cfg = fresh_world.cfg.model_copy(update={"serving": fresh_world.cfg.serving.model_copy(update={"reload_seconds": 30})})
    clock, attempts = Clock(), []

    def load(ref):
        attempts.append(ref)
        if len(attempts) > 1:
            raise RuntimeError("weights.pt is truncated")
        return f"generator from {ref}"

    champion = Champion(cfg, "generator", load=load, clock=clock)
    first = champion.current()
    promote(cfg, note="test", actor="test")
    clock.now = 30.0
    assert champion.current() is first and "weights.pt is truncated" in champion.last_error
    assert (first.release, champion.not_loaded) == ("1", "release 2 (champion)")  # /health names both


def test_a_model_that_cannot_load_is_not_tried_again_on_every_request(fresh_world):
    cfg = fresh_world.cfg.model_copy(update={"serving": fresh_world.cfg.serving.model_copy(update={"reload_seconds": 30})})
    clock, attempts = Clock(), []

    def load(ref):
        attempts.append(ref)
        raise RuntimeError("weights.pt is truncated")

    champion = Champion(cfg, "preference", load=load, clock=clock)
    for now in (0.0, 1.0, 29.0):
        clock.now = now
        with pytest.raises(RuntimeError, match="truncated"):
            champion.current()
    assert len(attempts) == 1  # answered from the recorded failure until the interval passes
    clock.now = 30.0
    with pytest.raises(RuntimeError):
        champion.current()
    assert len(attempts) == 2


def test_after_a_promote_the_family_that_looked_up_earlier_looks_up_again_at_once(fresh_world):
    """Each family looks up its champion on its own timer. Before, the preference model looked up
    10 s after the generator kept release 1 for 10 s after the generator found release 2, and
    every request then was drawn uniformly (one release serves, all its models together)."""
    from components.serving.app import aligned

    cfg = fresh_world.cfg.model_copy(update={"serving": fresh_world.cfg.serving.model_copy(update={"reload_seconds": 30})})
    clock, failing, tried = Clock(), set(), []

    def load_preference(ref):
        tried.append(ref)
        if ref in failing:
            raise OSError("broken model")
        return f"preference from {ref}"

    generator = Champion(cfg, "generator", load=str, clock=clock)
    preference = Champion(cfg, "preference", load=load_preference, clock=clock)
    assert aligned(generator, preference).release == "1"
    clock.now = 10.0
    first = preference.current()
    assert first.release == "1"

    promote(cfg, note="test", actor="test")
    clock.now = 35.0  # the generator's interval is over, the preference model's (until 40) not
    assert aligned(generator, preference).release == "2"
    assert preference.current().release == "2"

    # Rolled back to a release whose preference model now fails to load: it is tried once per
    # generator look-up, not on every request, and release 2's keeps the choice off meanwhile.
    failing.add(first.ref)
    rollback(cfg, actor="test")
    clock.now = 70.0
    assert generator.current().release == "1"  # its timer ran out first
    clock.now = 70.2
    assert aligned(generator, preference).release == "1"
    assert preference.loaded.release == "2" and preference.not_loaded == "release 1 (champion)"
    looked = len(tried)
    for step in range(1, 6):  # requests a moment apart, each look-up at its own time
        clock.now = 70.0 + step
        assert aligned(generator, preference).release == "1"
        clock.now += 0.5
        preference.current()  # the request's choice looks the preference model up
    assert len(tried) == looked, "the failing model was loaded again between look-up intervals"
