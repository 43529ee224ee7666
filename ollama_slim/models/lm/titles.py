"""The next-item title loss (design §3): logits and NLL at the target-title positions only.

A batch holds ``(prompt_ids, target_ids)`` pairs; each is run teacher-forced as
``prompt + target`` and only the positions that predict a target token reach the LM head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ollama_slim.models.lm.batching import pad_right

Pair = tuple[list[int], list[int]]  # (prompt_ids, target_ids)


def title_logits(model: Any, batch: list[Pair], *, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits predicting each target-title token: ``(logits [T, V], targets [T])``.

    ``T`` = all target tokens of the batch, in order. The LM head runs at those ``T`` positions
    only (``logits_to_keep`` as a [B, L] boolean mask), not at all ``B x L``.
    """
    device = model.get_input_embeddings().weight.device
    ids, mask = pad_right([p + t for p, t in batch], pad_id)
    keep = torch.zeros_like(ids, dtype=torch.bool)
    targets: list[int] = []
    for row, (prompt, target) in enumerate(batch):
        keep[row, len(prompt) - 1 : len(prompt) + len(target) - 1] = True
        targets += target
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep.to(device)).logits
    return logits, torch.tensor(targets, device=device)


def per_title_mean(values: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Per-token ``values`` [T] of titles of ``lengths`` (summing to T) -> each title's mean [B]."""
    return torch.stack([chunk.mean() for chunk in torch.split(values, lengths)])


def nll_per_title(logits: torch.Tensor, targets: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Mean NLL of each title's tokens from ``logits`` [T, V] and ``targets`` [T] -> [B]."""
    return per_title_mean(F.cross_entropy(logits.float(), targets, reduction="none"), lengths)


def title_nll(model: Any, batch: list[Pair], *, pad_id: int = 0) -> torch.Tensor:
    """Teacher-forced NLL of each target title given its prompt (grad-enabled) -> [B].

    The mean over the target tokens only: the next-item title loss of design §3.
    """
    logits, targets = title_logits(model, batch, pad_id=pad_id)
    return nll_per_title(logits, targets, [len(t) for _, t in batch])
