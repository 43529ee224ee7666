"""The healing losses: the next-item title loss, a ranking loss over candidates, distillation.

Logits come from :mod:`ollama_slim.models.lm` (the title positions only, or every candidate
packed after its prompt); these functions turn them into scalars to minimise. Distillation
has three parts: the teacher's title-token distribution (:func:`distill_loss`), its
distribution over the candidates (:func:`listwise_kd_loss`) and its hidden states
(:data:`ALIGN_LOSSES`, registered by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

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


def listwise_kd_loss(student: torch.Tensor, teacher: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) between the softmax distributions of candidate scores ``[B, C]``
    divided by ``temperature``, averaged over rows and scaled by ``temperature ** 2`` (so its
    gradient keeps its size as the temperature changes). The teacher side gets no gradient.
    """
    logq = torch.log_softmax(student.float() / temperature, -1)
    logp = torch.log_softmax(teacher.detach().float() / temperature, -1)
    return F.kl_div(logq, logp, log_target=True, reduction="batchmean") * temperature**2


AlignLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ALIGN_LOSSES: dict[str, AlignLoss] = {}


def register_align(name: str) -> Callable[[AlignLoss], AlignLoss]:
    def wrap(fn: AlignLoss) -> AlignLoss:
        ALIGN_LOSSES[name] = fn
        return fn

    return wrap


@register_align("cosine")
def cosine_align(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos`` between student and teacher states ``[L, T, d]`` (per layer and token)."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1)).mean()


@register_align("nmse")
def nmse_align(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared error over the teacher's squared norm, per layer of ``[L, T, d]``, averaged over layers."""
    teacher = teacher.detach().float()
    error = (student.float() - teacher).pow(2).sum(dim=(1, 2))
    return (error / teacher.pow(2).sum(dim=(1, 2)).clamp(min=1e-12)).mean()


@dataclass
class StudentTerms:
    """What one student forward gives: the title loss (scalar), the target title logits
    ``[T, V]`` and, with more than one candidate, every candidate's score ``[B, C]``: the
    ``answers`` first (the target in column 0), then the negatives."""

    title: torch.Tensor
    target_logits: torch.Tensor
    scores: torch.Tensor | None = None
    answers: int = 1

    def mixed(self, rank_weight: float) -> torch.Tensor:
        """The title loss, or with negatives ``(1 - rank_weight)`` x title loss + ``rank_weight``
        x :func:`rank_loss` of the target among the negatives."""
        if self.scores is None or self.scores.shape[1] == self.answers:
            return self.title
        ranked = torch.cat([self.scores[:, :1], self.scores[:, self.answers :]], dim=1)
        return (1.0 - rank_weight) * self.title + rank_weight * rank_loss(ranked)


def student_terms(model: Any, rows: list[Row], *, pad_id: int = 0, answers: int = 1, weights: torch.Tensor | None = None) -> StudentTerms:
    """The student's forward on ``rows``: each row's ``answers`` first among its candidates
    (the target first of them), then its negatives.

    One candidate per row: the target title only. More: every candidate packed after its
    prompt in one forward, scored like evaluation scores it; the title loss is the mean
    over the answers of their mean token NLL (weighted by ``weights`` ``[B, answers]``, mean 1).
    """
    lengths = [len(cands[0]) for _, cands in rows]
    if len(rows[0][1]) == 1:
        logits, targets = title_logits(model, [(p, cands[0]) for p, cands in rows], pad_id=pad_id)
        if weights is None:
            return StudentTerms(title=title_loss(logits, targets, lengths), target_logits=logits)
        nll = nll_per_title(logits, targets, lengths)
        return StudentTerms(title=(nll * weights[:, 0].to(nll.device)).mean(), target_logits=logits)
    out = candidate_logits(model, rows, pad_id=pad_id)
    width = len(rows[0][1])
    is_target = (out.packed.group % width == 0).to(out.logits.device)
    target_logits = out.logits[out.where[is_target]]  # distinct positions: no duplicated rows
    scores = candidate_scores(out, candidates=width)
    if answers == 1 and weights is None:
        title = title_loss(target_logits, out.packed.tgt.to(out.logits.device)[is_target], lengths)
    else:
        title = -(scores[:, :answers] * (1.0 if weights is None else weights.to(scores.device))).mean()
    return StudentTerms(title=title, target_logits=target_logits, scores=scores, answers=answers)


def student_loss(model: Any, rows: list[Row], *, rank_weight: float, pad_id: int = 0, answers: int = 1,
                 weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training loss of ``rows`` (see :func:`student_terms`) and the target title logits
    ``[T, V]`` (for distillation).

    One candidate per row: the title loss. More: the title loss of the answers, and with
    negatives ``(1 - rank_weight)`` x that + ``rank_weight`` x :func:`rank_loss`, all from
    one packed forward.
    """
    terms = student_terms(model, rows, pad_id=pad_id, answers=answers, weights=weights)
    return terms.mixed(rank_weight), terms.target_logits
