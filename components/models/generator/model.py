"""Transformer encoder-decoder for copy, and its LightningModule.

Written out (rather than nn.Transformer) so the decoder has an explicit key/value cache: the
same `decoder_step` serves torch generation and the ONNX export, which is what makes greedy
outputs of the two identical. Pre-LayerNorm blocks, learned positions, one embedding matrix
shared by source, target and the output layer (the source and target share one vocabulary, and
tying is what lets a small model learn to copy value tokens from the input into the copy).

Copy attention (pointer-generator): the output distribution mixes the vocabulary softmax with an
attention over the source tokens (attribute values and the retrieved exemplar copy), gated per
step. Copying a value or a phrase from the input is then one attention away instead of something
the output layer has to learn, which is what a small model trained for minutes needs.

Cache layout: past_k / past_v are [layers, batch, heads, time, head_dim]. Slot 0 of the time
axis is a dummy entry that attention always masks out: the cache is never empty, so the exported
step has one static rank and a time axis of length >= 1 instead of a special first step.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.models.generator.tokenizer import PAD


class BrokenModel(RuntimeError):
    """A model file exists but cannot be read (truncated, corrupt, from another model)."""


@dataclass(frozen=True)
class ModelSpec:
    vocab_size: int
    d_model: int
    nhead: int
    encoder_layers: int
    decoder_layers: int
    dim_feedforward: int
    dropout: float
    max_source_len: int
    max_target_len: int
    embed_dim: int = 0  # factorized embeddings: 0 = d_model

    def to_dict(self) -> dict:
        return asdict(self)


def uniform_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout. On CPU the mask comes from uniform draws: torch's own dropout samples it
    with bernoulli_, which took a quarter of a `full` training step on two cores; thresholding
    torch.rand gives the same law at half the cost. Elsewhere (CUDA) torch's fused kernel is used."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    return x * torch.rand_like(x).ge_(p).div_(1 - p)


class Dropout(nn.Module):
    """nn.Dropout with the CPU mask of `uniform_dropout`; no parameters, so checkpoints are unchanged."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return uniform_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, p: float) -> Tensor:
    """Training-time attention on CPU: the same arithmetic as scaled_dot_product_attention's math
    path (which it falls back to whenever dropout is on), with `uniform_dropout`'s cheaper mask.
    mask: bool (True where attention may look) or additive float, broadcast to [B, H, T, S]."""
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    if causal:
        t, s = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(t, s, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return uniform_dropout(scores.softmax(-1), p, True) @ v


class Attention(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float):
        super().__init__()
        self.nhead, self.head_dim, self.dropout = nhead, d_model // nhead, dropout
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def heads(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, H, T, Dh]
        return x.view(x.shape[0], x.shape[1], self.nhead, self.head_dim).transpose(1, 2)

    def merge(self, x: Tensor) -> Tensor:  # [B, H, T, Dh] -> [B, T, D]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.nhead * self.head_dim)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        p = self.dropout if self.training else 0.0
        if p > 0.0 and q.device.type == "cpu":
            return self.out(self.merge(attention_with_dropout(q, k, v, mask, causal, p)))
        return self.out(self.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, h: int, ff: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, h, dropout)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), Dropout(dropout), nn.Linear(ff, d))
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.drop(self.attn.attend(self.attn.heads(self.attn.q(y)), self.attn.heads(self.attn.k(y)), self.attn.heads(self.attn.v(y)), key_mask))
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, d: int, h: int, ff: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = Attention(d, h, dropout)
        self.cross_attn = Attention(d, h, dropout)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), Dropout(dropout), nn.Linear(ff, d))
        self.drop = Dropout(dropout)

    def cross_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        return self.cross_attn.heads(self.cross_attn.k(memory)), self.cross_attn.heads(self.cross_attn.v(memory))

    def forward(
        self,
        x: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        src_mask: Tensor,
        past: tuple[Tensor, Tensor] | None = None,
        self_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher forcing when past is None (causal); one cached step otherwise."""
        sa = self.self_attn
        y = self.norm1(x)
        k, v = sa.heads(sa.k(y)), sa.heads(sa.v(y))
        if past is None:
            attended = sa.attend(sa.heads(sa.q(y)), k, v, causal=True)
        else:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            attended = sa.attend(sa.heads(sa.q(y)), k, v, self_mask)
        x = x + self.drop(attended)
        ca = self.cross_attn
        x = x + self.drop(ca.attend(ca.heads(ca.q(self.norm2(x))), cross_k, cross_v, src_mask))
        return x + self.drop(self.ff(self.norm3(x))), k, v


class CopyTransformer(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        d = spec.d_model
        e = spec.embed_dim or d
        # Factorized, tied embeddings (vocab x e, then e <-> d): the output layer over ~6k tokens
        # is most of a small model's compute; computing it at e < d makes each step much cheaper.
        self.embed = nn.Embedding(spec.vocab_size, e, padding_idx=PAD)
        self.embed_in = nn.Linear(e, d, bias=False) if e != d else nn.Identity()
        self.embed_out = nn.Linear(d, e, bias=False) if e != d else nn.Identity()
        self.src_pos = nn.Embedding(spec.max_source_len, d)
        self.tgt_pos = nn.Embedding(spec.max_target_len, d)
        self.encoder = nn.ModuleList(EncoderLayer(d, spec.nhead, spec.dim_feedforward, spec.dropout) for _ in range(spec.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d, spec.nhead, spec.dim_feedforward, spec.dropout) for _ in range(spec.decoder_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.copy_query, self.copy_key = nn.Linear(d, d), nn.Linear(d, d)
        self.copy_gate = nn.Linear(d, 1)
        self.drop = Dropout(spec.dropout)
        self.scale = math.sqrt(d)
        nn.init.normal_(self.embed.weight, std=d**-0.5)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        return self.embed_in(self.embed(tokens)) * self.scale

    @staticmethod
    def key_mask(src: Tensor) -> Tensor:
        """[B, S] ids -> [B, 1, 1, S] bool, True where attention may look."""
        return (src != PAD)[:, None, None, :]

    def encode(self, src: Tensor) -> Tensor:
        positions = torch.arange(src.shape[1], device=src.device)
        x = self.drop(self.embed_tokens(src) + self.src_pos(positions))
        mask = self.key_mask(src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x)

    def cross_cache(self, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encoder output projected to every decoder layer's cross-attention K/V (stacked) and
        to the copy-attention keys [B, S, d]."""
        memory = self.encode(src)
        pairs = [layer.cross_kv(memory) for layer in self.decoder]
        return torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs]), self.copy_key(memory)

    def _heads(self, x: Tensor, copy_keys: Tensor, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Vocabulary log-softmax [B, T, V], copy attention [B, T, S], gate [B, T, 1]."""
        h = self.dec_norm(x)
        vocab_logp = torch.log_softmax(F.linear(self.embed_out(h), self.embed.weight), dim=-1)
        scores = torch.matmul(self.copy_query(h), copy_keys.transpose(1, 2)) / self.scale
        attention = torch.softmax(scores.masked_fill((src == PAD)[:, None, :], float("-inf")), dim=-1)
        return vocab_logp, attention, torch.sigmoid(self.copy_gate(h))

    def output_logprobs(self, x: Tensor, copy_keys: Tensor, src: Tensor) -> Tensor:
        """x [B, T, d] decoder states -> log P of the copy/vocabulary mixture [B, T, V]."""
        vocab_logp, attention, gate = self._heads(x, copy_keys, src)
        index = src[:, None, :].expand(-1, x.shape[1], -1)
        copy_probs = torch.zeros_like(vocab_logp).scatter_add(2, index, attention)
        return torch.log((gate * vocab_logp.exp() + (1 - gate) * copy_probs).clamp_min(1e-12))

    def target_logprobs(self, x: Tensor, copy_keys: Tensor, src: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Training: log P(target) [B, T] of the mixture without building it over the whole
        vocabulary (the copy part only needs the source positions holding the target token),
        and the vocabulary log-softmax for label smoothing."""
        vocab_logp, attention, gate = self._heads(x, copy_keys, src)
        copy_p = (attention * (src[:, None, :] == target[:, :, None])).sum(-1)
        vocab_p = vocab_logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).exp()
        gate = gate.squeeze(-1)
        return torch.log((gate * vocab_p + (1 - gate) * copy_p).clamp_min(1e-12)), vocab_logp

    def forward(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: (log P of each next token [B, T], vocabulary log-softmax [B, T, V])."""
        memory = self.encode(src)
        src_mask = self.key_mask(src)
        positions = torch.arange(tgt_in.shape[1], device=tgt_in.device)
        x = self.drop(self.embed_tokens(tgt_in) + self.tgt_pos(positions))
        for layer in self.decoder:
            k, v = layer.cross_kv(memory)
            x, _, _ = layer(x, k, v, src_mask)
        return self.target_logprobs(x, self.copy_key(memory), src, tgt_out)

    def empty_cache(self, batch: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        spec = self.spec
        shape = (spec.decoder_layers, batch, spec.nhead, 1, spec.d_model // spec.nhead)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def decoder_step(
        self, tokens: Tensor, past_k: Tensor, past_v: Tensor, cross_k: Tensor, cross_v: Tensor, copy_keys: Tensor, src: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One token per row: tokens [B], caches as in the module doc, src ids [B, S].
        Returns log-probabilities [B, V] and the caches grown by one step."""
        src_mask = src != PAD
        steps = past_k.shape[3]  # dummy slot + tokens so far; this token's position = steps - 1
        position = torch.full_like(tokens, steps - 1)
        x = self.embed_tokens(tokens)[:, None, :] + self.tgt_pos(position)[:, None, :]
        self_mask = (torch.arange(steps + 1, device=tokens.device) > 0)[None, None, None, :]
        cross_mask = src_mask[:, None, None, :]
        new_k, new_v = [], []
        for i, layer in enumerate(self.decoder):
            x, k, v = layer(x, cross_k[i], cross_v[i], cross_mask, (past_k[i], past_v[i]), self_mask)
            new_k.append(k)
            new_v.append(v)
        logprobs = self.output_logprobs(x, copy_keys, src)
        return logprobs[:, 0, :], torch.stack(new_k), torch.stack(new_v)


class GeneratorModule(pl.LightningModule):
    """Label-smoothed cross-entropy; AdamW with warmup and a cosine decay that follows whichever
    runs out first, the step budget or the wall-clock budget (max_minutes), so a time-capped run
    still ends on a low learning rate instead of being cut mid-schedule."""

    def __init__(self, spec: dict, lr: float, warmup_steps: int, total_steps: int, max_seconds: float, label_smoothing: float = 0.1, weight_decay: float = 0.01, max_cpu_seconds: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.net = CopyTransformer(ModelSpec(**spec))
        self._started: float | None = None
        self._cpu_started: float | None = None
        self._shared_used = 0.0  # budget_used() as rank 0 saw it at the last scheduler step
        self._used_before = 0.0  # the budget a resumed run had spent before its checkpoint

    def budget_used(self) -> float:
        """Share of the time budget spent: wall clock, or this process' CPU time when a CPU
        budget is set (on a shared machine CPU time is the compute the model actually got).
        A run resumed from a checkpoint goes on from the share spent when it was saved."""
        if self._started is None:
            self._started, self._cpu_started = time.monotonic(), time.process_time()
        used = (time.monotonic() - self._started) / self.hparams.max_seconds
        if self.hparams.max_cpu_seconds:
            used = max(used, (time.process_time() - self._cpu_started) / self.hparams.max_cpu_seconds)
        return self._used_before + used

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["budget_used"] = self.budget_used()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._used_before = float(checkpoint.get("budget_used", 0.0))
        self._started = None  # this process' clocks start now

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """NLL of the copy/vocabulary mixture, plus label smoothing on the vocabulary part."""
        target = batch["tgt"][:, 1:]
        logp, vocab_logp = self.net(batch["src"], batch["tgt"][:, :-1], target)
        keep = target != PAD
        nll = -logp
        smooth = -vocab_logp.mean(-1)
        eps = self.hparams.label_smoothing
        return ((1 - eps) * nll + eps * smooth)[keep].mean()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if not self.hparams.max_cpu_seconds:
            return
        # The CPU budget (Lightning's max_time is wall clock). Under DDP the ranks' CPU clocks
        # drift apart (rank 0 also logs), and Lightning does not reduce should_stop: a rank that
        # stopped alone would wait in validation while the others wait in the gradient
        # all-reduce. So every rank uses the value `schedule` broadcast from rank 0 (a step old).
        used = self._shared_used if self.trainer.world_size > 1 else self.budget_used()
        if used >= 1.0:
            self.trainer.should_stop = True

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["src"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch), prog_bar=True, sync_dist=True, batch_size=batch["src"].shape[0])

    def schedule(self, step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, self.hparams.warmup_steps))
        used = self.budget_used()
        if self._trainer is not None and self.trainer.world_size > 1:
            # Every rank must apply the same learning rate, so rank 0's clock decides.
            used = float(self.trainer.strategy.broadcast(used, src=0))
        self._shared_used = used
        progress = max(step / max(1, self.hparams.total_steps), used)
        return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def configure_optimizers(self):
        decay = [p for n, p in self.named_parameters() if p.dim() > 1 and "embed" not in n and "pos" not in n]
        no_decay = [p for n, p in self.named_parameters() if not (p.dim() > 1 and "embed" not in n and "pos" not in n)]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
            betas=(0.9, 0.98),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
