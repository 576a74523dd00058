"""A real registry world: a real sqlite MLflow store in a tmp dir, tiny real models trained
and registered through the same code path the retrain flow uses (components.registry.candidates).

build_world, in this order:
  release 1: weak preference (two of four features) + template generator -> first release, auto-promoted
  degraded:  preference trained on shuffled labels -> gate fails (captured, nothing aliased)
  release 2: full preference + better generator -> passes, becomes challenger
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from components.config import Config, deep_merge, load_config
from components.evaluation.gates import GateFailed
from tests.conftest import PARAMS, ROOT, TINY
from tests.registry import helpers

# Small but honest: bootstrap of 300 resamples over a 480-row snapshot; 20 generator rows.
TEST_OVERRIDES = {
    "generator": {"eval_samples": 20},
    "gates": {"generator_bleu4_min": 0.3, "max_ece": 0.08, "bootstrap_resamples": 300, "lock_timeout_s": 60},
}


def write_params(base: Path, **overrides) -> Path:
    """base/params.yaml: the project's params with this world's paths, store and test knobs.

    A file (not only a Config) because subprocesses and the Prefect flow load it by path.
    """
    isolated = {
        "paths": {
            "artifacts": str(base / "artifacts"),
            "state": str(base / "state"),
            "pseudonym_key_file": str(base / "pseudonym.key"),
            "mlflow_dir": str(base / "mlflow"),
            "corpus": str(ROOT / "data/advertisegen/train.jsonl"),
            "ad_law_words": str(ROOT / "components/resources/ad_law_words.txt"),
            "latin_words": str(ROOT / "components/resources/latin_words.txt"),
        },
        "tracking": {"uri": f"sqlite:///{base / 'mlflow.db'}"},
    }
    raw = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
    raw = deep_merge(raw, deep_merge(TINY, isolated))
    # profile overrides win over base values, so the test knobs go into the profile itself
    raw["profiles"]["quick"] = deep_merge(raw["profiles"]["quick"] or {}, deep_merge(TEST_OVERRIDES, overrides))
    path = base / "params.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def registry_cfg(base: Path, **overrides) -> Config:
    return load_config(write_params(base, **overrides), "quick")


def all_aliases(cfg: Config) -> dict[str, dict[str, str]]:
    """Every alias of every copyflow registered model: the state a failed gate must not touch."""
    from components.registry.names import REGISTERED_MODELS, RELEASE_MODEL
    from components.registry.store import model_aliases, registry_client

    client = registry_client(cfg)
    return {name: model_aliases(client, name) for name in [*REGISTERED_MODELS.values(), RELEASE_MODEL]}


@dataclass
class World:
    cfg: Config
    base: Path
    first: object = None  # ReleaseOutcome of release 1
    second: object = None  # ReleaseOutcome of release 2
    failure: GateFailed | None = None
    aliases_before_failure: dict = field(default_factory=dict)
    aliases_after_failure: dict = field(default_factory=dict)
    manifests: dict = field(default_factory=dict)
    parent_run_id: str | None = None  # the retrain run release 2 was made in


def build_world(base: Path, *, generator: bool = True, with_failure: bool = True) -> World:
    """generator=False: preference-only releases (no corpus); with_failure=False skips the degraded run."""
    from components.registry.candidates import release_candidates

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    base.mkdir(parents=True, exist_ok=True)
    cfg = registry_cfg(base)
    world = World(cfg=cfg, base=base)
    helpers.write_samples(cfg)
    m = world.manifests
    m["weak"] = helpers.train_preference(cfg, base, n_features=2)
    if generator:
        m["gen1"] = helpers.train_generator(cfg, base)
    first = [m[k] for k in ("weak", "gen1") if k in m]
    world.first = release_candidates(cfg, first, project_dir=ROOT, scorers=helpers.SCORERS)

    if with_failure:
        m["degraded"] = helpers.train_preference(cfg, base, shuffled=True)
        world.aliases_before_failure = all_aliases(cfg)
        try:
            release_candidates(cfg, [m["degraded"]], project_dir=ROOT, scorers=helpers.SCORERS)
        except GateFailed as failure:
            world.failure = failure
        world.aliases_after_failure = all_aliases(cfg)

    # A new batch of data arrives before the next retrain; the frozen snapshot must not follow it.
    helpers.write_samples(cfg, seed=1)
    m["better"] = helpers.train_preference(cfg, base)
    if generator:
        # no attribute value in the suffix: 显瘦 would contradict a 宽松 product's 版型 (the gate counts it)
        m["gen2"] = helpers.train_generator(cfg, base, suffix="面料柔软亲肤，穿着舒适又好看。")
    second = [m[k] for k in ("better", "gen2") if k in m]
    # As the retrain flow does: inside its parent run, which carries the GE verdict and flow-run id.
    import mlflow

    parent_tags = {"ge.verdict": "pass", "prefect_flow_run_id": "flow-run-2", "kind": "retrain"}
    with mlflow.start_run(run_name="retrain-quick", tags=parent_tags) as parent:
        world.parent_run_id = parent.info.run_id
        world.second = release_candidates(
            cfg, second, project_dir=ROOT, scorers=helpers.SCORERS, parent_run_id=parent.info.run_id
        )
    return world


def clone_world(world: World, base: Path, **overrides) -> World:
    """An independent copy (own database, state and promotion lock) to mutate freely.

    Artifacts stay where the original runs wrote them (absolute URIs in the database); the clone
    only reads them, and the runs it creates get new ids.
    """
    base.mkdir(parents=True, exist_ok=True)
    shutil.copy2(world.base / "mlflow.db", base / "mlflow.db")
    for name in ("state", "artifacts"):
        if (world.base / name).exists():
            shutil.copytree(world.base / name, base / name)
    return replace(world, cfg=registry_cfg(base, **overrides), base=base)


