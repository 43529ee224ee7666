"""Candidate scores: the length-normalised log-likelihood of each candidate title after a prompt.

Three ways to one number, all on the same token ids:

- :func:`score_shared_prefix` (evaluation): the prompt runs once, then all candidates in one
  batch on a copy of its KV cache;
- :func:`score_naive` (the reference): every candidate with its full prompt;
- :func:`candidate_logits` + :func:`candidate_scores` (training, grad-enabled): every row's
  candidates packed after its prompt (:func:`~ollama_slim.models.lm.batching.pack`), one forward.

:func:`mean_token_logprob` is the score itself, shared with the llama.cpp backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ollama_slim.models.lm.batching import PackedBatch, Row, pack, pad_right


def mean_token_logprob(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``logits [..., L, V]`` predicting ``ids [..., L]`` -> mean log-prob over ``mask [..., L]`` (all if None): [...].

    Computed in float32 at least (float64 stays float64).
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    if mask is None:
        return logp.mean(-1)
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
    return mean_token_logprob(logits, ids, mask).cpu()


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
    return mean_token_logprob(pred, cand_ids.to(device), cand_mask.to(device)).cpu()


# --- packed candidates (training) ---------------------------------------------------------


def compute_dtype(model: Any, device: torch.device) -> torch.dtype:
    """The dtype attention runs in: autocast's if it is on, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return model.get_input_embeddings().weight.dtype


@dataclass(frozen=True)
class PackedLogits:
    """Logits at the packed positions that predict candidate tokens.

    ``logits`` [K, V] at the K distinct such positions (a prompt's last position predicts
    every candidate's first token); ``where`` [M]: the row of ``logits`` that predicts
    ``packed.tgt[m]``, a token of candidate ``packed.group[m]``. Duplicated rows are never
    materialised: their backward would sum with atomic adds, in no fixed order on the CPU.
    """

    logits: torch.Tensor
    where: torch.Tensor
    packed: PackedBatch


def candidate_logits(model: Any, rows: list[Row], *, pad_id: int = 0) -> PackedLogits:
    """Logits predicting every candidate token, all candidates packed after their prompt.

    ``rows`` holds ``(prompt_ids, [candidate_ids, ...])`` with as many candidates in every
    row. One forward per row (each candidate sees the prompt and its own earlier tokens, at
    positions continuing the prompt's); the head runs only where a candidate token is predicted.
    """
    device = model.get_input_embeddings().weight.device
    packed = pack(rows, dtype=compute_dtype(model, device), pad_id=pad_id)
    needed, where = torch.unique(packed.src, return_inverse=True)  # sorted, as a mask keeps them
    keep = torch.zeros(packed.ids.numel(), dtype=torch.bool)
    keep[needed] = True
    logits = model(input_ids=packed.ids.to(device), attention_mask=packed.bias.to(device), position_ids=packed.positions.to(device),
                   logits_to_keep=keep.view_as(packed.ids).to(device)).logits
    return PackedLogits(logits=logits, where=where.to(logits.device), packed=packed)


def picked_logprobs(logits: torch.Tensor, where: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(targets[m])`` under row ``where[m]`` of ``logits`` [K, V] (float32): [M]."""
    return torch.log_softmax(logits.float(), dim=-1)[where, targets.to(logits.device)]


def mean_by_group(values: torch.Tensor, group: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of ``values`` [M] within each of ``size`` groups (``group`` [M]); empty groups 0: [size]."""
    group = group.to(values.device)
    total = torch.zeros(size, device=values.device).index_add(0, group, values)
    count = torch.zeros(size, device=values.device).index_add(0, group, torch.ones_like(values))
    return total / count.clamp(min=1)


def candidate_scores(out: PackedLogits, *, candidates: int) -> torch.Tensor:
    """Mean log-prob of each candidate's tokens (the evaluation score): [B, candidates]."""
    logp = picked_logprobs(out.logits, out.where, out.packed.tgt)  # [M]
    return mean_by_group(logp, out.packed.group, out.packed.size * candidates).view(out.packed.size, candidates)
