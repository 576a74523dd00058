"""Names shared by the registry, the CLI, serving and the flows: one place to change them."""

from __future__ import annotations

# model family (the `model` field of a training manifest) -> MLflow registered model
REGISTERED_MODELS: dict[str, str] = {
    "preference": "copyflow-preference",
    "generator": "copyflow-generator",
    "effect": "copyflow-effect",
}
RELEASE_MODEL = "copyflow-release"

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)

# Tags every registered model version carries (tests check all of them are present).
LINEAGE_TAGS = (
    "git_commit",
    "dvc.lock.sha256",
    "data.sha256",
    "ge.verdict",
    "prefect_flow_run_id",
    "training_run_id",
    "profile",
    "gate.verdict",
)
METRIC_TAG_PREFIX = "metric."
# Metrics shown by `copyflow status` and copied to version tags, per family.
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "preference": ("auc", "auc_ci_low", "auc_ci_high", "logloss", "ece", "pr_auc", "copy_choice_lift"),
    "generator": ("bleu4", "rougeL", "distinct2", "distinct2_vs_human", "hallucination_rate", "unlisted_rate", "ad_law_violations"),
    "effect": (),
}

RELEASE_MANIFEST_PATH = "release/manifest.json"

# The one vocabulary of every verdict tag (gate.verdict, release.gate, ge.verdict), on runs and
# versions alike: a UI search such as tags."gate.verdict" = 'pass' finds every kind of run.
VERDICT_PASS, VERDICT_FAIL = "pass", "fail"


def verdict(passed: bool) -> str:
    return VERDICT_PASS if passed else VERDICT_FAIL


def registered_model(family: str) -> str:
    if family not in REGISTERED_MODELS:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(REGISTERED_MODELS)}")
    return REGISTERED_MODELS[family]
