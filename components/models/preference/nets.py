"""The two preference networks. Both take the packed matrix (see data.py) and return a logit.

- `LogisticRegressionNet`: the seed's baseline — a linear model over the normalized engineered
  features plus one weight per category.
- `DeepCTRNet`: embeddings for shoppers, products and attribute values; DIN-style attention of
  the candidate product over the shopper's recent products; a DCN-V2 cross network (explicit
  feature crosses) in parallel with an MLP.

Each net splits its work into `parts(x)` (lookups: numeric block + embeddings) and
`head(*parts)` (everything differentiable after the lookups), so integrated gradients can
attribute a prediction to features and embedding groups without touching integer inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from components.models.preference.data import OOV, PAD


@dataclass
class NetSpec:
    """Everything needed to rebuild a net (stored with checkpoints and in model_dir)."""

    kind: str
    n_numeric: int
    history_length: int
    n_users: int
    n_product_ids: int
    n_categories: int
    n_attributes: int
    n_catalogue: int
    max_attrs: int
    n_keys: int = 0
    n_copies: int = 2
    max_mentions: int = 16
    embedding_dim: int = 16
    cross_layers: int = 2
    hidden: list[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.1
    id_dropout: float = 0.05   # share of training rows whose ids are replaced by OOV

    def to_dict(self) -> dict:
        return asdict(self)


N_IDS = 4  # user, product, category, copy


def _unpack(x: torch.Tensor, n_numeric: int) -> tuple[torch.Tensor, ...]:
    """packed x -> numeric, user, product, category, copy, history."""
    numeric = x[:, :n_numeric]
    ids = x[:, n_numeric : n_numeric + N_IDS].round().long()
    history = x[:, n_numeric + N_IDS :].round().long()
    return numeric, ids[:, 0], ids[:, 1], ids[:, 2], ids[:, 3], history


class LogisticRegressionNet(nn.Module):
    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec
        self.linear = nn.Linear(spec.n_numeric, 1)
        self.category_weight = nn.Embedding(spec.n_categories, 1)
        nn.init.zeros_(self.category_weight.weight)

    def parts(self, x: torch.Tensor, mentions: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        numeric, _, _, category, _, _ = _unpack(x, self.spec.n_numeric)
        return numeric, self.category_weight(category)

    def head(self, numeric: torch.Tensor, category_term: torch.Tensor) -> torch.Tensor:
        return (self.linear(numeric) + category_term).squeeze(-1)

    def forward(self, x: torch.Tensor, mentions: torch.Tensor | None = None) -> torch.Tensor:
        """`mentions` is ignored: the baseline sees the copy only through its numeric features."""
        return self.head(*self.parts(x))

    def output_bias(self) -> nn.Parameter:
        return self.linear.bias


class DINAttention(nn.Module):
    """Deep Interest Network attention: weight each past product by its relevance to the candidate."""

    def __init__(self, dim: int, hidden: int = 32):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(4 * dim, hidden), nn.PReLU(), nn.Linear(hidden, 1))

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = query.unsqueeze(1).expand_as(keys)
        logits = self.score(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)
        logits = logits.masked_fill(~mask, -1e4)
        # Softmax over the real history entries; an empty history gives a zero interest vector.
        weights = torch.softmax(logits, dim=-1) * mask.to(keys.dtype)
        return (weights.unsqueeze(-1) * keys).sum(dim=1)


class CrossNetV2(nn.Module):
    """DCN-V2 cross layers: x_{l+1} = x0 * (W x_l + b) + x_l."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class AttributeInterest(nn.Module):
    """How much the shopper's recent products favour given attribute values. No parameters.

    Every attribute value is counted over the recent (clicked) products; a value's count divided
    by the largest count among values of its key estimates its weight relative to the shopper's
    favourite of that key (1 = the favourite; 0 when the history says nothing about the key).
    Summaries for the candidate product's values (mean, max, min, share of its keys the history
    covers) and for the values the shown copy mentions (how many, how many look preferred —
    relative weight >= 0.5 —, summed relative weight), plus how full the history is.
    """

    names = (
        "hist_attr_relative_mean", "hist_attr_relative_max", "hist_attr_relative_min", "hist_attr_key_coverage",
        "copy_n_mentions", "copy_mentions_preferred", "copy_mentions_relative_sum", "hist_fullness",
    )
    n_outputs = len(names)

    def __init__(self, n_attributes: int, n_keys: int):
        super().__init__()
        self.n_attributes = n_attributes
        self.n_keys = n_keys

    def _relative(self, attrs, counts, key_max, attribute_key):
        valid = (attrs != PAD).to(counts.dtype)
        t_max = key_max.gather(1, attribute_key[attrs])
        covered = (t_max > 0).to(counts.dtype) * valid
        return counts.gather(1, attrs) / t_max.clamp(min=1.0) * valid, valid, covered

    def forward(self, target_attrs, mention_attrs, history_attrs, history_mask, attribute_key) -> torch.Tensor:
        n = target_attrs.shape[0]
        flat = history_attrs.reshape(n, -1)
        counts = torch.zeros(n, self.n_attributes, dtype=history_mask.dtype, device=flat.device)
        counts = counts.scatter_add(1, flat, (flat != PAD).to(counts.dtype))
        # Largest count per key (counts are >= 0, so a zero start is neutral); exports to ONNX
        # ScatterElements(reduction="max").
        key_max = torch.zeros(n, self.n_keys + 1, dtype=counts.dtype, device=counts.device).scatter_reduce(
            1, attribute_key.unsqueeze(0).expand(n, -1), counts, reduce="amax", include_self=True
        )
        relative, valid, covered = self._relative(target_attrs, counts, key_max, attribute_key)
        n_valid = valid.sum(dim=1).clamp(min=1.0)
        any_covered = (covered.sum(dim=1) > 0).to(counts.dtype)
        mean = relative.sum(dim=1) / n_valid
        high = relative.amax(dim=1)
        low = (relative + (1.0 - covered)).amin(dim=1) * any_covered
        coverage = covered.sum(dim=1) / n_valid
        m_relative, m_valid, _ = self._relative(mention_attrs, counts, key_max, attribute_key)
        n_mentions = m_valid.sum(dim=1)
        preferred = ((m_relative >= 0.5).to(counts.dtype) * m_valid).sum(dim=1)
        fullness = history_mask.sum(dim=1) / history_mask.shape[1]
        return torch.stack([mean, high, low, coverage, n_mentions, preferred, m_relative.sum(dim=1), fullness], dim=-1)


class DeepCTRNet(nn.Module):
    """x0 = [numeric | attribute interest | user | product (id | attributes) | category |
    copy mentions | DIN interest | DIN interest * product | FM terms user.attributes,
    user.mentions]; DCN-V2 cross layers and an MLP on x0, side by side, then a linear output."""

    def __init__(self, spec: NetSpec, tables: dict[str, np.ndarray] | None = None):
        super().__init__()
        self.spec = spec
        d = spec.embedding_dim
        self.user_embedding = nn.Embedding(spec.n_users, d, padding_idx=PAD)
        self.product_embedding = nn.Embedding(spec.n_product_ids, d, padding_idx=PAD)
        self.attribute_embedding = nn.Embedding(spec.n_attributes, d, padding_idx=PAD)
        self.category_embedding = nn.Embedding(spec.n_categories, d, padding_idx=PAD)
        for emb in (self.user_embedding, self.product_embedding, self.attribute_embedding, self.category_embedding):
            nn.init.normal_(emb.weight, std=0.05)
            with torch.no_grad():
                emb.weight[PAD].zero_()
        # Catalogue lookups are constants of the trained model (they travel into ONNX as initializers).
        tables = tables or {}
        shapes = {
            "product_id_row": (spec.n_catalogue,),
            "product_attrs": (spec.n_catalogue, spec.max_attrs),
            "attribute_key": (spec.n_attributes,),
            "copy_mentions": (spec.n_copies, spec.max_mentions),
        }
        for name, shape in shapes.items():
            value = tables.get(name)
            self.register_buffer(name, torch.as_tensor(value if value is not None else np.zeros(shape), dtype=torch.long))
        item_dim = 2 * d
        self.attention = DINAttention(item_dim)
        self.attribute_interest = AttributeInterest(spec.n_attributes, spec.n_keys)
        x0_dim = spec.n_numeric + AttributeInterest.n_outputs + d + item_dim + d + d + item_dim + item_dim + 2
        self.cross = CrossNetV2(x0_dim, spec.cross_layers)
        mlp: list[nn.Module] = []
        width = x0_dim
        for size in spec.hidden:
            mlp += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = size
        self.mlp = nn.Sequential(*mlp)
        self.output = nn.Linear(x0_dim + width, 1)

    def _attribute_mean(self, attrs: torch.Tensor) -> torch.Tensor:
        mask = (attrs != PAD).to(self.attribute_embedding.weight.dtype).unsqueeze(-1)
        return (self.attribute_embedding(attrs) * mask).sum(dim=-2) / mask.sum(dim=-2).clamp(min=1.0)

    def item_embedding(self, catalogue_idx: torch.Tensor, drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[..] catalogue indices -> [.., 2d]: id embedding | mean of attribute-value embeddings."""
        id_row = self.product_id_row[catalogue_idx]
        if drop_ids is not None:
            id_row = torch.where(drop_ids & (id_row != PAD), torch.full_like(id_row, OOV), id_row)
        return torch.cat([self.product_embedding(id_row), self._attribute_mean(self.product_attrs[catalogue_idx])], dim=-1)

    def parts(self, x: torch.Tensor, mentions: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """`mentions` [N, max_mentions] (attribute codes, 0-padded): the values each row's copy
        mentions, for a copy the training copies table does not hold (a freshly generated one);
        by default the table's row of the packed copy id."""
        numeric, user, product, category, copy, history = _unpack(x, self.spec.n_numeric)
        drop_product = None
        if self.training and self.spec.id_dropout > 0:
            # Teach the OOV rows something useful: ids unseen in training map there at serving.
            drop_user = torch.rand(user.shape, device=user.device) < self.spec.id_dropout
            user = torch.where(drop_user, torch.full_like(user, OOV), user)
            drop_product = torch.rand(product.shape, device=product.device) < self.spec.id_dropout
        history_mask = (history != PAD).to(x.dtype)
        mentions = self.copy_mentions[copy] if mentions is None else mentions
        interest = self.attribute_interest(
            self.product_attrs[product], mentions, self.product_attrs[history], history_mask, self.attribute_key
        )
        return (
            torch.cat([numeric, interest], dim=-1),
            self.user_embedding(user),
            self.item_embedding(product, drop_product),
            self.category_embedding(category),
            self._attribute_mean(mentions),
            self.item_embedding(history),
            history_mask,
        )

    def head(
        self,
        dense: torch.Tensor,
        user: torch.Tensor,
        item: torch.Tensor,
        category: torch.Tensor,
        mentions: torch.Tensor,
        history: torch.Tensor,
        history_mask: torch.Tensor,
    ) -> torch.Tensor:
        """dense = normalized numeric features | attribute-interest summaries."""
        d = self.spec.embedding_dim
        interest = self.attention(item, history, history_mask > 0.5)
        # Factorization-machine terms: the shopper's learned taste for the product's attribute
        # values and for the values the copy mentions (the simulator's two preference effects).
        fm = torch.stack([(user * item[:, d:]).sum(-1), (user * mentions).sum(-1)], dim=-1)
        x0 = torch.cat([dense, user, item, category, mentions, interest, interest * item, fm], dim=-1)
        return self.output(torch.cat([self.cross(x0), self.mlp(x0)], dim=-1)).squeeze(-1)

    def forward(self, x: torch.Tensor, mentions: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(*self.parts(x, mentions))

    def output_bias(self) -> nn.Parameter:
        return self.output.bias


class ProbabilityModel(nn.Module):
    """What is served and exported: packed features -> P(click), shape [N, 1]."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x)).unsqueeze(-1)


def fill_unseen_category(net: nn.Module, train_x: np.ndarray) -> None:
    """Give the out-of-vocabulary category (a category no training row had) the training rows'
    average category weight (logreg) or embedding (deep), unless training rows trained it
    (rows without a category). Left as initialized, it is no neutral value: the logreg's
    category weights all fell below its 0 (quick profile), so an unseen category scored 29%
    above the average one."""
    table = net.category_weight if isinstance(net, LogisticRegressionNet) else net.category_embedding
    category = np.rint(train_x[:, net.spec.n_numeric + 2]).astype(np.int64)
    if (category == OOV).any() or not len(category):
        return
    share = np.bincount(category, minlength=table.num_embeddings) / len(category)
    with torch.no_grad():
        table.weight[OOV] = torch.from_numpy(share).to(table.weight.dtype) @ table.weight


def build_net(spec: NetSpec, tables: dict[str, np.ndarray] | None = None) -> nn.Module:
    if spec.kind == "logreg":
        return LogisticRegressionNet(spec)
    if spec.kind == "deep":
        return DeepCTRNet(spec, tables)
    raise ValueError(f"unknown preference model kind {spec.kind!r} (expected 'logreg' or 'deep')")
