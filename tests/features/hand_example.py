"""A tiny log whose every feature is worked out by hand in test_build.py.

Products: pA (裙, 白色, 100), pB (裤, 黑色, 200), pC (裙, 黑色, 50).
u1 (signed up 10 days before START):
  e1  0h      impression pA/cA pos 0      e2  0h+10s  click pA/cA
  e3  1h      impression pB/cB pos 1
  e4  2h      impression pC/cC pos 0      e5  2h+5s   click pC/cC
  e6  2h+30s  add_to_cart pC              e7  2h+60s  purchase pC (value 50)
  e8  3h      impression pA/cA pos 2      e9  3h      click pB/cB  <- same instant as e8
u2 (signed up 1 day before START):
  e10 1h      impression pA/cA pos 3      (same instant as e3, another shopper)
"""

from __future__ import annotations

import pandas as pd

from tests.features.factories import START, copy, event, frame, product, ts, user


def hand_tables() -> dict[str, pd.DataFrame]:
    products = [
        product("pA", {"类型": ["裙"], "颜色": ["白色"]}, price=100.0),
        product("pB", {"类型": ["裤"], "颜色": ["黑色"]}, price=200.0),
        product("pC", {"类型": ["裙"], "颜色": ["黑色"]}, price=50.0),
    ]
    copies = [copy("cA", "pA", "白色连衣裙，清新"), copy("cB", "pB", "黑色长裤"), copy("cC", "pC", "黑色半身裙")]
    users = [user("u1", START - pd.Timedelta(days=10)), user("u2", START - pd.Timedelta(days=1))]
    events = [
        event("e1", "u1", "pA", "impression", ts(hours=0), "cA", 0),
        event("e2", "u1", "pA", "click", ts(hours=0, seconds=10), "cA", 0),
        event("e3", "u1", "pB", "impression", ts(hours=1), "cB", 1),
        event("e4", "u1", "pC", "impression", ts(hours=2), "cC", 0),
        event("e5", "u1", "pC", "click", ts(hours=2, seconds=5), "cC", 0),
        event("e6", "u1", "pC", "add_to_cart", ts(hours=2, seconds=30), "cC", 0),
        event("e7", "u1", "pC", "purchase", ts(hours=2, seconds=60), "cC", 0, value=50.0),
        event("e8", "u1", "pA", "impression", ts(hours=3), "cA", 2),
        event("e9", "u1", "pB", "click", ts(hours=3), "cB", 1),
        event("e10", "u2", "pA", "impression", ts(hours=1), "cA", 3),
    ]
    return {
        "products": frame("products", products),
        "copies": frame("copies", copies),
        "users": frame("users", users),
        "events": frame("events", events),
    }
