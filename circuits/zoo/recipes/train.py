"""A small deterministic training loop for causal LMs with loss masks.

transformer-lens's ``tools/training.py`` trains on full-sequence LM loss only;
the zoo needs per-position loss masks (answer-only loss), length-bucketed
batches and checkpoints at chosen steps, so this loop is our own (~60 lines).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass
class TrainSettings:
    """Settings of :func:`train`: number of steps, peak lr, warm-up steps, the final lr as a fraction
    of the peak (cosine decay), AdamW weight decay and betas, the gradient-norm clip and the
    steps after which ``on_checkpoint`` is called.
    """

    steps: int
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    checkpoint_steps: list[int] = field(default_factory=list)


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    frac = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def masked_lm_loss(model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of next-token predictions at the masked positions.

    Only the hidden states at masked positions are unembedded.
    """
    hidden = model.base_model(tokens).last_hidden_state  # [b, L, d]
    rows, cols = mask[:, :-1].nonzero(as_tuple=True)
    logits = model.get_output_embeddings()(hidden[rows, cols])  # [m, vocab]
    return F.cross_entropy(logits.float(), tokens[rows, cols + 1])


def train(model: torch.nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], s: TrainSettings,
          on_checkpoint: Callable[[int, torch.nn.Module], None] | None = None, desc: str = "train",
          device: str = "cpu") -> list[float]:
    """Train ``model`` for ``s.steps`` batches; returns the loss curve (one value per step)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=s.lr, betas=s.betas)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(s.steps), desc=desc, mininterval=2.0)
    t0 = time.time()
    for step in bar:
        tokens, mask = next(batches)
        tokens, mask = tokens.to(device), mask.to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, s)
        loss = masked_lm_loss(model, tokens, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
        opt.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if on_checkpoint is not None and (step + 1) in s.checkpoint_steps:
            model.eval()
            on_checkpoint(step + 1, model)
            model.train()
    model.eval()
    model.train_seconds = time.time() - t0  # type: ignore[attr-defined]
    return losses
