"""The healing losses: the next-item title loss, a ranking loss over candidates, distillation.

Logits come from :mod:`ollama_slim.models.lm` (the title positions only, or every candidate
packed after its prompt); these functions turn them into scalars to minimise.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ollama_slim.models.lm import Row, candidate_logits, candidate_scores, nll_per_title, per_title_mean, title_logits


def title_loss(logits: torch.Tensor, targets: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Mean over examples of the mean NLL of their title tokens (``title_nll``'s mean).

    ``logits`` [T, V] predict ``targets`` [T]; ``lengths`` [B] split T into titles.
    """
    return nll_per_title(logits, targets, lengths).mean()


def rank_loss(scores: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over candidate scores ``[B, C]``, the target in column 0."""
    return F.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device))


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """KL(teacher || student) per title token ``[T, V]`` logits, averaged like :func:`title_loss`."""
    logq = torch.log_softmax(student.float(), -1)
    logp = torch.log_softmax(teacher.float(), -1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return per_title_mean(kl, lengths).mean()


def student_loss(model: Any, rows: list[Row], *, rank_weight: float, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Training loss of ``rows`` (target first among each row's candidates) and the target
    title logits ``[T, V]`` (for distillation).

    One candidate per row: the title loss. More: ``(1 - rank_weight)`` x title loss +
    ``rank_weight`` x :func:`rank_loss`, both from one packed forward.
    """
    lengths = [len(cands[0]) for _, cands in rows]
    if len(rows[0][1]) == 1:
        logits, targets = title_logits(model, [(p, cands[0]) for p, cands in rows], pad_id=pad_id)
        return title_loss(logits, targets, lengths), logits
    out = candidate_logits(model, rows, pad_id=pad_id)
    width = len(rows[0][1])
    is_target = (out.packed.group % width == 0).to(out.logits.device)
    target_logits = out.logits[out.where[is_target]]  # distinct positions: no duplicated rows
    title = title_loss(target_logits, out.packed.tgt.to(out.logits.device)[is_target], lengths)
    ranking = rank_loss(candidate_scores(out, candidates=width))
    return (1.0 - rank_weight) * title + rank_weight * ranking, target_logits
