"""Distillation beyond the title tokens (design §6): the teacher's ranking and its hidden states.

:func:`make_distiller` sets it up from a config: which teacher layer each kept layer is
aligned with (from the compact model's ``slim.json``: after renumbering, compact layer ``i``
is original layer ``kept[i]``), the teacher's plan and cache. :func:`distilled_loss` is one
step's loss: the student's title (and ranking) loss, then, each with its weight, the
teacher's title-token KL, its distribution over the candidates (listwise KD) and its
hidden states at the target-title positions (alignment).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ollama_slim.errors import UsageError
from ollama_slim.models.families import decoder_layers, family_of, get_module
from ollama_slim.models.lm import Row, recorded, target_positions
from ollama_slim.slimming.finetune.config import FinetuneConfig
from ollama_slim.slimming.finetune.losses import ALIGN_LOSSES, StudentTerms, distill_loss, listwise_kd_loss, student_terms
from ollama_slim.slimming.finetune.teacher import Targets, Teacher, TeacherCache, TeacherPlan, teacher_identity

AlignTarget = Callable[[list[int], int], list[int]]  # (kept, num_layers) -> the teacher layer of each compact layer
ALIGN_TARGETS: dict[str, AlignTarget] = {}


def register_target(name: str) -> Callable[[AlignTarget], AlignTarget]:
    def wrap(fn: AlignTarget) -> AlignTarget:
        ALIGN_TARGETS[name] = fn
        return fn

    return wrap


@register_target("kept")
def at_kept(kept: list[int], num_layers: int) -> list[int]:
    """Compact layer ``i`` <- the teacher's layer ``kept[i]``: its original index."""
    return list(kept)


@register_target("gap-end")
def at_gap_end(kept: list[int], num_layers: int) -> list[int]:
    """Compact layer ``i`` <- the teacher's last layer before ``kept[i + 1]`` (``N - 1`` after
    the last): the state the next kept layer reads in the teacher, which bridges imitate too."""
    return [end - 1 for end in [*kept[1:], num_layers]]


def aligned_layers(config: FinetuneConfig, *, teacher: Any, student: Any, model_dir: Path) -> list[int]:
    """The teacher layer each of the student's layers is aligned with (``config.align_at``)."""
    from ollama_slim.slimming.build import read_provenance

    record = read_provenance(model_dir)
    if "kept" not in record or "num_layers" not in record:
        raise UsageError(f"{model_dir} has no record of kept layers (slim.json)", hint="align hidden states only on a model made by `ollama-slim build`")
    kept, total = [int(i) for i in record["kept"]], int(record["num_layers"])
    if len(decoder_layers(student)) != len(kept):
        raise UsageError(f"{model_dir} has {len(decoder_layers(student))} layers but its slim.json keeps {len(kept)}", hint="rebuild it with `ollama-slim build`")
    if len(decoder_layers(teacher)) != total:
        raise UsageError(f"teacher {config.distill_from} has {len(decoder_layers(teacher))} layers, but {model_dir} was cut from a model of {total}",
                         hint="align with the model the compact one was cut from (its fine-tuned full model)")
    return ALIGN_TARGETS[config.align_at](kept, total)


@dataclass
class Distiller:
    """The teacher and the weights of the distillation terms (0: off)."""

    teacher: Teacher
    head: Any  # the teacher's LM head: its title distribution from the cached head inputs
    title_weight: float
    listwise_weight: float
    temperature: float
    align_weight: float
    align_kind: str
    student_layers: tuple[int, ...] = ()  # every student layer when aligning


def make_distiller(config: FinetuneConfig, *, teacher: Any, student: Any, model_dir: Path, cache_dir: Path) -> Distiller:
    """The distiller of ``config`` (``student``: the bare transformers model, no LoRA wrapper)."""

    layers = aligned_layers(config, teacher=teacher, student=student, model_dir=model_dir) if config.align_weight > 0 else []
    plan = TeacherPlan(title=config.distill_weight > 0, scores=config.distill_listwise_weight > 0, layers=tuple(layers))
    cache = TeacherCache(cache_dir, teacher_identity(config.teacher_dir())) if config.teacher_cache else None
    return Distiller(teacher=Teacher(model=teacher, plan=plan, cache=cache), head=get_module(teacher, family_of(teacher).lm_head),
                     title_weight=config.distill_weight, listwise_weight=config.distill_listwise_weight, temperature=config.distill_temperature,
                     align_weight=config.align_weight, align_kind=config.align_kind, student_layers=tuple(range(len(layers))))


def states_at_targets(seen: dict[Any, torch.Tensor], rows: list[Row], layers: tuple[int, ...]) -> torch.Tensor:
    """Recorded layer outputs ``[B, S, d]`` at the target-title positions of ``rows``: [L, T, d]."""
    row, col = target_positions(rows)
    return torch.stack([seen[i][row.to(seen[i].device), col.to(seen[i].device)] for i in layers])


def _title_kd(d: Distiller, terms: StudentTerms, targets: list[Targets]) -> torch.Tensor:
    """KL from the teacher's title-token distribution (its head on the cached inputs ``[T, d]``)."""
    device = terms.target_logits.device
    with torch.no_grad():
        teacher_logits = d.head(torch.cat([t["head_in"] for t in targets]).to(device))  # [T, V]
    return distill_loss(terms.target_logits, teacher_logits, [len(t["head_in"]) for t in targets])


def distilled_loss(d: Distiller, model: Any, rows: list[Row], *, base: Any, rank_weight: float, pad_id: int = 0, answers: int = 1,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """One step's loss with the teacher (scalar); ``base``: the transformers model inside ``model``.

    ``(1 - title_weight)`` x the student's loss + ``title_weight`` x title-token KL, plus
    ``listwise_weight`` x :func:`listwise_kd_loss` of the candidates' scores ``[B, C]``, plus
    ``align_weight`` x the alignment of the student's layer outputs ``[L, T, d]`` with the teacher's.
    """
    with recorded(base, layers=d.student_layers) as seen:
        terms = student_terms(model, rows, pad_id=pad_id, answers=answers, weights=weights)
    loss = terms.mixed(rank_weight)
    targets = d.teacher.targets(rows, pad_id=pad_id)
    device = terms.target_logits.device
    if d.title_weight > 0:
        loss = (1.0 - d.title_weight) * loss + d.title_weight * _title_kd(d, terms, targets)
    if d.listwise_weight > 0:
        teacher_scores = torch.stack([t["scores"] for t in targets]).to(device)
        loss = loss + d.listwise_weight * listwise_kd_loss(terms.scores, teacher_scores, temperature=d.temperature)
    if d.align_weight > 0:
        teacher_states = torch.cat([t["hidden"] for t in targets], dim=1).to(device)  # [L, T, d]
        loss = loss + d.align_weight * ALIGN_LOSSES[d.align_kind](states_at_targets(seen, rows, d.student_layers), teacher_states)
    return loss
