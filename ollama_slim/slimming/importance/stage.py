"""The ``score`` stage: one importance score per layer per method, and a fused ranking.

``score_layers(ScoreConfig(...))`` loads the model, builds the calibration probe from
the train split (one example per calibration user: the last train item), runs each
requested scorer and writes ``scores.json`` and ``scores.png`` to the run directory.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ollama_slim import paths
from ollama_slim.recsys.data import Dataset, load_dataset
from ollama_slim.errors import SelectionError, UsageError
from ollama_slim.models.families import decoder_layers
from ollama_slim.models.lm import LayerRunner
from ollama_slim.models.modeling import LoadOptions, load, torch_dtype
from ollama_slim.recsys.prompt import PromptConfig, encode_example
from ollama_slim.pipeline.layout import RUNS_DIR, RunLayout
from ollama_slim.slimming.importance.methods import METHODS, MethodScores, ScoringContext, mean_rank
from ollama_slim.slimming.importance.plots import plot_scores
from ollama_slim.slimming.importance.probes import SubsetEvaluator, build_probe, probe_examples

SCORES_FORMAT = 1
DEFAULT_METHODS = ("fisher", "gradnorm", "block-influence", "angular", "ablation")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ScoreConfig:
    """What to score: a model reference, a data set, the methods and their budgets."""

    model: str
    data: str
    methods: tuple[str, ...] = DEFAULT_METHODS
    calib_users: int = 64
    shapley_permutations: int = 8
    run_dir: Path | None = None
    hf: str | None = None
    dtype: str = "float32"
    device_map: str | None = None
    seed: int = 0
    batch_size: int = 8
    cache_gb: float = 2.0
    prompt: PromptConfig = PromptConfig()


@dataclass(frozen=True)
class ScoreResult:
    """Scores per method (layers in model order), the fused ranking and where they are."""

    model: str
    num_layers: int
    methods: dict[str, MethodScores]
    seconds: dict[str, float]
    fused: list[float]
    order: list[int]  # layers, most important first (fused)
    cache: dict[str, int]
    path: Path
    png: Path

    def to_json(self, *, data: str, config: ScoreConfig) -> dict[str, Any]:
        methods = {k: {"scores": v.scores, "stderr": v.stderr, "seconds": self.seconds[k], **v.extra} for k, v in self.methods.items()}
        return {
            "format": SCORES_FORMAT, "model": self.model, "num_layers": self.num_layers, "data": data, "split": "train",
            "calib_users": config.calib_users, "seed": config.seed, "dtype": config.dtype, "methods": methods,
            "fusion": "mean-rank", "fused": self.fused, "order": self.order, "cache": self.cache,
        }


def default_run_dir(model: str) -> Path:
    """``runs/<model>`` with the reference made a file name (``smollm2:135m`` -> ``runs/smollm2-135m``)."""
    return RUNS_DIR / re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name if Path(model).is_dir() else model).strip("-")


def check_methods(methods: tuple[str, ...]) -> tuple[str, ...]:
    """The requested methods, each registered, none twice; a one-line error otherwise."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown importance method {unknown[0]!r}", hint=f"choose from {', '.join(METHODS)}")
    if not methods:
        raise UsageError("no importance method given", hint=f"choose from {', '.join(METHODS)}")
    return tuple(dict.fromkeys(methods))


def open_model(model: str, *, hf: str | None, dtype: str, device_map: str | None) -> tuple[Any, Any, int]:
    """``(model, tokenizer, num_layers)`` of a reference, resolved and loaded (eval mode)."""
    from ollama_slim.models.sources import resolve

    torch_dtype(dtype)  # a bad --dtype fails before the load
    resolved = resolve(model, hf=hf)
    net, tokenizer = load(resolved.model_dir, LoadOptions(dtype=dtype, device_map=device_map))
    return net, tokenizer, len(decoder_layers(net))


def calibration(config: ScoreConfig, net: Any, tokenizer: Any, dataset: Dataset, progress: Progress | None) -> ScoringContext:
    """The scoring context: train-split pairs and their packed probe (never validation or test)."""
    items = probe_examples(dataset, split="train", users=config.calib_users, seed=config.seed, history=config.prompt.history)
    pairs = [encode_example(tokenizer, dataset, e, config.prompt) for e in items]
    probe = build_probe(tokenizer, dataset, items, prompt=config.prompt, batch_size=config.batch_size, dtype=torch_dtype(config.dtype))
    evaluator = SubsetEvaluator(LayerRunner(net), probe, max_bytes=config.cache_gb * 1e9)
    return ScoringContext(model=net, pairs=pairs, evaluator=evaluator, tokenizer=tokenizer, pad_id=tokenizer.pad_token_id or 0, shapley_permutations=config.shapley_permutations,
                          batch_size=config.batch_size, seed=config.seed, progress=progress)


def score_layers(config: ScoreConfig, *, progress: Progress | None = None) -> ScoreResult:
    """Run each method of ``config`` on the calibration probe; write scores.json and scores.png."""
    methods = check_methods(config.methods)
    if config.calib_users <= 0:
        raise UsageError(f"--calib-users must be positive, got {config.calib_users}", hint="e.g. --calib-users 64")
    if "shapley" in methods and config.shapley_permutations < 1:
        raise UsageError(f"--shapley-permutations must be at least 1, got {config.shapley_permutations}", hint="e.g. --shapley-permutations 8")
    layout = RunLayout(Path(config.run_dir) if config.run_dir else default_run_dir(config.model))
    dataset = load_dataset(config.data)
    net, tokenizer, num_layers = open_model(config.model, hf=config.hf, dtype=config.dtype, device_map=config.device_map)
    ctx = calibration(config, net, tokenizer, dataset, progress)
    results, seconds = {}, {}
    for name in methods:
        if progress:
            progress(f"scoring: {name}")
        start = time.perf_counter()
        results[name] = METHODS[name].fn(ctx)
        seconds[name] = round(time.perf_counter() - start, 2)
    fused = mean_rank({k: v.scores for k, v in results.items()})
    order = sorted(range(num_layers), key=lambda i: (-fused[i], i))
    result = ScoreResult(model=config.model, num_layers=num_layers, methods=results, seconds=seconds, fused=fused, order=order,
                         cache=ctx.evaluator.cache.stats(), path=layout.scores, png=layout.scores_png)
    paths.write_json(layout.scores, result.to_json(data=str(config.data), config=config))
    rows = {k: v.scores for k, v in results.items()} | {"fused": fused}
    plot_scores(layout.scores_png, rows=rows, title=f"layer importance: {config.model} ({config.calib_users} calibration users)")
    return result


def read_scores(path: Path, *, model: str | None = None, num_layers: int | None = None) -> dict[str, Any]:
    """A scores file, checked against the model it is used with."""
    try:
        data = paths.read_json(path)
    except FileNotFoundError:
        raise UsageError(f"scores file {path} does not exist", hint="run `ollama-slim score` first") from None
    except ValueError as err:
        raise SelectionError(f"scores file {path} is not valid JSON ({err})", hint="rerun `ollama-slim score`") from None
    if not isinstance(data, dict) or not isinstance(data.get("fused"), list) or not isinstance(data.get("num_layers"), int):
        raise SelectionError(f"scores file {path} has no 'fused' scores or 'num_layers'", hint="rerun `ollama-slim score`")
    if num_layers is not None and (data["num_layers"] != num_layers or len(data["fused"]) != num_layers):
        raise SelectionError(f"scores file {path} is for a model with {data['num_layers']} layers ({data.get('model', '?')}), but {model} has {num_layers}",
                             hint="score this model first, or select for the model the file was made for")
    if model is not None and data.get("model") not in (None, model):
        raise SelectionError(f"scores file {path} was made for {data['model']}, not {model}", hint="score this model first (`ollama-slim score`) or use another --run-dir")
    return data
