"""The promotion lock's location: one file per store, whichever route a command takes to it."""

from __future__ import annotations

from components.registry.store import lock_path


def test_the_sqlite_and_the_server_route_to_one_store_share_the_lock(make_cfg, monkeypatch):
    monkeypatch.delenv("COPYFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("COPYFLOW_PROMOTION_LOCK", raising=False)
    direct = make_cfg(tracking={"uri": None})  # the embedded store: paths.mlflow_dir/mlflow.db
    served = make_cfg(tracking={"uri": "http://127.0.0.1:5000"})  # `make up`'s server on that store
    assert lock_path(direct) == lock_path(served) == direct.paths.mlflow_dir / "mlflow.promotion.lock"
    monkeypatch.setenv("COPYFLOW_PROMOTION_LOCK", "/shared/copyflow.lock")  # several hosts: a shared path
    assert str(lock_path(served)) == "/shared/copyflow.lock"
