"""Recommendation evaluation (design §3): rank each user's target among 1 + N candidates.

``evaluate(model, EvalConfig(...))`` draws users and candidates with fixed seeds (the same
for every model), scores each candidate title by its length-normalised log-likelihood
after a prompt listing the user's history (one prompt pass per user, through a
registered scorer: ``transformers`` or ``llama-cpp``), and reports NDCG@10, MRR and
HR@1/5/10 with 95% bootstrap intervals, beside the random baseline (exact) and item
popularity in train (on the same candidates). Ties follow :mod:`ollama_slim.recsys.metrics`.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ollama_slim import paths
from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.recsys.data import CandidateSampler, Dataset, Example, examples, load_dataset, select_users, train_popularity
from ollama_slim.errors import DataError, UsageError
from ollama_slim.recsys.metrics import METRICS, Interval, bootstrap_interval, paired_bootstrap_diff, per_user_metrics, random_baseline, summarise
from ollama_slim.recsys.prompt import TASK_FORMATS, ChatPrompt, PromptConfig, encode_items
from ollama_slim.recsys.scorers import Scorer, ScorerOptions, backend_for, make_scorer
from ollama_slim.ollama.modelfile import chat_prompt_of

EVAL_SPLITS = ("valid", "test")
REGIMES = ("uniform", "popularity")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate on. ``users``: how many (seeded draw; ``None`` = all); ``negatives``
    per target; ``history`` titles in the prompt; candidate titles cut to ``title_tokens``;
    ``batch`` candidates per forward pass; ``resamples`` for the bootstrap intervals;
    ``threads``: CPU threads of the scorer (``None``: the backend's default)."""

    data: str
    split: str = "test"
    users: int | None = 200
    negatives: int = 19
    regime: str = "uniform"
    history: int = 10
    seed: int = 0
    title_tokens: int = 16
    title_words: int = 12
    batch: int = 32
    backend: str = "auto"
    dtype: str = "float32"
    resamples: int = 1000
    threads: int | None = None
    task_format: str = "completion"  # or "chat": the prompt as `ollama run` renders it (recsys.prompt)
    run_dir: Path | None = None  # a run: the result also goes to its eval_<label>.json
    label: str = "model"

    def __post_init__(self) -> None:
        checks = [
            (self.split in EVAL_SPLITS, f"--split {self.split!r} is not one of {', '.join(EVAL_SPLITS)}", "evaluate on valid (model selection) or test (reporting)"),
            (self.regime in REGIMES, f"--regime {self.regime!r} is not one of {', '.join(REGIMES)}", "use uniform or popularity"),
            (self.users is None or self.users > 0, f"--users must be positive, got {self.users}", "pass a positive number of users"),
            (self.negatives > 0, f"--negatives must be positive, got {self.negatives}", "19 is the design default"),
            (self.history > 0, f"--history must be positive, got {self.history}", "10 is the design default"),
            (self.title_tokens > 0 and self.title_words > 0, "title lengths must be positive", "use --title-tokens 16"),
            (self.batch > 0 and self.resamples > 0, "batch and resamples must be positive", "keep the defaults"),
            (self.threads is None or self.threads > 0, f"--threads must be positive, got {self.threads}", "omit it to use every core"),
            (self.task_format in TASK_FORMATS, f"--task-format {self.task_format!r} is not one of {', '.join(TASK_FORMATS)}", "use completion or chat"),
            (bool(_LABEL.match(self.label)), f"--label {self.label!r} cannot be part of a file name", "use letters, digits, '.', '_' or '-', e.g. --label slim"),
        ]
        for ok, message, hint in checks:
            if not ok:
                raise UsageError(message, hint=hint)

    def prompt_config(self, chat: ChatPrompt | None = None) -> PromptConfig:
        """The prompt of this evaluation; the chat format needs the model's ``chat`` format."""
        chat = chat if self.task_format == "chat" else None
        if self.task_format == "chat" and chat is None:
            raise UsageError("--task-format chat needs the model's chat template", hint="evaluate a model with a chat template, or use --task-format completion")
        return PromptConfig(history=self.history, title_words=self.title_words, title_tokens=self.title_tokens, chat=chat)

    def scorer_options(self) -> ScorerOptions:
        return ScorerOptions(batch=self.batch, dtype=self.dtype, threads=self.threads)

    def settings(self) -> dict[str, Any]:
        """What was evaluated on (JSON-able), without where the result is recorded."""
        return {k: v for k, v in asdict(self).items() if k not in ("run_dir", "label")}


@dataclass(frozen=True)
class Case:
    """One user's example and its candidates (target first, then the negatives)."""

    example: Example
    candidates: tuple[int, ...]


def prepare_cases(dataset: Dataset, config: EvalConfig) -> list[Case]:
    """The seeded users of ``config`` and their candidates: identical for every model."""
    if config.negatives >= len(dataset.items):
        raise DataError(f"--negatives {config.negatives} needs more items than the {len(dataset.items)} of data set {dataset.name}", hint="lower --negatives")
    users = select_users(dataset, config.users, seed=config.seed)
    sampler = CandidateSampler(dataset, negatives=config.negatives, regime=config.regime, seed=config.seed)
    return [Case(ex, sampler(ex)) for ex in examples(dataset, split=config.split, history=config.history, users=users)]


def encode_case(tokenizer: Any, dataset: Dataset, case: Case, prompt: PromptConfig) -> tuple[list[int], list[list[int]]]:
    """``(prompt_ids [P], candidate_ids [C][<= title_tokens])`` of one case."""
    return encode_items(tokenizer, dataset, case.example, case.candidates, prompt)


def score_cases(scorer: Scorer, dataset: Dataset, cases: list[Case], config: EvalConfig, *, layers: list[int] | None = None, progress: Progress | None = None,
                prompt: PromptConfig | None = None) -> tuple[np.ndarray, int]:
    """``(scores [U, C], tokens)``: each case's candidate scores (target in column 0) and
    the number of tokens run (prompt once + every candidate token)."""
    prompt_config = prompt if prompt is not None else config.prompt_config()
    rows, tokens = [], 0
    with scorer.using_layers(layers):
        for done, case in enumerate(cases, start=1):
            prompt, candidates = encode_case(scorer.tokenizer, dataset, case, prompt_config)
            rows.append(np.asarray(scorer.score(prompt, candidates), dtype=np.float64))
            tokens += len(prompt) + sum(len(c) for c in candidates)
            if progress is not None:
                progress(done, len(cases))
    return np.stack(rows) if rows else np.zeros((0, config.negatives + 1)), tokens


def popularity_scores(dataset: Dataset, cases: list[Case]) -> np.ndarray:
    """Train-split interaction counts of each case's candidates: [U, C]."""
    counts = train_popularity(dataset)
    return np.array([[counts.get(item, 0) for item in case.candidates] for case in cases], dtype=np.float64)


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one model on one set of users and candidates, with both baselines."""

    model: str
    backend: str
    config: EvalConfig
    data: dict[str, Any]
    users: list[int]
    candidates: int
    metrics: dict[str, Interval]
    random: dict[str, float]
    popularity: dict[str, Interval]
    per_user: dict[str, np.ndarray]  # model's per-user values [U] ("rank" and each metric)
    popularity_per_user: dict[str, np.ndarray]
    layers: list[int] | None = None
    tokens: int = 0
    seconds: float = field(default=0.0, compare=False)

    def to_json(self, *, per_user: bool = True) -> dict[str, Any]:
        """A JSON-able dict; timing is left out so reruns give identical output."""
        out = {
            "model": self.model, "backend": self.backend, "layers": self.layers, "config": self.config.settings(), "data": self.data,
            "users": len(self.users), "candidates": self.candidates, "tokens": self.tokens,
            "metrics": {k: v.to_json() for k, v in self.metrics.items()},
            "baselines": {"random": dict(self.random), "popularity": {k: v.to_json() for k, v in self.popularity.items()}},
        }
        if per_user:
            out["per_user"] = {"user": list(self.users), **{k: v.tolist() for k, v in self.per_user.items()}}
        return out


def evaluate(model: str | Scorer, config: EvalConfig, *, layers: list[int] | None = None, progress: Progress | None = None, dataset: Dataset | None = None) -> EvalResult:
    """Evaluate ``model`` (a tag, HF directory or ``.gguf`` file, or a ready :class:`Scorer`).

    ``layers``: run only these decoder layers (sorted indices), without rebuilding the
    model (transformers backend). ``progress(done, total)`` is called after each user.
    ``dataset``: an already loaded data set (else ``config.data`` is loaded).
    """
    dataset = dataset if dataset is not None else load_dataset(config.data)
    cases = prepare_cases(dataset, config)
    if isinstance(model, str):
        name, backend = model, backend_for(model, config.backend)
        scorer = make_scorer(model, backend=backend, options=config.scorer_options())
    else:
        name, backend, scorer = getattr(model, "name", "model"), getattr(model, "name", "custom"), model
    chat = chat_prompt_of(model, seed=config.seed) if config.task_format == "chat" and isinstance(model, str) else getattr(scorer, "chat", None)
    prompt = config.prompt_config(chat)
    start = time.perf_counter()
    scores, tokens = score_cases(scorer, dataset, cases, config, layers=layers, progress=progress, prompt=prompt)
    seconds = time.perf_counter() - start
    values = per_user_metrics(scores)
    pop_values = per_user_metrics(popularity_scores(dataset, cases))
    result = EvalResult(
        model=name, backend=backend, config=config, data=dataset.summary(), users=[c.example.user for c in cases],
        candidates=config.negatives + 1, metrics=summarise(values, resamples=config.resamples, seed=config.seed),
        random=random_baseline(config.negatives + 1), popularity=summarise(pop_values, resamples=config.resamples, seed=config.seed),
        per_user=values, popularity_per_user=pop_values, layers=list(layers) if layers is not None else None, tokens=tokens, seconds=seconds,
    )
    if config.run_dir is not None:
        paths.write_json(RunLayout(Path(config.run_dir)).eval_record(config.label), result.to_json())
    return result


__all__ = [
    "METRICS", "Case", "EvalConfig", "EvalResult", "Interval", "bootstrap_interval", "encode_case", "evaluate", "paired_bootstrap_diff",
    "popularity_scores", "prepare_cases", "random_baseline", "score_cases",
]
