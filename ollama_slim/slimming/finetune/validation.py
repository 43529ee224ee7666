"""Validation while healing (design §6): a registered measure on validation users, patience, the best weights.

Measures, registered by name (the CLI's choices): ``loss``, the mean next-item title loss of
the validation targets (lower is better); ``ndcg``, NDCG@10 of each validation target among
``val_negatives`` uniform negatives, scored like evaluation scores them (higher is better);
``ndcg-both``, the same over uniform and popularity-weighted negatives alike (each user once
per regime), so that the best step is not one that trades the popularity regime for the
uniform one; ``answer``, the generation-mode measure: each validation user's greedy answer to
the training prompt (in the chat format, what ``ollama run`` asks), and the number of distinct
catalogue titles the users did not list, per user (higher is better: 1 when every user gets a
title of their own, 1/N when all get the same one, 0 when none is a title). The validation rows are encoded once. :class:`EarlyStop` keeps the measures, the best step
and a copy of its trainable tensors, and says when ``patience`` measures in a row brought
nothing better; its state goes into every checkpoint, so a resumed run stops where an
uninterrupted one does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ollama_slim.errors import UsageError
from ollama_slim.models.lm import Row, candidate_logits, candidate_scores, title_nll
from ollama_slim.slimming.finetune.config import FinetuneConfig
from ollama_slim.slimming.finetune.data import encode_rows, fewest_unseen, heldout_users

RowsFn = Callable[[FinetuneConfig, Any, Any], list[Row]]  # (config, dataset, tokenizer) -> validation rows
MeasureFn = Callable[..., float]  # (model, rows, *, batch, pad_id) -> value


@dataclass(frozen=True)
class ValMeasure:
    name: str
    higher_is_better: bool
    rows: RowsFn
    compute: MeasureFn


VAL_MEASURES: dict[str, ValMeasure] = {}


def register_measure(name: str, *, higher_is_better: bool, rows: RowsFn) -> Callable[[MeasureFn], MeasureFn]:
    def wrap(fn: MeasureFn) -> MeasureFn:
        VAL_MEASURES[name] = ValMeasure(name=name, higher_is_better=higher_is_better, rows=rows, compute=fn)
        return fn

    return wrap


def _valid_examples(config: FinetuneConfig, dataset: Any) -> list[Any]:
    """The valid-split examples of ``val_users`` users (seeded draw, none of the held-out ones)."""
    from ollama_slim.recsys.data import examples, select_users

    users = select_users(dataset, config.val_users, seed=config.seed, exclude=heldout_users(config, dataset))
    return examples(dataset, split="valid", history=config.history, users=users)


def title_rows(config: FinetuneConfig, dataset: Any, tokenizer: Any) -> list[Row]:
    """``(prompt, [target])`` of each validation example."""
    return encode_rows(tokenizer, dataset, _valid_examples(config, dataset), config)


def candidate_rows(config: FinetuneConfig, dataset: Any, tokenizer: Any, *, regimes: tuple[str, ...] = ("uniform",)) -> list[Row]:
    """``(prompt, [target, negatives...])`` of each validation example and regime:
    ``val_negatives`` negatives per user drawn in each of ``regimes``, seeded like evaluation's."""
    from ollama_slim.recsys.data import CandidateSampler

    found = _valid_examples(config, dataset)
    fewest = fewest_unseen(dataset, {e.user for e in found})
    if config.val_negatives > fewest:
        raise UsageError(f"--val-negatives {config.val_negatives} is more than the {fewest} items some user never interacted with",
                         hint=f"use --val-negatives {fewest} or fewer")
    samplers = [CandidateSampler(dataset, negatives=config.val_negatives, regime=regime, seed=config.seed) for regime in regimes]
    return [row for sampler in samplers for row in encode_rows(tokenizer, dataset, found, config, [sampler(e)[1:] for e in found])]


def both_regimes_rows(config: FinetuneConfig, dataset: Any, tokenizer: Any) -> list[Row]:
    """:func:`candidate_rows` under uniform and popularity-weighted negatives (the same users in each)."""
    return candidate_rows(config, dataset, tokenizer, regimes=("uniform", "popularity"))


@register_measure("loss", higher_is_better=False, rows=title_rows)
def validation_loss(model: Any, rows: list[Row], *, batch: int, pad_id: int = 0) -> float:
    """Mean over the rows of the target title's mean token NLL (the title loss)."""
    nll = [title_nll(model, [(p, c[0]) for p, c in rows[i : i + batch]], pad_id=pad_id) for i in range(0, len(rows), batch)]
    return float(torch.cat(nll).mean())


@register_measure("ndcg", higher_is_better=True, rows=candidate_rows)
def validation_ndcg(model: Any, rows: list[Row], *, batch: int, pad_id: int = 0) -> float:
    """Mean NDCG@10 of the target (candidate 0) among each row's candidates."""
    from ollama_slim.recsys.metrics import per_user_metrics

    width = len(rows[0][1])
    scores = [candidate_scores(candidate_logits(model, rows[i : i + batch], pad_id=pad_id), candidates=width) for i in range(0, len(rows), batch)]
    return float(np.mean(per_user_metrics(torch.cat(scores).double().cpu().numpy())["ndcg@10"]))


# Every user has one row per regime, so the mean over the rows is the mean of the regimes' means.
register_measure("ndcg-both", higher_is_better=True, rows=both_regimes_rows)(validation_ndcg)


@dataclass(frozen=True)
class AnswerJudge:
    """What turns a validation prompt into a verdict: greedy decoding until one of ``stops``
    (at most ``max_tokens``), the answer read as text and matched against the catalogue."""

    tokenizer: Any
    index: Any  # recsys.titles.TitleIndex
    stops: tuple[int, ...]
    end: str | None  # the chat format's end of turn, where the answer's text stops
    max_tokens: int = 32

    @torch.no_grad()
    def answer(self, model: Any, prompt: list[int]) -> str:
        device = model.get_input_embeddings().weight.device
        ids = torch.tensor([prompt], device=device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_tokens, do_sample=False,
                             eos_token_id=list(self.stops) or None, pad_token_id=self.tokenizer.pad_token_id or 0,
                             temperature=None, top_p=None, top_k=None)
        text = self.tokenizer.decode(out[0, len(prompt):].tolist(), skip_special_tokens=False)
        return text.split(self.end)[0] if self.end else text


@dataclass(frozen=True)
class Question:
    """One validation user asked: the prompt's token ids, the items it lists, and the judge."""

    prompt: list[int]
    listed: tuple[int, ...]
    judge: AnswerJudge


def question_rows(config: FinetuneConfig, dataset: Any, tokenizer: Any) -> list[Question]:
    """Each validation example's prompt, as healing renders it (the chat format's is what `ollama run` sends)."""
    from ollama_slim.recsys.prompt import shown_items
    from ollama_slim.recsys.titles import TitleIndex
    from ollama_slim.slimming.finetune.data import prompt_config

    found = _valid_examples(config, dataset)
    end = config.chat.end if config.task_format == "chat" and config.chat is not None else None
    stops = {tokenizer.eos_token_id} | {ids[0] for text in (end, "\n") if text
                                        for ids in [tokenizer(text, add_special_tokens=False)["input_ids"]] if len(ids) == 1}
    judge = AnswerJudge(tokenizer=tokenizer, index=TitleIndex(dataset.titles, words=config.title_words), stops=tuple(sorted(stops - {None})), end=end)
    prompt = prompt_config(config)
    return [Question(prompt=row[0], listed=tuple(shown_items(example, prompt)), judge=judge)
            for example, row in zip(found, encode_rows(tokenizer, dataset, found, config))]


@register_measure("answer", higher_is_better=True, rows=question_rows)
def validation_answers(model: Any, rows: list[Question], *, batch: int, pad_id: int = 0) -> float:
    """Distinct catalogue titles that the users did not list, per user, among the greedy answers."""
    from ollama_slim.recsys.titles import same_items

    named = set()
    for question in rows:
        match = question.judge.index.match(question.judge.answer(model, question.prompt))
        if match.items and not same_items(match, question.listed):
            named.add(match.label)
    return len(named) / max(1, len(rows))


@dataclass
class Validator:
    """One measure on rows encoded once; called with the model being trained."""

    measure: ValMeasure
    rows: list[Row]
    batch: int
    pad_id: int = 0

    def __call__(self, model: Any) -> float:
        """The measure of ``model`` (eval mode and no grad while measuring)."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self.measure.compute(model, self.rows, batch=self.batch, pad_id=self.pad_id)
        finally:
            model.train(was_training)


def make_validator(config: FinetuneConfig, dataset: Any, tokenizer: Any) -> Validator | None:
    """The validator of ``config`` (``None`` without early stopping)."""
    if config.early_stop_patience == 0:
        return None
    measure = VAL_MEASURES[config.val_measure]
    return Validator(measure=measure, rows=measure.rows(config, dataset, tokenizer), batch=config.batch_size, pad_id=tokenizer.pad_token_id or 0)


@dataclass
class EarlyStop:
    """Measures so far, the best one and its trainable tensors (float32 copies), patience left."""

    patience: int
    higher_is_better: bool
    history: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    best_value: float | None = None
    stale: int = 0  # measures since the best
    stopped: bool = False
    best_params: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def better(self, value: float) -> bool:
        """Whether ``value`` beats the best so far (a NaN never does)."""
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.higher_is_better else value < self.best_value

    def update(self, step: int, value: float, params: dict[str, torch.Tensor]) -> None:
        """Record the measure ``value`` after ``step``; keep ``params`` if it is the best."""
        self.history.append((step, value))
        if self.better(value):
            self.best_step, self.best_value, self.stale = step, value, 0
            self.best_params = {name: p.detach().float().cpu().clone() for name, p in params.items()}
        else:
            self.stale += 1
            self.stopped = self.stale >= self.patience

    def state(self) -> dict[str, Any]:
        """Everything but the tensors (JSON-able)."""
        return {"history": [list(h) for h in self.history], "best_step": self.best_step, "best_value": self.best_value,
                "stale": self.stale, "stopped": self.stopped}

    def restore(self, state: dict[str, Any], best_params: dict[str, torch.Tensor]) -> None:
        """Back to a checkpoint's :meth:`state` and best tensors."""
        self.history = [(int(s), float(v)) for s, v in state["history"]]
        self.best_step, self.best_value = state["best_step"], state["best_value"]
        self.stale, self.stopped, self.best_params = int(state["stale"]), bool(state["stopped"]), dict(best_params)


def make_early_stop(config: FinetuneConfig) -> EarlyStop | None:
    if config.early_stop_patience == 0:
        return None
    return EarlyStop(patience=config.early_stop_patience, higher_is_better=VAL_MEASURES[config.val_measure].higher_is_better)


def keep_best(early: EarlyStop, params: dict[str, torch.nn.Parameter]) -> None:
    """Put the best step's tensors back into the trainable ``params``."""
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(early.best_params[name].to(param.dtype))
