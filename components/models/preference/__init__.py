"""Preference (click) models: a logistic-regression baseline and a deep CTR model.

Modules: data (features -> packed matrix), nets (the two networks), modules (LightningModules),
train (one `train(cfg, kind, ...)`), fallback (cold start), api (model folders, loading,
scoring), explain (per-prediction contributions). Nothing is imported here on purpose.
"""
