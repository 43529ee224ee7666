"""Layer-importance scorers, registered by name: one score per layer, higher = more important.

Every scorer sees only the calibration probe (train split, design §4) through a
:class:`ScoringContext`. Subset-based scorers (Shapley, ablation, block influence,
angular distance) run layer subsets through the shared prefix cache; gradient-based
ones (Fisher, gradient norm) run the whole model with :func:`ollama_slim.models.lm.title_nll`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ollama_slim.models.families import decoder_layers
from ollama_slim.models.lm import title_nll
from ollama_slim.slimming.bridges import OWN_TEXT_LENGTH
from ollama_slim.slimming.importance.probes import SubsetEvaluator, pack_probe


@dataclass
class ScoringContext:
    """What a scorer may use: the model, the calibration pairs and a subset evaluator."""

    model: Any
    pairs: list[tuple[list[int], list[int]]]  # (prompt_ids, target_ids), train split
    evaluator: SubsetEvaluator
    tokenizer: Any = None  # for scorers that sample the model's own text
    pad_id: int = 0
    shapley_permutations: int = 8
    batch_size: int = 8
    seed: int = 0
    progress: Callable[[str], None] | None = None
    memo: dict[str, Any] = field(default_factory=dict)  # results several scorers share (one gradient pass)

    @property
    def num_layers(self) -> int:
        return self.evaluator.runner.num_layers

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)


@dataclass
class MethodScores:
    """One method's result: ``scores`` [N] (higher = more important), optional ``stderr`` [N]."""

    scores: list[float]
    stderr: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImportanceMethod:
    """A registered importance method: ``fn`` scores every layer; ``summary`` is its one-line description."""

    name: str
    fn: Callable[[ScoringContext], MethodScores]
    summary: str


METHODS: dict[str, ImportanceMethod] = {}


def register_method(name: str, summary: str) -> Callable[[Callable[[ScoringContext], MethodScores]], Callable[[ScoringContext], MethodScores]]:
    """Decorator: make a scorer available as ``--methods name``."""

    def wrap(fn: Callable[[ScoringContext], MethodScores]) -> Callable[[ScoringContext], MethodScores]:
        METHODS[name] = ImportanceMethod(name=name, fn=fn, summary=summary)
        return fn

    return wrap


def _gradient_stats(ctx: ScoringContext) -> tuple[list[float], list[float]]:
    """Per layer, from one backward pass per calibration example (computed once, shared):

    the mean over examples of the squared gradient summed over the layer's weights (the
    diagonal empirical Fisher), and the L2 norm of the gradient of the mean loss (the
    per-example gradients averaged).
    """
    if ctx.memo.get("gradients") is None:
        params = [[p for p in layer.parameters() if p.requires_grad] for layer in decoder_layers(ctx.model)]
        with _only_grads_for([p for ps in params for p in ps], ctx.model):
            ctx.memo["gradients"] = _accumulate(ctx, params)
    return ctx.memo["gradients"]


@contextmanager
def _only_grads_for(wanted: list[torch.nn.Parameter], model: Any) -> Iterator[None]:
    """Gradients for ``wanted`` only (no embedding or head gradients to compute), restored after."""
    ids = {id(p) for p in wanted}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _accumulate(ctx: ScoringContext, params: list[list[torch.nn.Parameter]]) -> tuple[list[float], list[float]]:
    """Backward each example's title loss: per layer, mean squared gradient and norm of the mean gradient."""
    fisher = [0.0] * len(params)
    total = [[torch.zeros_like(p, dtype=torch.float32) for p in ps] for ps in params]
    ctx.model.zero_grad(set_to_none=True)
    for n, pair in enumerate(ctx.pairs):
        title_nll(ctx.model, [pair], pad_id=ctx.pad_id).sum().backward()
        for layer, (ps, sums) in enumerate(zip(params, total)):
            for p, acc in zip(ps, sums):
                if p.grad is not None:
                    grad = p.grad.float()
                    fisher[layer] += float((grad**2).sum())
                    acc += grad
        ctx.model.zero_grad(set_to_none=True)
        if n % 16 == 0:
            ctx.say(f"gradients {n + 1}/{len(ctx.pairs)}")
    count = len(ctx.pairs)
    norms = [math.sqrt(sum(float((acc / count).pow(2).sum()) for acc in sums)) for sums in total]
    return [f / count for f in fisher], norms


@register_method("fisher", "diagonal empirical Fisher of the title loss, summed over each layer's weights")
def fisher(ctx: ScoringContext) -> MethodScores:
    """F_l = mean over examples of sum over layer l's weights of (d loss_i / d w)^2."""
    return MethodScores(scores=_gradient_stats(ctx)[0])


@register_method("gradnorm", "L2 norm of the title-loss gradient over each layer's weights")
def gradnorm(ctx: ScoringContext) -> MethodScores:
    """||d mean_loss / d W_l||_2 over all of layer l's weights (the mean of per-example gradients)."""
    return MethodScores(scores=_gradient_stats(ctx)[1])


def _cosines(ctx: ScoringContext) -> tuple[list[float], list[float]]:
    """Per layer: mean (1 - cos) over real tokens, and mean angle / pi at each prompt's last token (computed once, shared)."""
    if ctx.memo.get("cosines") is None:
        ctx.memo["cosines"] = _measure_cosines(ctx)
    return ctx.memo["cosines"]


def _measure_cosines(ctx: ScoringContext) -> tuple[list[float], list[float]]:
    batches = ctx.evaluator.probe.batches
    order = tuple(range(ctx.num_layers))
    ctx.evaluator.cache.pin(order)
    influence, angular = [], []
    for i in range(ctx.num_layers):
        before, after = ctx.evaluator.cache.final(order[:i]), ctx.evaluator.cache.final(order[: i + 1])
        tok_sum, tok_n, ang_sum, ang_n = 0.0, 0, 0.0, 0
        for h_in, h_out, batch in zip(before, after, batches):
            cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.to(h_in.device).float(), dim=-1).cpu()  # [B, S]
            tok_sum += float((1 - cos)[batch.tokens].sum())
            tok_n += int(batch.tokens.sum())
            last = cos[torch.arange(batch.size), batch.last].clamp(-1, 1)
            ang_sum += float(torch.arccos(last).sum() / math.pi)
            ang_n += batch.size
        influence.append(tok_sum / tok_n)
        angular.append(ang_sum / ang_n)
    return influence, angular


@register_method("block-influence", "ShortGPT block influence: 1 - cos(input, output) of the layer, over all tokens")
def block_influence(ctx: ScoringContext) -> MethodScores:
    return MethodScores(scores=_cosines(ctx)[0])


@register_method("angular", "angular distance arccos(cos(input, output)) / pi at each prompt's last token")
def angular(ctx: ScoringContext) -> MethodScores:
    return MethodScores(scores=_cosines(ctx)[1])


def _ablate(ctx: ScoringContext, evaluator: SubsetEvaluator, label: str) -> tuple[list[float], float]:
    """``(loss(all but l) - loss(all) for each layer l, loss(all))`` on ``evaluator``'s probe, through its prefix cache."""
    full = tuple(range(ctx.num_layers))
    evaluator.cache.pin(full)
    base = evaluator.loss(full)
    scores = []
    for i in full:
        scores.append(evaluator.loss(full[:i] + full[i + 1 :]) - base)
        ctx.say(f"{label} {i + 1}/{ctx.num_layers}")
    return scores, base


@register_method("ablation", "title-loss increase when the layer alone is skipped")
def ablation(ctx: ScoringContext) -> MethodScores:
    """loss(all but l) - loss(all), evaluated through the prefix cache."""
    scores, base = _ablate(ctx, ctx.evaluator, "ablation")
    return MethodScores(scores=scores, extra={"full_loss": base})


OWN_TEXTS = 64  # sequences of the model's own text `own-text-ablation` samples (64 tokens each, as the bridges' own-text share)


def own_text_evaluator(ctx: ScoringContext) -> SubsetEvaluator:
    """A subset evaluator whose rows are :data:`OWN_TEXTS` texts the model samples from its start
    token (seeded; :func:`ollama_slim.slimming.finetune.general.teacher_corpus`): the start token as
    the prompt, the sample as the one continuation, so its loss is the language-model loss on them."""
    from ollama_slim.slimming.finetune.general import teacher_corpus

    if ctx.tokenizer is None:
        raise ValueError("own-text-ablation needs the scoring context's tokenizer")
    texts = teacher_corpus(ctx.model, ctx.tokenizer, texts=OWN_TEXTS, tokens=OWN_TEXT_LENGTH, seed=ctx.seed)
    dtype = ctx.evaluator.probe.batches[0].bias.dtype
    probe = pack_probe(ctx.tokenizer, [(ids[:1], [ids[1:]]) for ids in texts], batch_size=ctx.batch_size, dtype=dtype)
    return SubsetEvaluator(ctx.evaluator.runner, probe, max_bytes=ctx.evaluator.cache.max_bytes)


@register_method("own-text-ablation", "loss increase on the model's own sampled text when the layer alone is skipped (what it does beyond the task)")
def own_text_ablation(ctx: ScoringContext) -> MethodScores:
    """loss(all but l) - loss(all) on the model's own text: the task's data plays no part, so fused
    with ``ablation`` it keeps layers the model needs for everything else (other domains)."""
    scores, base = _ablate(ctx, own_text_evaluator(ctx), "own-text ablation")
    return MethodScores(scores=scores, extra={"full_loss": base, "texts": OWN_TEXTS, "tokens": OWN_TEXT_LENGTH})


def shapley_contributions(evaluate: Callable[[tuple[int, ...]], float], *, num_layers: int, permutations: int, seed: int,
                          on_coalition: Callable[[tuple[int, ...]], None] | None = None) -> np.ndarray:
    """Marginal contributions of each layer in ``permutations`` random orders: [P, N].

    ``evaluate(coalition)`` is the value of a coalition (higher = better). Each row
    sums to ``v(all) - v(empty)`` (efficiency), whatever the order.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((permutations, num_layers))
    empty = evaluate(())
    for p in range(permutations):
        coalition: tuple[int, ...] = ()
        previous = empty
        for layer in rng.permutation(num_layers).tolist():
            if on_coalition is not None:
                on_coalition(coalition)
            coalition = tuple(sorted(coalition + (layer,)))
            value = evaluate(coalition)
            out[p, layer] = value - previous
            previous = value
    return out


@register_method("shapley", "Monte-Carlo permutation Shapley value of each layer (value: minus the title loss), with standard errors")
def shapley(ctx: ScoringContext) -> MethodScores:
    """phi_l = mean marginal gain of -loss when l joins a random coalition; stderr = std / sqrt(P)."""
    ev = ctx.evaluator

    def value(coalition: tuple[int, ...]) -> float:
        return -ev.loss(coalition)

    def step(coalition: tuple[int, ...]) -> None:
        ev.cache.pin(coalition)
        if len(coalition) == 0:
            ctx.say(f"shapley permutation started ({ev.cache.evaluations} subsets so far)")

    contrib = shapley_contributions(value, num_layers=ctx.num_layers, permutations=ctx.shapley_permutations, seed=ctx.seed, on_coalition=step)
    p = contrib.shape[0]
    stderr = contrib.std(axis=0, ddof=1) / math.sqrt(p) if p > 1 else np.full(ctx.num_layers, float("nan"))
    return MethodScores(scores=contrib.mean(axis=0).tolist(), stderr=stderr.tolist(), extra={"permutations": p, "empty_value": value(()), "full_value": value(tuple(range(ctx.num_layers)))})


def mean_rank(scores: dict[str, list[float]]) -> list[float]:
    """Fusion: each layer's mean rank over methods, scaled to [0, 1] (1 = most important)."""
    ranks = []
    for values in scores.values():
        arr = np.asarray(values, dtype=float)
        order = arr.argsort(kind="stable")
        rank = np.empty_like(arr)
        rank[order] = np.arange(len(arr))
        for v in np.unique(arr):  # ties share their average rank
            rank[arr == v] = rank[arr == v].mean()
        ranks.append(rank / max(len(arr) - 1, 1))
    return np.mean(ranks, axis=0).tolist()
