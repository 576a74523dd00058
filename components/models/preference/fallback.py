"""Cold-start fallback: a popularity-and-segment model for shoppers with too little history.

It scores with what is known about the product and the slot, never about the shopper: the
product's point-in-time popularity features (`p_*`), the position, and the category segment
(one weight per category). A logistic regression (scikit-learn) fit on the train split; its
coefficients are stored as JSON, so scoring needs no pickle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from components.models.preference.data import FeatureEncoder, cold_rows


def popularity_columns(encoder: FeatureEncoder) -> list[str]:
    return [n for n in encoder.numeric_names if n.startswith("p_") or n == "position"]


def is_cold(frame: pd.DataFrame, min_events: int) -> np.ndarray:
    """Shoppers with fewer than `min_events` earlier impressions (the features' own flag otherwise)."""
    if "u_n_impressions" not in frame.columns and "is_cold" not in frame.columns:
        raise ValueError("cannot tell cold-start shoppers: the frame has neither 'u_n_impressions' nor 'is_cold'")
    return cold_rows(frame, min_events)


@dataclass
class PopularityFallback:
    columns: list[str]           # numeric features used (normalized by the encoder)
    coef: list[float]
    category_coef: dict[str, float]  # category index (as str) -> weight
    intercept: float
    # A category without a training row (unseen, or out of vocabulary): the training rows' average
    # category weight. 0 is not neutral: every fitted weight may sit below it.
    unseen_category_coef: float = 0.0

    def _design(self, x: np.ndarray, encoder: FeatureEncoder) -> tuple[np.ndarray, np.ndarray]:
        names = encoder.numeric_names
        numeric = x[:, [names.index(c) for c in self.columns]] if self.columns else np.zeros((len(x), 0))
        category = x[:, encoder.n_numeric + 2].round().astype(np.int64)
        return numeric, category

    def predict(self, x: np.ndarray, encoder: FeatureEncoder) -> np.ndarray:
        numeric, category = self._design(x, encoder)
        logit = numeric @ np.asarray(self.coef, dtype=np.float64) + self.intercept
        logit = logit + np.array([self.category_coef.get(str(c), self.unseen_category_coef) for c in category])
        return 1.0 / (1.0 + np.exp(-logit))

    def contributions(self, x_row: np.ndarray, encoder: FeatureEncoder) -> list[tuple[str, float]]:
        numeric, category = self._design(x_row[None, :], encoder)
        out = [(name, float(v * w)) for name, v, w in zip(self.columns, numeric[0], self.coef)]
        out.append(("category", self.category_coef.get(str(int(category[0])), self.unseen_category_coef)))
        return out

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "PopularityFallback":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def fit_fallback(x_train: np.ndarray, y_train: np.ndarray, encoder: FeatureEncoder, seed: int) -> PopularityFallback:
    columns = popularity_columns(encoder)
    names = encoder.numeric_names
    numeric = x_train[:, [names.index(c) for c in columns]] if columns else np.zeros((len(x_train), 0))
    category = x_train[:, encoder.n_numeric + 2].round().astype(np.int64)
    categories = np.unique(category)
    one_hot = (category[:, None] == categories[None, :]).astype(np.float64)
    model = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(np.hstack([numeric, one_hot]), y_train)
    weights = model.coef_[0]
    category_weights = weights[len(columns) :]
    return PopularityFallback(
        columns=columns,
        coef=[float(w) for w in weights[: len(columns)]],
        category_coef={str(int(c)): float(w) for c, w in zip(categories, category_weights)},
        intercept=float(model.intercept_[0]),
        unseen_category_coef=float(one_hot.mean(axis=0) @ category_weights),
    )
