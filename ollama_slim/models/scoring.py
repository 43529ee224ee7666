"""Log-likelihood scoring of candidate titles with a transformers model.

The shared-prefix path runs a user's prompt once, then all candidates in one batch
on a copy of its KV cache; the naive path runs every candidate with its full prompt.
Both return the length-normalised log-likelihood of each candidate: shape [C].
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def pad_right(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``seqs`` -> ``(ids [B, L], mask [B, L])``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def _mean_logprob(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logits [B, L, V]`` predicting ``ids [B, L]`` -> mean log-prob over ``mask`` [B]."""
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)


@torch.no_grad()
def score_shared_prefix(model: Any, prompt: list[int], candidates: list[list[int]], *, pad_id: int = 0) -> torch.Tensor:
    """Prompt once, candidates batched on its cache -> mean log-prob per candidate [C]."""
    device = model.get_input_embeddings().weight.device
    out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1:, :]  # [1, 1, V] predicts each candidate's first token
    cache = out.cache
    n, p = len(candidates), len(prompt)
    cache.batch_repeat_interleave(n)
    ids, mask = pad_right(candidates, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    attention = torch.cat([torch.ones((n, p), dtype=torch.long, device=device), mask], dim=1)
    positions = torch.arange(p, p + ids.shape[1], device=device).unsqueeze(0).expand(n, -1)
    rest = model(input_ids=ids, attention_mask=attention, position_ids=positions, cache=cache, use_cache=True).logits
    logits = torch.cat([first.expand(n, -1, -1), rest[:, :-1, :]], dim=1)  # [C, L, V]
    return _mean_logprob(logits, ids, mask).cpu()


@torch.no_grad()
def score_naive(model: Any, prompt: list[int], candidates: list[list[int]], *, pad_id: int = 0) -> torch.Tensor:
    """Every candidate with its full prompt (the reference path) -> [C]."""
    device = model.get_input_embeddings().weight.device
    ids, mask = pad_right([prompt + c for c in candidates], pad_id)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    p = len(prompt)
    cand_ids, cand_mask = pad_right(candidates, pad_id)
    width = cand_ids.shape[1]
    pred = logits[:, p - 1 : p - 1 + width, :]
    if pred.shape[1] < width:  # the longest candidate defines the padded width
        pred = F.pad(pred, (0, 0, 0, width - pred.shape[1]))
    return _mean_logprob(pred, cand_ids.to(device), cand_mask.to(device)).cpu()


def title_logits(model: Any, batch: list[tuple[list[int], list[int]]], *, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
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


def title_nll(model: Any, batch: list[tuple[list[int], list[int]]], *, pad_id: int = 0) -> torch.Tensor:
    """Teacher-forced NLL of each target title given its prompt (grad-enabled) -> [B].

    ``batch`` holds ``(prompt_ids, target_ids)`` pairs; the loss is the mean over the
    target tokens only: the next-item title loss of design §3.
    """
    logits, targets = title_logits(model, batch, pad_id=pad_id)
    nll = F.cross_entropy(logits.float(), targets, reduction="none")
    return torch.stack([chunk.mean() for chunk in torch.split(nll, [len(t) for _, t in batch])])
