"""LightningModules of the two preference models: same loss, same metrics, different nets."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.nn import functional as F
from torchmetrics.classification import BinaryAUROC

from components.models.preference.nets import NetSpec, ProbabilityModel, build_net


class PreferenceModule(pl.LightningModule):
    """Binary click model: BCE on logits, Adam; logs train/val loss and val AUC (DDP-synced)."""

    def __init__(
        self,
        spec: dict,
        lr: float,
        weight_decay: float,
        tables: dict[str, np.ndarray] | None = None,
    ):
        super().__init__()
        # Catalogue tables are buffers restored from the state dict, not hyperparameters.
        self.save_hyperparameters(ignore=["tables"])
        self.spec = NetSpec(**spec)
        self.net = build_net(self.spec, tables)
        self.val_auc = BinaryAUROC()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self.net(x)
        return F.binary_cross_entropy_with_logits(logits, y), logits, y

    def training_step(self, batch, batch_idx):
        loss, _, _ = self._loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(batch[1]))
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits, y = self._loss(batch)
        self.val_auc.update(torch.sigmoid(logits), y.long())
        self.log("val_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(batch[1]))
        self.log("val_auc", self.val_auc, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def probability_model(self) -> ProbabilityModel:
        """The eval-mode module that is served and exported (packed x -> P(click) [N, 1])."""
        return ProbabilityModel(self.net).eval()


class LogisticRegressionModule(PreferenceModule):
    """The seed's baseline: logistic regression over the engineered features."""


class DeepCTRModule(PreferenceModule):
    """DCN-V2 crosses + DIN attention over recent products + id/attribute embeddings."""


MODULES: dict[str, type[PreferenceModule]] = {"logreg": LogisticRegressionModule, "deep": DeepCTRModule}


def module_class(kind: str) -> type[PreferenceModule]:
    if kind not in MODULES:
        raise ValueError(f"unknown preference model kind {kind!r}; expected one of {sorted(MODULES)}")
    return MODULES[kind]
