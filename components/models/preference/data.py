"""Features stage output -> one packed float32 matrix per split, the models' only input.

Why packed: one tensor `x` of shape [N, n_numeric + 3 + history_length] serves every consumer
unchanged — Lightning batches, the ONNX graph (one input), the MLflow pytorch pyfunc (which
only accepts one array), captum. Ids are small integers stored exactly in float32 (< 2**24).

Layout of a row:  numeric features (normalized) | user idx | product idx | category idx |
                  copy idx | history product idx x L (left-padded with 0, most recent last)
Index conventions: 0 = padding, 1 = out-of-vocabulary (an id not seen in training).
Products use a *catalogue* index (every product with attributes), so a product never seen in a
training impression still brings its attribute values; its id embedding falls back to OOV.
Copies use a catalogue index too: the deep model looks up which of the product's attribute
values the shown copy's text mentions (static content, read from the clean copies table).
All statistics (fill values, log transforms, means, stds, vocabularies) are fit on train only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.features.copy_mentions import values_mentioned  # the copy-mention rule, as the features stage reads it

PAD, OOV = 0, 1
FIRST_ID = 2
ID_COLUMNS = ("user_id", "product_id", "category", "copy_id")
SPLITS = ("train", "valid", "test")
REQUIRED_SAMPLE_COLUMNS = ("event_id", "user_id", "product_id", "category", "timestamp", "split", "is_cold")
MAX_ATTRS_PER_PRODUCT = 16
MAX_MENTIONS_PER_COPY = 16


class FeatureDataError(ValueError):
    """The features stage output does not match the contract the preference model expects."""


@dataclass(frozen=True)
class FeatureTables:
    samples: pd.DataFrame
    spec: dict
    product_attributes: pd.DataFrame
    features_dir: Path
    copies: pd.DataFrame | None = None   # copy_id, product_id, text (clean stage); None = no copy text


def _examples(df: pd.DataFrame, mask: pd.Series, columns: list[str]) -> str:
    return df.loc[mask, columns].head(3).to_string()


def validate_samples(samples: pd.DataFrame, spec: dict, source: str) -> None:
    """Fail loudly (naming file, column and example rows) instead of training on bad input."""
    label = spec.get("label", "label")
    seq = spec.get("sequence", ["hist_products"])
    needed = list(REQUIRED_SAMPLE_COLUMNS) + list(spec.get("numeric", [])) + [label] + list(seq)
    missing = [c for c in needed if c not in samples.columns]
    if missing:
        raise FeatureDataError(f"{source}: missing columns {missing}; has {sorted(samples.columns)}")
    if samples.empty:
        raise FeatureDataError(f"{source}: no rows")
    bad_label = ~samples[label].isin([0, 1])
    if bad_label.any():
        raise FeatureDataError(f"{source}: column {label!r} must be 0/1; bad rows:\n{_examples(samples, bad_label, ['event_id', label])}")
    bad_split = ~samples["split"].isin(SPLITS)
    if bad_split.any():
        raise FeatureDataError(f"{source}: column 'split' must be one of {SPLITS}; bad rows:\n{_examples(samples, bad_split, ['event_id', 'split'])}")
    for split in SPLITS:
        if not (samples["split"] == split).any():
            raise FeatureDataError(f"{source}: split {split!r} has no rows (time-based split too short?)")
    train_labels = samples.loc[samples["split"] == "train", label]
    if train_labels.nunique() < 2:
        raise FeatureDataError(f"{source}: the train split has a single label value ({train_labels.iloc[0]}); nothing to learn")
    for column in ("user_id", "product_id"):
        null = samples[column].isna()
        if null.any():
            raise FeatureDataError(f"{source}: {int(null.sum())} rows with missing {column}:\n{_examples(samples, null, ['event_id', column])}")
    for column in spec.get("numeric", []):
        if not pd.api.types.is_numeric_dtype(samples[column]) and not pd.api.types.is_bool_dtype(samples[column]):
            raise FeatureDataError(f"{source}: numeric feature {column!r} has dtype {samples[column].dtype}")
        values = samples[column].to_numpy(dtype=np.float64, na_value=np.nan)
        inf = np.isinf(values)
        if inf.any():
            raise FeatureDataError(f"{source}: numeric feature {column!r} has infinite values:\n{_examples(samples, pd.Series(inf, index=samples.index), ['event_id', column])}")


def load_feature_tables(features_dir: Path | str, copies_path: Path | str | None = None) -> FeatureTables:
    """Read samples.parquet, feature_spec.json and product_attributes.parquet of the features
    stage, and (when given and present) the clean copies table for copy mentions."""
    features_dir = Path(features_dir)
    paths = {name: features_dir / name for name in ("samples.parquet", "feature_spec.json", "product_attributes.parquet")}
    absent = [str(p) for p in paths.values() if not p.exists()]
    if absent:
        raise FileNotFoundError(f"features stage output missing: {absent} (run the features stage first)")
    spec = json.loads(paths["feature_spec.json"].read_text(encoding="utf-8"))
    for key in ("numeric", "categorical", "label"):
        if key not in spec:
            raise FeatureDataError(f"{paths['feature_spec.json']}: missing key {key!r}")
    samples = pd.read_parquet(paths["samples.parquet"])
    validate_samples(samples, spec, str(paths["samples.parquet"]))
    attrs = pd.read_parquet(paths["product_attributes.parquet"])
    missing = [c for c in ("product_id", "attr_key", "attr_value") if c not in attrs.columns]
    if missing:
        raise FeatureDataError(f"{paths['product_attributes.parquet']}: missing columns {missing}")
    copies = None
    if copies_path is not None and Path(copies_path).exists():
        copies = pd.read_parquet(copies_path)
        missing = [c for c in ("copy_id", "product_id", "text") if c not in copies.columns]
        if missing:
            raise FeatureDataError(f"{copies_path}: missing columns {missing}")
    return FeatureTables(samples=samples, spec=spec, product_attributes=attrs, features_dir=features_dir, copies=copies)


def mentioned_attributes(text: str, attributes: list[tuple[str, str]]) -> list[str]:
    """The "key#value" attributes whose value the text mentions (`values_mentioned`), sorted, at most
    MAX_MENTIONS_PER_COPY: what the deep model reads of a copy."""
    found = sorted({f"{k}#{v}" for k, v in values_mentioned(text, attributes)})
    return found[:MAX_MENTIONS_PER_COPY]


def copy_mentions(copies: pd.DataFrame | None, product_attributes: pd.DataFrame) -> dict[str, list[str]]:
    """copy_id -> the "key#value" attributes of its product that its text mentions."""
    if copies is None or copies.empty:
        return {}
    by_product: dict[str, list[tuple[str, str]]] = {}
    for product, key, value in zip(product_attributes["product_id"].astype(str), product_attributes["attr_key"].astype(str), product_attributes["attr_value"].astype(str)):
        by_product.setdefault(product, []).append((key, value))
    return {
        copy_id: mentioned_attributes(text, by_product.get(product, []))
        for copy_id, product, text in zip(copies["copy_id"].astype(str), copies["product_id"].astype(str), copies["text"].fillna("").astype(str))
    }


@dataclass
class NumericTransform:
    """Per-feature: fill missing with the train median, log1p heavy-tailed counts, standardize."""

    name: str
    fill: float
    log: bool
    mean: float
    std: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        values = np.where(np.isnan(values), self.fill, values)
        if self.log:
            values = np.sign(values) * np.log1p(np.abs(values))
        return (values - self.mean) / self.std


def _fit_numeric(name: str, values: np.ndarray) -> NumericTransform:
    finite = values[~np.isnan(values)]
    fill = float(np.median(finite)) if finite.size else 0.0
    filled = np.where(np.isnan(values), fill, values)
    # Counts and amounts (non-negative, long right tail) are far better behaved on a log scale.
    log = bool(filled.min() >= 0 and np.quantile(filled, 0.99) > 20)
    if log:
        filled = np.log1p(filled)
    std = float(filled.std())
    return NumericTransform(name=name, fill=fill, log=log, mean=float(filled.mean()), std=std if std > 1e-6 else 1.0)


def _vocab(values) -> dict[str, int]:
    return {v: FIRST_ID + i for i, v in enumerate(sorted({str(x) for x in values}))}


def _as_list(value) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [str(v) for v in list(value)]


@dataclass
class FeatureEncoder:
    numeric: list[NumericTransform]
    users: dict[str, int]
    categories: dict[str, int]
    catalogue: dict[str, int]          # product_id -> catalogue index
    trained_products: list[str]        # products seen in train impressions (get their own id embedding)
    attributes: dict[str, int]         # "key#value" -> attribute index
    product_attrs: dict[str, list[str]] = field(default_factory=dict)
    history_length: int = 20
    copies: dict[str, int] = field(default_factory=dict)        # copy_id -> copy catalogue index
    mentions: dict[str, list[str]] = field(default_factory=dict)  # copy_id -> mentioned attributes

    # ---- fitting -------------------------------------------------------------------------
    @classmethod
    def fit(cls, train: pd.DataFrame, spec: dict, product_attributes: pd.DataFrame, history_length: int,
            copies: pd.DataFrame | None = None) -> "FeatureEncoder":
        numeric = [_fit_numeric(c, train[c].to_numpy(dtype=np.float64, na_value=np.nan)) for c in spec["numeric"]]
        tokens = product_attributes["attr_key"].astype(str) + "#" + product_attributes["attr_value"].astype(str)
        per_product = tokens.groupby(product_attributes["product_id"].astype(str)).agg(lambda s: sorted(set(s))[:MAX_ATTRS_PER_PRODUCT])
        catalogue_ids = set(per_product.index) | set(train["product_id"].astype(str))
        mentions = copy_mentions(copies, product_attributes)
        return cls(
            numeric=numeric,
            users=_vocab(train["user_id"]),
            categories=_vocab(train["category"].dropna()),
            catalogue=_vocab(catalogue_ids),
            trained_products=sorted(set(train["product_id"].astype(str))),
            attributes=_vocab(tokens),
            product_attrs={k: list(v) for k, v in per_product.items()},
            history_length=history_length,
            copies=_vocab(mentions.keys()),
            mentions=mentions,
        )

    # ---- layout --------------------------------------------------------------------------
    @property
    def numeric_names(self) -> list[str]:
        return [t.name for t in self.numeric]

    @property
    def n_numeric(self) -> int:
        return len(self.numeric)

    @property
    def width(self) -> int:
        return self.n_numeric + len(ID_COLUMNS) + self.history_length

    def column_names(self) -> list[str]:
        """Names of the packed columns (the MLflow signature's columns)."""
        return (
            [f"num__{n}" for n in self.numeric_names]
            + [f"idx__{c}" for c in ID_COLUMNS]
            + [f"hist__{i:02d}" for i in range(self.history_length)]
        )

    @property
    def attribute_keys(self) -> list[str]:
        return sorted({a.split("#", 1)[0] for a in self.attributes})

    def catalogue_tables(self) -> dict[str, np.ndarray]:
        """Constant lookups of the deep model: product id-embedding row and attribute indices per
        catalogue index, and the attribute key (1-based; 0 = padding) of every attribute index."""
        size = FIRST_ID + len(self.catalogue)
        id_row = np.full(size, OOV, dtype=np.int64)
        id_row[PAD] = PAD
        trained = {p: FIRST_ID + i for i, p in enumerate(self.trained_products)}
        attrs = np.zeros((size, MAX_ATTRS_PER_PRODUCT), dtype=np.int64)
        for product, idx in self.catalogue.items():
            id_row[idx] = trained.get(product, OOV)
            codes = [self.attributes[a] for a in self.product_attrs.get(product, []) if a in self.attributes]
            attrs[idx, : len(codes)] = codes
        copy_mentions = np.zeros((FIRST_ID + len(self.copies), MAX_MENTIONS_PER_COPY), dtype=np.int64)
        for copy_id, idx in self.copies.items():
            codes = [self.attributes[a] for a in self.mentions.get(copy_id, []) if a in self.attributes]
            copy_mentions[idx, : len(codes)] = codes
        key_index = {k: 1 + i for i, k in enumerate(self.attribute_keys)}
        attribute_key = np.zeros(FIRST_ID + len(self.attributes), dtype=np.int64)
        for attribute, idx in self.attributes.items():
            attribute_key[idx] = key_index[attribute.split("#", 1)[0]]
        return {"product_id_row": id_row, "product_attrs": attrs, "attribute_key": attribute_key, "copy_mentions": copy_mentions}

    @property
    def n_product_ids(self) -> int:
        return FIRST_ID + len(self.trained_products)

    # ---- transform -----------------------------------------------------------------------
    def mention_codes(self, texts: list[str], attributes: dict[str, list[str]]) -> np.ndarray:
        """[len(texts), MAX_MENTIONS_PER_COPY] attribute codes (0-padded) of the product values
        each text mentions: the deep net's copy input for copies it has no table row for."""
        pairs = [(k, v) for k, values in attributes.items() for v in values]
        codes = np.zeros((len(texts), MAX_MENTIONS_PER_COPY), dtype=np.int64)
        for row, text in enumerate(texts):
            known = [self.attributes[a] for a in mentioned_attributes(text, pairs) if a in self.attributes]
            codes[row, : len(known)] = known
        return codes

    def _ids(self, values: pd.Series, vocab: dict[str, int]) -> np.ndarray:
        if not vocab:
            return np.full(len(values), OOV, dtype=np.int64)
        index = pd.Index(list(vocab.keys()), dtype=object)
        pos = index.get_indexer(values.astype(str).to_numpy(dtype=object))
        codes = np.array(list(vocab.values()), dtype=np.int64)
        return np.where(pos >= 0, codes[np.maximum(pos, 0)], OOV)

    def _history(self, histories: pd.Series) -> np.ndarray:
        out = np.zeros((len(histories), self.history_length), dtype=np.int64)
        catalogue = self.catalogue
        for row, value in enumerate(histories.to_numpy(dtype=object)):
            recent = _as_list(value)[-self.history_length :]
            if recent:
                out[row, self.history_length - len(recent) :] = [catalogue.get(p, OOV) for p in recent]
        return out

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Packed float32 matrix [len(df), width]; unseen ids -> OOV, missing numerics -> train median,
        an infinite numeric -> FeatureDataError (naming the feature and rows)."""
        missing = [c for c in self.numeric_names + ["user_id", "product_id", "category"] if c not in df.columns]
        if missing:
            raise FeatureDataError(f"cannot score: input frame lacks columns {missing}")
        raw = {t.name: df[t.name].to_numpy(dtype=np.float64, na_value=np.nan) for t in self.numeric}
        for name, values in raw.items():
            # A missing value has a training fill; an infinite one has none (it would score 0, 1 or NaN).
            inf = np.isinf(values)
            if inf.any():
                raise FeatureDataError(f"cannot score: numeric feature {name!r} is infinite in {int(inf.sum())} rows:\n{_examples(df, pd.Series(inf, index=df.index), [name])}")
        numeric = np.column_stack([t.apply(raw[t.name]) for t in self.numeric]) if self.numeric else np.zeros((len(df), 0))
        copy_ids = self._ids(df["copy_id"].fillna(""), self.copies) if "copy_id" in df.columns else np.full(len(df), OOV)
        ids = np.column_stack(
            [self._ids(df["user_id"], self.users), self._ids(df["product_id"], self.catalogue), self._ids(df["category"].fillna(""), self.categories), copy_ids]
        )
        history = self._history(df["hist_products"]) if "hist_products" in df.columns else np.zeros((len(df), self.history_length), np.int64)
        return np.hstack([numeric, ids, history]).astype(np.float32)

    # ---- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "numeric": [vars(t) for t in self.numeric],
            "users": list(self.users),
            "categories": list(self.categories),
            "catalogue": list(self.catalogue),
            "trained_products": self.trained_products,
            "attributes": list(self.attributes),
            "product_attrs": self.product_attrs,
            "history_length": self.history_length,
            "copies": list(self.copies),
            "mentions": self.mentions,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureEncoder":
        ordered = lambda names: {n: FIRST_ID + i for i, n in enumerate(names)}  # noqa: E731
        return cls(
            numeric=[NumericTransform(**t) for t in data["numeric"]],
            users=ordered(data["users"]),
            categories=ordered(data["categories"]),
            catalogue=ordered(data["catalogue"]),
            trained_products=list(data["trained_products"]),
            attributes=ordered(data["attributes"]),
            product_attrs={k: list(v) for k, v in data["product_attrs"].items()},
            history_length=int(data["history_length"]),
            copies=ordered(data.get("copies", [])),
            mentions={k: list(v) for k, v in data.get("mentions", {}).items()},
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "FeatureEncoder":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass
class EncodedSplit:
    x: np.ndarray          # packed float32 [N, width]
    y: np.ndarray          # float32 labels [N]
    frame: pd.DataFrame    # the original rows (ids, segments) for evaluation


@dataclass
class PreferenceData:
    encoder: FeatureEncoder
    splits: dict[str, EncodedSplit]
    spec: dict

    @property
    def train(self) -> EncodedSplit:
        return self.splits["train"]

    @property
    def valid(self) -> EncodedSplit:
        return self.splits["valid"]

    @property
    def test(self) -> EncodedSplit:
        return self.splits["test"]

    @property
    def cold(self) -> EncodedSplit:
        return self.splits["cold"]


def holdout_users(user_ids: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """Stable pseudo-random choice of shoppers kept out of training (to measure cold start)."""
    if fraction <= 0:
        return np.zeros(len(user_ids), dtype=bool)
    digest = [hashlib.sha256(f"{seed}:{u}".encode()).digest() for u in user_ids.astype(str)]
    return np.array([int.from_bytes(d[:8], "big") / 2**64 < fraction for d in digest], dtype=bool)


def cold_rows(frame: pd.DataFrame, min_events: int) -> np.ndarray:
    """Impressions of shoppers with fewer than `min_events` earlier impressions."""
    if "u_n_impressions" in frame.columns:
        return frame["u_n_impressions"].fillna(0).to_numpy(dtype=np.float64) < min_events
    return frame["is_cold"].fillna(True).to_numpy(dtype=bool)


def encode_tables(
    tables: FeatureTables, history_length: int, cold_holdout_fraction: float = 0.0, seed: int = 0, cold_min_events: int = 5
) -> PreferenceData:
    """Fit the encoder on the train split and pack every split.

    Cold start barely occurs in a time-based holdout (most shoppers are known before the test
    days), so a stable `cold_holdout_fraction` of shoppers is kept out of training altogether;
    split "cold" holds the cold-start impressions (< cold_min_events earlier impressions) of
    those never-trained-on shoppers, plus any cold-start impressions of the test split.
    """
    samples = tables.samples.sort_values(["timestamp", "event_id"], kind="stable").reset_index(drop=True)
    label = tables.spec["label"]
    held_out = holdout_users(samples["user_id"], cold_holdout_fraction, seed)
    cold = cold_rows(samples, cold_min_events)
    selections = {
        "train": (samples["split"].to_numpy() == "train") & ~held_out,
        "valid": samples["split"].to_numpy() == "valid",
        "test": samples["split"].to_numpy() == "test",
    }
    selections["cold"] = cold & (held_out | selections["test"])
    encoder = FeatureEncoder.fit(samples[selections["train"]], tables.spec, tables.product_attributes, history_length, tables.copies)
    splits = {}
    for split, mask in selections.items():
        rows = samples[mask].reset_index(drop=True)
        splits[split] = EncodedSplit(x=encoder.transform(rows), y=rows[label].to_numpy(dtype=np.float32), frame=rows)
    return PreferenceData(encoder=encoder, splits=splits, spec=tables.spec)
