"""One `train(cfg, kind, data, ckpt_root)` for both preference models.

- `cfg.trainer` goes straight into `lightning.Trainer` (accelerator, devices, strategy, precision,
  num_nodes): scaling out is a params.yaml edit.
- A checkpoint is written every epoch (`last.ckpt`) plus the best one by validation loss; an
  interrupted run resumes from `last.ckpt`. Checkpoints live in a folder (under
  components.training.checkpoints' root, outside the stage's outputs) named after a
  fingerprint of everything that shapes the weights (model knobs, seed, the encoded training
  data), so a changed input never resumes from a stale checkpoint. `max_epochs` and `patience`
  are deliberately left out of it: raising them continues the same run (a run that stopped
  early is done only for the patience it stopped with); lowering `max_epochs` below the epochs
  already trained starts over.
- A run whose validation loss was never finite raises `TrainingDiverged` and is not marked done.
- Early stopping on validation loss.
- No MLflow here: the entry point logs from rank 0 only, after training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from components.config import Config
from components.models.preference.data import MAX_ATTRS_PER_PRODUCT, MAX_MENTIONS_PER_COPY, PreferenceData
from components.models.preference.modules import PreferenceModule, module_class
from components.models.preference.nets import NetSpec
from components.training.checkpoints import LAST, prune, read_done, run_dir, write_done

# Part of the checkpoint fingerprint: bump when a code change makes old checkpoints unusable.
MODEL_CODE_VERSION = 3


@dataclass
class FitResult:
    kind: str
    module: PreferenceModule | None       # best weights, eval mode (rank 0; None elsewhere)
    checkpoint_dir: Path
    best_checkpoint: str | None
    history: list[dict] = field(default_factory=list)
    epochs_completed: int = 0
    stopped_early: bool = False
    resumed_from: str | None = None
    first_epoch: int = 0
    is_global_zero: bool = True
    global_step: int = 0


class EpochHistory(Callback):
    """Per-epoch metrics, kept inside the checkpoints so a resumed run still has its full curve."""

    def __init__(self):
        self.rows: list[dict] = []
        self.first_epoch: int | None = None

    def on_train_epoch_start(self, trainer, pl_module):
        if self.first_epoch is None:
            self.first_epoch = trainer.current_epoch

    def _record(self, trainer, prefix: str) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
        row = next((r for r in self.rows if r["epoch"] == trainer.current_epoch), None)
        if row is None:
            self.rows.append(row := {"epoch": trainer.current_epoch})
        row.update(metrics)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._record(trainer, "val_")

    def on_train_epoch_end(self, trainer, pl_module):
        # Validation ends before the epoch's train_* means are aggregated: recorded here, or
        # each row would carry the previous epoch's training loss.
        self._record(trainer, "train_")

    def state_dict(self):
        return {"rows": self.rows}

    def load_state_dict(self, state_dict):
        self.rows = list(state_dict.get("rows", []))


def net_spec(cfg: Config, kind: str, data: PreferenceData) -> NetSpec:
    enc, p = data.encoder, cfg.preference
    return NetSpec(
        kind=kind,
        n_numeric=enc.n_numeric,
        history_length=enc.history_length,
        n_users=2 + len(enc.users),
        n_product_ids=enc.n_product_ids,
        n_categories=2 + len(enc.categories),
        n_attributes=2 + len(enc.attributes),
        n_catalogue=2 + len(enc.catalogue),
        max_attrs=MAX_ATTRS_PER_PRODUCT,
        n_keys=len(enc.attribute_keys),
        n_copies=2 + len(enc.copies),
        max_mentions=MAX_MENTIONS_PER_COPY,
        embedding_dim=p.embedding_dim,
        cross_layers=p.cross_layers,
        hidden=list(p.hidden),
        dropout=p.dropout,
        id_dropout=p.id_dropout,
    )


def learning_rate(cfg: Config, kind: str) -> float:
    # A convex linear model tolerates (and, with few epochs, needs) a larger step to converge.
    return cfg.preference.logreg_lr if kind == "logreg" else cfg.preference.lr


def build_module(cfg: Config, kind: str, data: PreferenceData) -> PreferenceModule:
    module = module_class(kind)(
        spec=net_spec(cfg, kind, data).to_dict(),
        lr=learning_rate(cfg, kind),
        weight_decay=cfg.preference.weight_decay,
        tables=data.encoder.catalogue_tables(),
    )
    # Start at the training click rate: with rare clicks (OBD: 0.4%) and few steps, a zero bias
    # would spend the whole budget walking the intercept down and leave the model miscalibrated.
    rate = float(np.clip(data.train.y.mean(), 1e-4, 1 - 1e-4))
    module.net.output_bias().data.fill_(float(np.log(rate / (1 - rate))))
    return module


def fingerprint(cfg: Config, kind: str, data: PreferenceData) -> str:
    knobs = cfg.preference.model_dump(exclude={"max_epochs", "patience", "bootstrap", "models", "cold_start_min_events"})
    digest = hashlib.sha256()
    digest.update(json.dumps({"code": MODEL_CODE_VERSION, "kind": kind, "seed": cfg.seed, "knobs": knobs, "trainer": cfg.trainer.model_dump()}, sort_keys=True, default=str).encode())
    for split in (data.train, data.valid):
        digest.update(np.ascontiguousarray(split.x).tobytes())
        digest.update(np.ascontiguousarray(split.y).tobytes())
    return digest.hexdigest()[:16]


def trainer_kwargs(cfg: Config) -> dict:
    t = cfg.trainer
    return {"accelerator": t.accelerator, "devices": t.devices, "strategy": t.strategy, "precision": t.precision, "num_nodes": t.num_nodes}


def _loader(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, num_workers: int) -> DataLoader:
    dataset = TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, persistent_workers=num_workers > 0)


class TrainingDiverged(RuntimeError):
    """Validation loss was never finite: no weights worth keeping (nothing is marked done)."""


class ConfiguredEarlyStopping(EarlyStopping):
    """Lightning restores `patience` with a checkpoint; a resumed run keeps the configured one
    (raising `preference.patience` must continue the run with the new patience)."""

    def load_state_dict(self, state_dict) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience


def train(
    cfg: Config,
    kind: str,
    data: PreferenceData,
    checkpoint_root: Path,
    callbacks: list[Callback] | None = None,
) -> FitResult:
    """Train (or resume, or reuse a finished run of) one preference model. Call on every rank."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    checkpoint_dir = run_dir(checkpoint_root, kind, fingerprint(cfg, kind, data))
    p = cfg.preference

    done = read_done(checkpoint_dir)
    last = checkpoint_dir / LAST
    trained = done["epochs_completed"] if done else epochs_in_checkpoint(last) if last.exists() else 0
    if trained > p.max_epochs:
        # It trained longer than asked now (a finished run, or an interrupted one's last.ckpt):
        # neither reusable nor resumable. Start over, or the model (and what dvc.lock records for
        # it) would not match the configured max_epochs.
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        done = None
    # A run that stopped early is finished only for the patience it stopped with.
    finished = done and ((done["stopped_early"] and done.get("patience") == p.patience) or done["epochs_completed"] == p.max_epochs)
    if finished and Path(done["best_checkpoint"]).exists():
        # The same training already finished: reuse it (an unchanged DVC/Prefect re-run is free).
        rank_zero = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0
        module = _load_best(kind, done["best_checkpoint"]) if rank_zero else None
        return FitResult(kind=kind, module=module, checkpoint_dir=checkpoint_dir, best_checkpoint=done["best_checkpoint"],
                         history=done["history"], epochs_completed=done["epochs_completed"], stopped_early=done["stopped_early"],
                         resumed_from="finished", first_epoch=done["epochs_completed"], is_global_zero=rank_zero,
                         global_step=done.get("global_step", 0))

    history = EpochHistory()
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, filename="best-{epoch}", monitor="val_loss", mode="min",
                                 save_top_k=1, save_last=True, every_n_epochs=1)
    early_stopping = ConfiguredEarlyStopping(monitor="val_loss", mode="min", patience=p.patience)
    trainer = pl.Trainer(
        **trainer_kwargs(cfg),
        max_epochs=p.max_epochs,
        callbacks=[history, checkpoint, early_stopping, *(callbacks or [])],
        logger=False,
        default_root_dir=checkpoint_dir,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=False,
    )
    module = build_module(cfg, kind, data)
    resume = str(last) if last.exists() else None
    workers = cfg.trainer.num_workers
    trainer.fit(
        module,
        train_dataloaders=_loader(data.train.x, data.train.y, p.batch_size, True, workers),
        val_dataloaders=_loader(data.valid.x, data.valid.y, 4 * p.batch_size, False, workers),
        ckpt_path=resume,
    )
    if trainer.interrupted:
        raise KeyboardInterrupt(f"training of {kind} was interrupted; re-run to resume from {last}")
    score = checkpoint.best_model_score
    if score is None or not bool(torch.isfinite(score)):
        if trainer.is_global_zero:  # nothing in it is worth resuming from
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        raise TrainingDiverged(
            f"training of {kind} diverged: no epoch reached a finite validation loss; its checkpoints were removed. "
            f"Lower preference.{'logreg_lr' if kind == 'logreg' else 'lr'} or check the features for extreme values."
        )
    best = checkpoint.best_model_path or str(last)
    stopped_early = early_stopping.stopped_epoch > 0
    result = FitResult(kind=kind, module=None, checkpoint_dir=checkpoint_dir, best_checkpoint=best, history=history.rows,
                       epochs_completed=trainer.current_epoch, stopped_early=stopped_early, resumed_from=resume,
                       first_epoch=history.first_epoch or 0, is_global_zero=trainer.is_global_zero,
                       global_step=trainer.global_step)
    if trainer.is_global_zero:
        done = {"best_checkpoint": best, "epochs_completed": trainer.current_epoch, "stopped_early": stopped_early,
                "patience": p.patience, "history": history.rows, "global_step": trainer.global_step}
        write_done(checkpoint_dir, done)
        prune(checkpoint_dir)
        result.module = _load_best(kind, best)
    return result


def epochs_in_checkpoint(path: Path) -> int:
    """How many epochs a checkpoint's weights were trained for (the count `epochs_completed` records)."""
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    # Saved at the end of an epoch's validation: that epoch's batches are all processed, though
    # Lightning marks it completed only afterwards (`epoch` is still its index).
    return int(progress.get("processed", state.get("epoch", -1) + 1))


def _load_best(kind: str, path: str) -> PreferenceModule:
    module = module_class(kind).load_from_checkpoint(path, map_location="cpu")
    return module.eval()
