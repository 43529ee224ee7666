"""The ``select`` stage: choose the layers to keep, with measured feedback (design §4).

Strategies are registered by name (:data:`STRATEGIES`): ``ranked`` adds layers in fused
importance order, ``backward`` removes the layer whose removal hurts least, ``forward``
adds the layer that helps most. All evaluate on the validation split, through layer
subsets run with the hidden-state prefix cache (no rebuilt model). Searches compare
candidates by validation title loss (prompt + target, cheap); each accepted step is
also ranked over 1 + 19 seeded candidates for NDCG@10. ``selection.json`` and
``selection.png`` go to the run directory; ``build`` reads ``model``, ``num_layers``
and ``kept``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ollama_slim import paths
from ollama_slim.recsys.data import CandidateSampler, load_dataset
from ollama_slim.errors import RunError, SelectionError, UsageError
from ollama_slim.slimming.importance.plots import plot_selection
from ollama_slim.slimming.importance.probes import SubsetEvaluator, ndcg_at, pack_probe, probe_examples, probe_rows, random_ndcg, target_nll
from ollama_slim.slimming.importance.stage import ScoreConfig, default_run_dir, open_model, read_scores, score_layers
from ollama_slim.models.families import Family, family_of
from ollama_slim.models.lm import LayerRunner
from ollama_slim.models.modeling import torch_dtype
from ollama_slim.recsys.prompt import PromptConfig
from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.slimming.patterns import feasible, matches, original_types
from ollama_slim.models.sources import resolve

SELECTION_FORMAT = 1
# tools/bench_select.py (SmolLM2-135M, keep 10 of 30, 200 validation users): backward had the lowest
# title loss (8.60 vs 10.03 for ranked on ablation scores, 13.71 for ranked on all methods fused)
DEFAULT_STRATEGY = "backward"
RANKED_METHODS = ("ablation",)  # the best single ranking there; used when `ranked` must score first
Progress = Callable[[str], None]


@dataclass(frozen=True)
class SelectConfig:
    """What to select from: a run directory (with scores.json) or a model reference.

    Exactly one of ``keep`` (layers to keep) and ``min_retained`` (share of the full
    model's NDCG@10 lift over chance to keep, design §3). ``also_data``: more data sets whose
    validation users (``val_users`` from each) are measured with those of ``data``, so the
    kept layers serve every domain (``ranked``'s order still comes from the scores).
    """

    source: str
    keep: int | None = None
    min_retained: float | None = None
    strategy: str = DEFAULT_STRATEGY
    data: str | None = None
    also_data: tuple[str, ...] = ()
    val_users: int = 64
    run_dir: Path | None = None
    methods: tuple[str, ...] = RANKED_METHODS  # for scoring first, when `ranked` finds no scores
    calib_users: int = 64
    hf: str | None = None
    dtype: str = "float32"
    device_map: str | None = None
    negatives: int = 19
    seed: int = 0
    batch_size: int = 8
    cache_gb: float = 2.0
    prompt: PromptConfig = PromptConfig()


@dataclass
class Step:
    """A subset evaluated on validation: its layers, title loss and NDCG@10."""

    layers: list[int]
    val_loss: float
    ndcg10: float
    retained: float | None = None
    changed: int | None = None  # the layer added or removed at this step


@dataclass
class SearchContext:
    """What a strategy works with: the two validation evaluators and the target."""

    num_layers: int
    loss: SubsetEvaluator  # prompt + target rows: fast title loss for the search
    rank: SubsetEvaluator  # prompt + 1 + 19 candidates: title loss and NDCG@10 of accepted steps
    keep: int | None
    min_retained: float | None
    order: list[int] | None  # fused importance order, most important first
    chance: float
    full: Step | None = None
    progress: Progress | None = None
    family: Family | None = None  # with types: the layer-type pattern every final set must follow
    types: list[str] | None = None

    def fits(self, layers: Any) -> bool:
        """Whether ``layers`` put every layer on a position of its own type (always, for families without a pattern)."""
        return self.family is None or matches(self.family, self.types, sorted(layers))

    def completable(self, must: Any, may: Any) -> bool:
        """Whether ``must`` (plus some of ``may``) can still become a pattern-matching set of ``keep`` layers."""
        if self.family is None or self.keep is None:
            return True
        return feasible(self.family, self.types, must=must, may=may, count=self.keep)

    def quality(self, layers: Any, *, changed: int | None = None) -> Step:
        """Title loss and NDCG@10 of ``layers`` on the ranking probe."""
        self.rank.cache.pin(layers)
        ll = self.rank.loglik(layers)
        step = Step(layers=sorted(layers), val_loss=target_nll(ll), ndcg10=ndcg_at(ll), changed=changed)
        if self.full is not None and self.full.ndcg10 > self.chance:
            step.retained = (step.ndcg10 - self.chance) / (self.full.ndcg10 - self.chance)
        if self.progress:
            self.progress(f"{len(step.layers)} layers: val loss {step.val_loss:.4f}, NDCG@10 {step.ndcg10:.4f}")
        return step

    def enough(self, step: Step) -> bool:
        """Whether ``step`` meets the target (``keep`` layers, or ``min_retained`` reached)."""
        if self.keep is not None:
            return len(step.layers) == self.keep
        return step.retained is not None and step.retained >= self.min_retained and self.fits(step.layers)

    def best_trial(self, trials: dict[int, tuple[int, ...]]) -> int:
        """The key of the subset with the lowest search loss (candidates in layer order)."""
        losses = {k: self.loss.loss(layers) for k, layers in sorted(trials.items())}
        return min(losses, key=lambda k: (losses[k], k))


STRATEGIES: dict[str, Callable[[SearchContext], list[Step]]] = {}
NEEDS_SCORES = {"ranked"}


def strategy(name: str) -> Callable[[Callable[[SearchContext], list[Step]]], Callable[[SearchContext], list[Step]]]:
    """Decorator: make a strategy available as ``--strategy name``."""

    def wrap(fn: Callable[[SearchContext], list[Step]]) -> Callable[[SearchContext], list[Step]]:
        STRATEGIES[name] = fn
        return fn

    return wrap


def _unreached(ctx: SearchContext) -> SelectionError:
    return SelectionError(f"no subset of fewer than {ctx.num_layers} layers keeps {ctx.min_retained:.0%} of the full model's NDCG@10 lift on validation",
                          hint="lower --min-retained or use --keep K")


@strategy("ranked")
def ranked(ctx: SearchContext) -> list[Step]:
    """Add layers in fused-importance order, evaluating after each addition.

    A layer that would leave no pattern-matching set of ``keep`` layers is passed over.
    """
    steps: list[Step] = []
    kept: list[int] = []
    for layer in ctx.order:
        if len(kept) == ctx.num_layers - 1:
            break
        rest = set(range(ctx.num_layers)) - {*kept, layer}
        if not ctx.completable([*kept, layer], rest):
            continue
        kept.append(layer)
        steps.append(ctx.quality(kept, changed=layer))
        if ctx.enough(steps[-1]):
            return steps
    raise _unreached(ctx)


@strategy("backward")
def backward(ctx: SearchContext) -> list[Step]:
    """From all layers, remove the one whose removal raises the title loss least, re-evaluating each time."""
    kept, steps = tuple(range(ctx.num_layers)), []
    while len(kept) > 1:
        ctx.loss.cache.pin(kept)
        trials = {layer: tuple(x for x in kept if x != layer) for layer in kept}
        drop = ctx.best_trial({layer: rest for layer, rest in trials.items() if ctx.completable((), rest)})
        step = ctx.quality(tuple(x for x in kept if x != drop), changed=drop)
        if ctx.min_retained is not None and not ctx.enough(step):
            break
        kept = tuple(step.layers)
        steps.append(step)
        if ctx.keep is not None and ctx.enough(step):
            break
    while steps and not ctx.fits(steps[-1].layers):  # --min-retained: end on the smallest set that follows the pattern
        steps.pop()
    if not steps:
        raise _unreached(ctx)
    return steps


@strategy("forward")
def forward(ctx: SearchContext) -> list[Step]:
    """From no layer, add the one that lowers the title loss most, re-evaluating each time."""
    kept: tuple[int, ...] = ()
    steps: list[Step] = []
    while len(kept) < ctx.num_layers - 1:
        ctx.loss.cache.pin(kept)
        others = [layer for layer in range(ctx.num_layers) if layer not in kept]
        add = ctx.best_trial({layer: tuple(sorted(kept + (layer,))) for layer in others
                              if ctx.completable((*kept, layer), set(others) - {layer})})
        kept = tuple(sorted(kept + (add,)))
        steps.append(ctx.quality(kept, changed=add))
        if ctx.enough(steps[-1]):
            return steps
    raise _unreached(ctx)


@dataclass(frozen=True)
class SelectResult:
    """The kept layers, every step's quality, the full model's, and where they are written."""

    model: str
    num_layers: int
    kept: list[int]
    strategy: str
    steps: list[Step]
    full: Step
    chance: float
    cache: dict[str, dict[str, int]]
    scores: dict[str, Any] | None
    path: Path
    png: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SELECTION_FORMAT, "model": self.model, "num_layers": self.num_layers, "kept": self.kept, "strategy": self.strategy,
            "steps": [asdict(s) for s in self.steps], "full": asdict(self.full), "chance_ndcg10": self.chance, "scores": self.scores,
            "cache": self.cache, **self.extra,
        }


def check_target(*, keep: int | None, min_retained: float | None, num_layers: int | None = None) -> None:
    """Exactly one of ``keep`` (1 <= keep < num_layers) and ``min_retained`` (0 < r <= 1)."""
    if (keep is None) == (min_retained is None):
        raise UsageError("give either --keep K or --min-retained R (exactly one)", hint="e.g. --keep 10")
    if keep is not None and keep < 1:
        raise UsageError(f"--keep must be at least 1, got {keep}", hint="give the number of layers to keep")
    if keep is not None and num_layers is not None and keep >= num_layers:
        raise UsageError(f"--keep {keep} keeps every layer: the model has {num_layers}", hint=f"give a number from 1 to {num_layers - 1}")
    if min_retained is not None and not 0 < min_retained <= 1:
        raise UsageError(f"--min-retained must be in (0, 1], got {min_retained}", hint="e.g. --min-retained 0.95")


def _locate(config: SelectConfig) -> tuple[str, RunLayout, dict[str, Any] | None]:
    """``(model reference, run layout, scores or None)`` from a run directory or a model."""
    source = Path(config.source)
    if source.is_dir() and not (source / "config.json").is_file():
        layout = RunLayout(source)
        if not layout.scores.is_file():
            raise RunError(f"run directory {source} has no {layout.scores.name}", hint="run `ollama-slim score` into it first, or pass a model")
        scores = read_scores(layout.scores)
        return str(scores.get("model") or config.source), layout, scores
    layout = RunLayout(Path(config.run_dir) if config.run_dir else default_run_dir(config.source))
    scores = read_scores(layout.scores, model=config.source) if layout.scores.is_file() else None
    return config.source, layout, scores


def _ensure_scores(config: SelectConfig, model: str, layout: RunLayout, scores: dict | None, data: str) -> dict | None:
    """The scores ``ranked`` needs: those found, or computed now into the run directory."""
    if scores is not None or config.strategy not in NEEDS_SCORES:
        return scores
    score_layers(ScoreConfig(model=model, data=data, methods=config.methods, calib_users=config.calib_users, run_dir=layout.root, hf=config.hf,
                             dtype=config.dtype, device_map=config.device_map, seed=config.seed, batch_size=config.batch_size, cache_gb=config.cache_gb,
                             prompt=config.prompt))
    return read_scores(layout.scores, model=model)


def _search_context(config: SelectConfig, net: Any, tokenizer: Any, data: str, num_layers: int, order: list[int] | None, progress: Progress | None) -> SearchContext:
    """Validation probes (title loss; ranking over 1 + negatives candidates) and the target."""
    if config.val_users <= 0:
        raise UsageError(f"--val-users must be positive, got {config.val_users}")
    dtype, runner, budget = torch_dtype(config.dtype), LayerRunner(net), config.cache_gb * 1e9 / 2
    titles, ranking = [], []  # every data set's validation rows: the target alone, and 1 + negatives candidates
    for name in (data, *config.also_data):
        dataset = load_dataset(name)
        items = probe_examples(dataset, split="valid", users=config.val_users, seed=config.seed, history=config.prompt.history)
        titles += probe_rows(tokenizer, dataset, items, prompt=config.prompt)
        ranking += probe_rows(tokenizer, dataset, items, sampler=CandidateSampler(dataset, negatives=config.negatives, seed=config.seed), prompt=config.prompt)
    loss = SubsetEvaluator(runner, pack_probe(tokenizer, titles, batch_size=config.batch_size, dtype=dtype), max_bytes=budget)
    rank = SubsetEvaluator(runner, pack_probe(tokenizer, ranking, batch_size=config.batch_size, dtype=dtype), max_bytes=budget)
    fam = family_of(net)
    types = original_types(fam, net.config)
    if config.keep is not None and not feasible(fam, types, must=(), may=range(num_layers), count=config.keep):
        raise SelectionError(f"no {config.keep} layers of this {fam.name} model follow llama.cpp's layer-type pattern", hint="choose another --keep")
    return SearchContext(num_layers=num_layers, loss=loss, rank=rank, keep=config.keep, min_retained=config.min_retained, order=order,
                         chance=random_ndcg(config.negatives + 1), progress=progress, family=fam if types else None, types=types)


def select_layers(config: SelectConfig, *, progress: Progress | None = None) -> SelectResult:
    """Run the strategy of ``config`` on the validation split; write selection.json and .png."""
    if config.strategy not in STRATEGIES:
        raise UsageError(f"unknown selection strategy {config.strategy!r}", hint=f"choose from {', '.join(STRATEGIES)}")
    check_target(keep=config.keep, min_retained=config.min_retained)
    model, layout, scores = _locate(config)
    data = config.data or (scores or {}).get("data")
    if not data:
        raise UsageError("no data set to select on", hint="pass --data DIR (or select from a run directory that `score` wrote)")
    num_layers = resolve(model, hf=config.hf).num_layers
    check_target(keep=config.keep, min_retained=config.min_retained, num_layers=num_layers)
    if scores is not None:
        read_scores(layout.scores, model=model, num_layers=num_layers)
    scores = _ensure_scores(config, model, layout, scores, data)
    net, tokenizer, _ = open_model(model, hf=config.hf, dtype=config.dtype, device_map=config.device_map)
    ctx = _search_context(config, net, tokenizer, data, num_layers, scores["order"] if scores else None, progress)
    ctx.full = ctx.quality(range(num_layers))
    if config.min_retained is not None and ctx.full.retained is None:
        raise SelectionError(f"the full model's validation NDCG@10 ({ctx.full.ndcg10:.3f}) is not above chance ({ctx.chance:.3f}), so --min-retained cannot be measured",
                             hint="use --keep K, or more --val-users")
    steps = STRATEGIES[config.strategy](ctx)
    used = None if scores is None else {"file": str(layout.scores), "methods": list(scores.get("methods", {})), "fused": scores["fused"], "order": scores["order"]}
    result = SelectResult(model=model, num_layers=num_layers, kept=steps[-1].layers, strategy=config.strategy, steps=steps, full=ctx.full, chance=ctx.chance,
                          cache={"search": ctx.loss.cache.stats(), "quality": ctx.rank.cache.stats()}, scores=used, path=layout.selection, png=layout.selection_png,
                          extra={"data": data, "also_data": list(config.also_data), "split": "valid", "val_users": config.val_users, "target": {"keep": config.keep, "min_retained": config.min_retained}})
    paths.write_json(layout.selection, result.to_json())
    plot_selection(layout.selection_png, steps=[asdict(s) for s in steps], full=asdict(ctx.full), chance=ctx.chance, title=f"{config.strategy} selection: {model}")
    return result
