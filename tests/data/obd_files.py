"""A tiny Open Bandit Dataset sample in the real CSV layout (unnamed index column first)."""

from __future__ import annotations

ITEMS = """,item_id,item_feature_0,item_feature_1,item_feature_2,item_feature_3
0,0,-0.67,ceca2003,eb6f942c,79509155
1,1,-0.72,270de572,eb6f942c,79509155
2,2,1.35,270de572,aa11bb22,79509155
"""
LOGS = """,timestamp,item_id,position,click,propensity_score,user_feature_0,user_feature_1,user_feature_2,user_feature_3,user-item_affinity_0,user-item_affinity_1,user-item_affinity_2
0,2019-11-24 00:03:13.442536+00:00,2,3,0,0.33,cef3390e,03a5648a,7bc94a2d,9bde591f,0.0,0.0,0.0
1,2019-11-24 00:03:36.705207+00:00,1,1,1,0.33,cef3390e,03a5648a,7bc94a2d,9bde591f,0.0,1.0,0.0
2,2019-11-25 10:00:00.000000+00:00,0,2,0,0.33,81ce123c,f1c2d6a3,2723d2eb,c39b0c7d,0.0,0.0,0.0
3,2019-11-25 10:00:09.100000+00:00,2,1,1,0.33,81ce123c,f1c2d6a3,2723d2eb,c39b0c7d,0.0,0.0,2.0
"""


def write_obd(root, policy="random", campaign="all", logs=LOGS, items=ITEMS):
    folder = root / policy / campaign
    folder.mkdir(parents=True)
    (folder / f"{campaign}.csv").write_text(logs, encoding="utf-8")
    (folder / "item_context.csv").write_text(items, encoding="utf-8")
    return root
