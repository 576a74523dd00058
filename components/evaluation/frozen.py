"""The frozen evaluation snapshot: the fixed rows every candidate and champion are scored on.

Why frozen: a gate compares two models, so both must see exactly the same examples. The test
split moves with every new batch of data, so the first run of a profile copies its test rows to
state/<profile>/frozen_eval/ and every later gate reuses them until someone explicitly refreshes
the snapshot (which also invalidates the champion's stored evidence: it is re-scored), or until
new data moves the snapshot's rows into the candidate's train or valid split: a model must never
be gated on rows it was trained or early-stopped on, so the snapshot is then re-frozen from the
current test split (which neither model has seen) and the reason recorded in its meta.

- preference: rows of features/samples.parquet with split == "test"; rows of a shopper erased
  since (`copyflow forget`) are left out when it is loaded, and the snapshot then has another
  fingerprint, so champion and candidate are both scored on the remaining rows;
- generator: the corpus test split (components/data/corpus.py), first `generator.eval_samples`
  rows (generation is the expensive part of evaluation).

Scoring adapters turn a model reference into the per-example frame the gates read, calling the
model families' own APIs (components/models/*/api.py). Scores are cached per (model, snapshot):
a registered model never changes, so a champion is scored once per snapshot, not every night.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from components.config import Config
from components.data.erasure import forgotten_pseudonyms
from components.data.privacy import recorded_key_id

log = logging.getLogger(__name__)

FAMILIES = ("preference", "generator")
# (model reference: local dir or MLflow URI, snapshot rows) -> per-example frame for the gate
Scorer = Callable[[str, pd.DataFrame], pd.DataFrame]


class SnapshotError(RuntimeError):
    """The snapshot cannot be built (its source is missing) or was modified after it was frozen."""


@dataclass(frozen=True)
class FrozenSnapshot:
    family: str
    path: Path
    rows: pd.DataFrame
    fingerprint: str  # sha256 of the parquet file: the identity evidence is tied to
    created_at: str
    source: str
    key_id: str | None = None  # the pseudonym key its shopper ids were made with (preference)

    @property
    def n_rows(self) -> int:
        return len(self.rows)


def frozen_dir(cfg: Config) -> Path:
    return cfg.state_dir() / "frozen_eval"


def _paths(cfg: Config, family: str) -> tuple[Path, Path]:
    if family not in FAMILIES:
        raise SnapshotError(f"no frozen snapshot is defined for model family {family!r}; known: {FAMILIES}")
    base = frozen_dir(cfg)
    return base / f"{family}.parquet", base / f"{family}.meta.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- sources


def preference_source_rows(cfg: Config) -> tuple[pd.DataFrame, str]:
    """Test rows of the features stage (the first run's test split becomes the snapshot)."""
    path = cfg.stage_dir("features") / "samples.parquet"
    if not path.exists():
        raise SnapshotError(
            f"cannot freeze the preference evaluation snapshot: {path} does not exist (run the features stage first)"
        )
    samples = pd.read_parquet(path)
    if "split" not in samples.columns:
        raise SnapshotError(f"{path}: no 'split' column; has {sorted(samples.columns)}")
    rows = samples[samples["split"] == "test"].reset_index(drop=True)
    if rows.empty:
        raise SnapshotError(f"{path}: no rows with split == 'test' to freeze")
    if "example_id" not in rows.columns:
        # The model family scores by event; its id is the stable example id.
        if "event_id" not in rows.columns:
            raise SnapshotError(f"{path}: neither 'example_id' nor 'event_id' column to identify examples")
        rows.insert(0, "example_id", rows["event_id"].astype(str))
    options = path.parent / "copy_options.parquet"
    if options.exists() and "event_id" in rows.columns:
        # The copies each impression could have shown, frozen with it: the gate's copy-choice rule
        from components.evaluation.copy_choice import with_copy_options

        rows = with_copy_options(rows, pd.read_parquet(options))
    return rows, str(path)


def generator_source_rows(cfg: Config) -> tuple[pd.DataFrame, str]:
    """The corpus test split (deterministic by content hash), capped at generator.eval_samples."""
    try:
        from components.data.corpus import load_corpus_splits
    except ImportError as exc:  # the corpus module belongs to the generator family
        raise SnapshotError(
            f"cannot freeze the generator evaluation snapshot: components.data.corpus is unavailable ({exc})"
        ) from exc
    test = load_corpus_splits(cfg)["test"]
    if test.empty:
        raise SnapshotError(f"{cfg.paths.corpus}: the corpus test split is empty (data.test_fraction too small?)")
    rows = test.head(cfg.generator.eval_samples).reset_index(drop=True)
    rows = rows[["line", "content", "summary"]].copy()
    rows.insert(0, "example_id", "corpus-" + rows["line"].astype(str))
    return rows, str(cfg.paths.corpus)


SOURCES: dict[str, Callable[[Config], tuple[pd.DataFrame, str]]] = {
    "preference": preference_source_rows,
    "generator": generator_source_rows,
}


def _with_derived_columns(family: str, rows: pd.DataFrame) -> pd.DataFrame:
    """Columns that parquet does not store well are rebuilt on load (attributes: dict of lists)."""
    if family == "generator" and "attributes" not in rows.columns:
        from components.data.attributes import parse_attributes

        rows = rows.copy()
        rows["attributes"] = rows["content"].map(parse_attributes)
    return rows


# ---------------------------------------------------------------- snapshot lifecycle


def load_snapshot(cfg: Config, family: str) -> FrozenSnapshot | None:
    """The frozen snapshot of this profile, or None if none was frozen yet."""
    data_path, meta_path = _paths(cfg, family)
    if not data_path.exists() or not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    actual = _sha256(data_path)
    if actual != meta["fingerprint"]:
        raise SnapshotError(
            f"{data_path} changed after it was frozen (sha256 {actual[:12]} != {meta['fingerprint'][:12]}); "
            "refresh the snapshot explicitly instead of editing it"
        )
    rows, left_out = without_forgotten(cfg, family, _with_derived_columns(family, pd.read_parquet(data_path)))
    # Fewer rows are another snapshot: its own fingerprint, so both champion and candidate are
    # scored again on the same rows, and no stored evidence or cached score of the full file is reused.
    fingerprint = meta["fingerprint"] if not left_out else hashlib.sha256(
        "\n".join([meta["fingerprint"], "without", *left_out]).encode()).hexdigest()
    return FrozenSnapshot(family, data_path, rows, fingerprint, meta["created_at"], meta["source"],
                          meta.get("pseudonym_key_id"))


def without_forgotten(cfg: Config, family: str, rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Preference rows of shoppers erased with `copyflow forget` (by pseudonym) are left out, and
    their example ids returned. The frozen file is not rewritten: the next re-freeze leaves them out."""
    forgotten = forgotten_pseudonyms(cfg) if family == "preference" and "user_id" in rows.columns else frozenset()
    erased = rows["user_id"].astype(str).isin(forgotten).to_numpy() if forgotten else None
    if erased is None or not erased.any():
        return rows, []
    return rows[~erased].reset_index(drop=True), sorted(rows.loc[erased, "example_id"].astype(str))


def freeze_snapshot(cfg: Config, family: str, reason: str = "") -> FrozenSnapshot:
    """Write (or overwrite) the snapshot of `family` from the family's source.
    `reason`: why it was (re-)frozen, kept in its meta."""
    from filelock import FileLock

    data_path, meta_path = _paths(cfg, family)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    rows, source = SOURCES[family](cfg)
    rows = without_forgotten(cfg, family, rows)[0]  # features built before an erasure's ingest
    if "example_id" not in rows.columns or rows["example_id"].duplicated().any():
        raise SnapshotError(f"snapshot rows for {family} need a unique 'example_id' column")
    stored = rows.drop(columns=["attributes"], errors="ignore") if family == "generator" else rows
    if problem := too_few_per_class(family, stored):
        raise SnapshotError(f"cannot freeze the {family} evaluation snapshot of profile {cfg.profile!r}: {problem}")
    key_id = recorded_key_id(cfg) if family == "preference" else None
    with FileLock(str(data_path) + ".lock", timeout=120):
        tmp = data_path.with_suffix(".parquet.tmp")
        stored.to_parquet(tmp, index=False)
        fingerprint = _sha256(tmp)
        meta = {
            "family": family,
            "fingerprint": fingerprint,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": source,
            "n_rows": len(stored),
            "profile": cfg.profile,
            **({"pseudonym_key_id": key_id} if key_id else {}),
            **({"reason": reason} if reason else {}),
        }
        os.replace(tmp, data_path)
        meta_tmp = meta_path.with_suffix(".tmp")
        meta_tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        os.replace(meta_tmp, meta_path)
    return FrozenSnapshot(family, data_path, _with_derived_columns(family, stored), fingerprint, meta["created_at"], source, key_id)


def too_few_per_class(family: str, rows: pd.DataFrame) -> str:
    """Why these preference rows cannot gate a model ('' when they can): the AUC and its interval
    need enough clicks and non-clicks (gates.MIN_EXAMPLES_PER_CLASS of each)."""
    from components.evaluation.gates import MIN_EXAMPLES_PER_CLASS

    if family != "preference" or "label" not in rows.columns:
        return ""
    positives = int((rows["label"] == 1).sum())
    negatives = len(rows) - positives
    if min(positives, negatives) >= MIN_EXAMPLES_PER_CLASS:
        return ""
    return (f"its test split has {positives} clicks and {negatives} non-clicks; the release gate needs at least "
            f"{MIN_EXAMPLES_PER_CLASS} of each to estimate AUC and its interval. Give the test split more days "
            "(features.test_days) or the profile more data")


def ensure_snapshot(cfg: Config, family: str, *, refresh: bool = False) -> FrozenSnapshot:
    """The existing snapshot, or a new one frozen from the current data (when there is none,
    when `refresh`, or when the current data trains on some of its rows)."""
    if refresh:
        return freeze_snapshot(cfg, family, reason="refresh requested")
    existing = load_snapshot(cfg, family)
    if existing is None:
        data_path, meta_path = _paths(cfg, family)
        if data_path.exists() or meta_path.exists():  # half of it deleted: say so, the champion is re-scored
            reason = f"{(meta_path if data_path.exists() else data_path).name} was missing, so the snapshot could not be verified"
            log.warning("re-freezing the %s evaluation snapshot: %s", family, reason)
            return freeze_snapshot(cfg, family, reason=reason)
        return freeze_snapshot(cfg, family, reason="first snapshot of this profile")
    if problem := too_few_per_class(family, existing.rows):  # frozen before this check existed
        log.warning("re-freezing the %s evaluation snapshot: %s", family, problem)
        return freeze_snapshot(cfg, family, reason=problem)
    current = recorded_key_id(cfg)
    if existing.key_id and current and existing.key_id != current:
        reason = (f"its shopper ids were made with pseudonym key {existing.key_id}, and the profile's data now "
                  f"with key {current} (copyflow rotate-key): no shopper of it would be known")
        log.warning("re-freezing the %s evaluation snapshot: %s", family, reason)
        return freeze_snapshot(cfg, family, reason=reason)
    trained_on = rows_in_training(cfg, existing)
    if not trained_on:
        return existing
    reason = (
        f"{trained_on} of the {existing.n_rows} rows frozen at {existing.created_at} are now in the train or valid "
        "split: a candidate trained on them cannot be gated on them"
    )
    log.warning("re-freezing the %s evaluation snapshot: %s", family, reason)
    return freeze_snapshot(cfg, family, reason=reason)


def rows_in_training(cfg: Config, snapshot: FrozenSnapshot) -> int:
    """How many snapshot rows the current data puts in the train or valid split: for preference,
    by the features' split; for the generator, by the corpus split of each row's attributes under
    the current `data.valid_fraction` / `data.test_fraction` (changing them moves rows)."""
    if snapshot.family == "generator":
        from components.data.corpus import split_of

        splits = snapshot.rows["content"].map(lambda c: split_of(c, cfg.data.valid_fraction, cfg.data.test_fraction))
        return int((splits != "test").sum())
    path = cfg.stage_dir("features") / "samples.parquet"
    if snapshot.family != "preference" or not path.exists():
        return 0
    samples = pd.read_parquet(path)
    ids = samples["example_id"] if "example_id" in samples.columns else samples.get("event_id")
    if ids is None or "split" not in samples.columns:
        return 0
    trained = set(ids[samples["split"] != "test"].astype(str))
    return int(snapshot.rows["example_id"].astype(str).isin(trained).sum())


def refresh_snapshots(cfg: Config, families: tuple[str, ...] = FAMILIES) -> dict[str, str]:
    """Re-freeze every family's snapshot from today's data: {family: new fingerprint}.

    The next gate re-scores the champion on the new rows (its stored evidence no longer matches).
    """
    return {family: freeze_snapshot(cfg, family).fingerprint for family in families}


# ---------------------------------------------------------------- scoring adapters


def score_preference(model_ref: str, rows: pd.DataFrame) -> pd.DataFrame:
    """[example_id, label, score] from the preference family's own scoring API, and where the
    snapshot froze copy options, `choice_weight` (components/evaluation/copy_choice.py)."""
    from components.evaluation.copy_choice import OPTIONS_COLUMN, choice_weights
    from components.models.preference.api import load_preference, score_examples

    model = load_preference(model_ref)
    frame = score_examples(model, rows.drop(columns=[OPTIONS_COLUMN], errors="ignore"))
    if OPTIONS_COLUMN in rows.columns:
        # The model's own scores, as the copy server and the training report choose: the cold-start
        # fallback does not read the copy, so it would tie a cold shopper's options.
        weights = choice_weights(rows, model.predict_model)
        frame["choice_weight"] = weights.reindex(rows["event_id"].astype(str).to_numpy()).to_numpy()
    return frame


def score_generator(model_ref: str, rows: pd.DataFrame) -> pd.DataFrame:
    """Per-example [example_id, bleu4, rougeL, hallucinated, ad_law_violations, ...] of the generator."""
    from components.models.generator.api import evaluate_examples, load_generator

    frame = evaluate_examples(load_generator(model_ref), rows.to_dict("records"))
    if "example_id" not in frame.columns:
        if len(frame) != len(rows):
            raise SnapshotError(f"generator evaluation returned {len(frame)} rows for {len(rows)} snapshot rows")
        frame = frame.reset_index(drop=True)
        frame.insert(0, "example_id", rows["example_id"].to_numpy())
    return frame


DEFAULT_SCORERS: dict[str, Scorer] = {"preference": score_preference, "generator": score_generator}


def score_on_snapshot(
    snapshot: FrozenSnapshot,
    model_ref: str,
    *,
    cache_key: str,
    scorer: Scorer | None = None,
) -> pd.DataFrame:
    """Per-example scores of one model on the snapshot, cached under frozen_eval/scores/.

    `cache_key` names the model immutably (its registered-model URI or training run's model URI).
    """
    scorer = scorer or DEFAULT_SCORERS[snapshot.family]
    key = hashlib.sha256(f"{cache_key}|{snapshot.fingerprint}".encode()).hexdigest()[:24]
    cache = snapshot.path.parent / "scores" / snapshot.family / f"{key}.parquet"
    if cache.exists():
        return pd.read_parquet(cache)
    frame = scorer(model_ref, snapshot.rows)
    missing = set(snapshot.rows["example_id"]) - set(frame.get("example_id", pd.Series(dtype=str)))
    if missing:
        raise SnapshotError(
            f"scoring {cache_key} left {len(missing)} snapshot examples unscored, e.g. {sorted(map(str, missing))[:3]}"
        )
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, cache)
    return frame
