"""The training loop: learning-rate schedule, one optimizer step, steps with checkpoints and validation."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ollama_slim.models.lm import Row, title_logits
from ollama_slim.slimming.bridges import attach_bridge
from ollama_slim.slimming.finetune.checkpoints import save_checkpoint
from ollama_slim.slimming.finetune.config import FinetuneConfig, FinetuneProgress
from ollama_slim.slimming.finetune.data import AnswerWeights, Negatives, answer_items, batch_indices, cf_answer_items, encode_rows
from ollama_slim.slimming.finetune.distill import Distiller, distilled_loss
from ollama_slim.slimming.finetune.general import general_loss
from ollama_slim.slimming.finetune.losses import distill_loss, student_loss
from ollama_slim.slimming.finetune.trainee import Trainee, base_model
from ollama_slim.slimming.finetune.validation import EarlyStop, Validator


def learning_rate(step: int, *, total: int, peak: float, warmup: float) -> float:
    """Linear warm-up over ``warmup`` of the steps, then linear decay to 10% of ``peak``."""
    ramp = max(1, int(round(warmup * total)))
    if step < ramp:
        return peak * (step + 1) / ramp
    return peak * (1.0 - 0.9 * (step - ramp) / max(1, total - ramp))


def total_steps(config: FinetuneConfig, num_examples: int) -> int:
    """``config.steps``, or the steps ``config.epochs`` over ``num_examples`` take."""
    if config.steps is not None:
        return config.steps
    return max(1, math.ceil(config.epochs * num_examples / config.batch_size))


@dataclass
class Loop:
    """Everything one optimizer step needs (the optional parts: ``None`` when off)."""

    config: FinetuneConfig
    trainee: Trainee
    teacher: Any | None
    tokenizer: Any
    dataset: Any
    examples: list[Any]
    optimizer: Any
    accelerator: Any
    total: int
    negatives: Negatives | None = None  # with rank_negatives
    weights: AnswerWeights | None = None  # with popularity_debias or cf_answers
    neighbours: Any | None = None  # the item-to-item recommender of cf_answers
    distiller: Distiller | None = None  # teacher beyond the title tokens
    validator: Validator | None = None  # with early stopping, and:
    early: EarlyStop | None = None
    corpus: list[list[int]] | None = None  # with general_weight: the text the teacher wrote


def _my_share(loop: Loop, step: int, *, num_examples: int, seed: int) -> list[int]:
    """This process's indices of step ``step``'s batch over ``num_examples`` (a seeded order)."""
    acc = loop.accelerator
    indices = batch_indices(step=step, batch_size=loop.config.batch_size, num_examples=num_examples, seed=seed)
    return indices[acc.process_index :: acc.num_processes] or indices[:1]


def _step_rows(loop: Loop, step: int) -> tuple[list[Row], torch.Tensor | None]:
    """This process's share of step ``step``'s batch, encoded with its candidates, and the
    weights of its answers (``None`` when every answer weighs alike)."""
    config = loop.config
    mine = _my_share(loop, step, num_examples=len(loop.examples), seed=config.seed)
    chosen = [loop.examples[i] for i in mine]
    negatives = None
    if config.rank_negatives > 0:
        draws = loop.negatives or Negatives(loop.dataset, count=config.rank_negatives, seed=config.seed)
        negatives = [draws.draw(loop.examples[i], step=step, index=i)[1] for i in mine]
    answers = [answer_items(loop.dataset, e, config.answers) for e in chosen]
    if config.cf_answers > 0:
        if loop.neighbours is None:
            from ollama_slim.recsys.neighbours import ItemNeighbours

            loop.neighbours = ItemNeighbours(loop.dataset, vocab=config.cf_vocab, vocab_skip=config.cf_vocab_skip)
        answers = [a + cf_answer_items(loop.neighbours, loop.dataset, e, config.cf_answers) for a, e in zip(answers, chosen)]
    weights = loop.weights(answers) if loop.weights is not None else None
    return encode_rows(loop.tokenizer, loop.dataset, chosen, config, negatives, answers), weights


def _general_term(loop: Loop, step: int) -> torch.Tensor:
    """``general_weight`` x the teacher's KL (and alignment) on this process's share of step
    ``step``'s batch of the teacher's text (a seeded order of its own, so a resumed run sees the same)."""
    acc, config, corpus = loop.accelerator, loop.config, loop.corpus
    mine = _my_share(loop, step, num_examples=len(corpus), seed=config.seed + 1)
    ids = torch.tensor([corpus[i] for i in mine], dtype=torch.long, device=acc.device)
    d = loop.distiller
    align = (d.student_layers, d.teacher.plan.layers, d.align_kind) if d is not None and d.align_weight > 0 else None
    base = base_model(acc.unwrap_model(loop.trainee.model))
    term = general_loss(loop.trainee.model, acc.unwrap_model(loop.teacher), ids, base=base, align=align, align_weight=d.align_weight if align else 0.0)
    return config.general_weight * term


def _step_loss(loop: Loop, step: int) -> torch.Tensor:
    """The loss of this process's share of step ``step``'s batch (scalar)."""
    loss = _task_loss(loop, step)
    if loop.corpus is not None:
        with loop.accelerator.autocast():
            loss = loss + _general_term(loop, step)
    return loss


def _task_loss(loop: Loop, step: int) -> torch.Tensor:
    """The task's loss on step ``step``'s examples: the student's, with the teacher's terms."""
    rows, weights = _step_rows(loop, step)
    pad = loop.tokenizer.pad_token_id or 0
    with loop.accelerator.autocast():
        if loop.distiller is not None:
            base = base_model(loop.accelerator.unwrap_model(loop.trainee.model))
            return distilled_loss(loop.distiller, loop.trainee.model, rows, base=base, rank_weight=loop.config.rank_weight, pad_id=pad,
                                  answers=loop.config.answers + loop.config.cf_answers, weights=weights)
        loss, logits = student_loss(loop.trainee.model, rows, rank_weight=loop.config.rank_weight, pad_id=pad, answers=loop.config.answers + loop.config.cf_answers,
                                    weights=weights)
        if loop.teacher is not None:
            batch = [(p, cands[0]) for p, cands in rows]
            with torch.no_grad():
                teacher_logits, _ = title_logits(loop.teacher, batch, pad_id=pad)
            w = loop.config.distill_weight
            loss = (1.0 - w) * loss + w * distill_loss(logits, teacher_logits, [len(t) for _, t in batch])
    return loss


def train_step(loop: Loop, step: int) -> float:
    """One optimizer step; returns the loss averaged over processes."""
    lr = learning_rate(step, total=loop.total, peak=loop.config.lr, warmup=loop.config.warmup)
    for group in loop.optimizer.param_groups:
        group["lr"] = lr
    loop.optimizer.zero_grad(set_to_none=True)
    loss = _step_loss(loop, step)
    loop.accelerator.backward(loss)
    loop.accelerator.clip_grad_norm_(list(loop.trainee.params.values()), 1.0)
    loop.optimizer.step()
    return float(loop.accelerator.reduce(loss.detach(), reduction="mean"))


def validate(loop: Loop, done: int) -> None:
    """After step ``done``: measure on the validation rows when due (every ``eval_every``
    steps and after the last), and let :class:`EarlyStop` keep the best weights."""
    if loop.early is None or loop.validator is None or (done % loop.config.eval_every and done != loop.total):
        return
    with loop.accelerator.autocast():
        value = loop.validator(loop.accelerator.unwrap_model(loop.trainee.model))
    loop.early.update(done, value, loop.trainee.params)


def _measured(loop: Loop, done: int) -> dict[str, Any]:
    """The validation measure taken after step ``done`` and the best so far, for the progress callback."""
    early = loop.early
    if early is None or not early.history or early.history[-1][0] != done or early.best_step is None:
        return {}
    return {"measured": early.history[-1][1], "best": (early.best_step, early.best_value)}


def _stopped(loop: Loop) -> bool:
    return loop.early is not None and loop.early.stopped


def run_loop(loop: Loop, *, start: int, losses: list[float], checkpoint_dir: Path, on_step: Callable[[FinetuneProgress], None] | None) -> list[float]:
    """Steps ``start..total-1`` (fewer when early stopping stops), a checkpoint every
    ``checkpoint_every`` steps, at the end and at an early stop; with ``val_at_start``, a
    measure of the starting weights first (step 0)."""
    began = time.perf_counter()
    model = loop.trainee.model
    model.train()
    with attach_bridge(base_model(loop.accelerator.unwrap_model(model)), loop.trainee.bridge) if loop.trainee.bridge else nullcontext():
        if start == 0 and loop.config.val_at_start:
            validate(loop, 0)
        for step in range(start, loop.total):
            if _stopped(loop):
                break
            losses.append(train_step(loop, step))
            done = step + 1
            validate(loop, done)
            if done % loop.config.checkpoint_every == 0 or done == loop.total or _stopped(loop):
                loop.accelerator.wait_for_everyone()
                if loop.accelerator.is_main_process:
                    save_checkpoint(checkpoint_dir, step=done, trainee=loop.trainee, optimizer=loop.optimizer, config=loop.config, losses=losses, early=loop.early)
            if on_step is not None:
                lr = loop.optimizer.param_groups[0]["lr"]
                on_step(FinetuneProgress(step=done, total=loop.total, loss=losses[-1], lr=lr, seconds=time.perf_counter() - began,
                                         **_measured(loop, done)))
    model.eval()
    return losses
