"""``prune``'s options: :class:`PruneConfig`, and the command line that reproduces one.

No stage code here: the stage table (:mod:`ollama_slim.pipeline.stages`), the runner and
the report all read this module, and it reads none of them.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ollama_slim.models.tags import default_slim_name, parse_name
from ollama_slim.pipeline.layout import RUNS_DIR


TEACHERS = ("none", "original")  # what the slim model's healing distils from

# Each task format's healing recipe, the one its benchmark measured best (README, issue 11).
# chat (what `ollama run` sends, the default): every weight healed on the target and the user's
# next 7 titles as answers (8x the titles a step) at a low rate; the original ranks candidates
# near chance in the chat prompt, so it is no teacher there. Asked in chat (60 MovieLens users),
# 0.98 of the answers are catalogue titles, against none after completion-format healing.
# completion (a raw listing prompt): LoRA distilled from the original (its ranking of 1+4
# candidates of both regimes, its hidden states): retained on its lift 0.49 -> 1.00.
RECIPES: dict[str, dict[str, object]] = {
    "chat": {"steps": 200, "lr": 1e-4, "rank_negatives": 0, "answers": 8, "full": True, "teacher": "none"},
    "completion": {"steps": 150, "lr": 5e-4, "rank_negatives": 4, "answers": 1, "full": False, "teacher": "original"},
}


@dataclass(frozen=True)
class PruneConfig:
    """Every option of ``prune``; defaults are the choices the benchmarks measured best."""

    model: str
    keep: int | None  # or, with min_retained, as few as keep that share of the full model's validation lift
    name: str | None = None
    data: str = "movielens-100k"
    methods: tuple[str, ...] = ("ablation",)  # tools/bench_select.py: 10.03 val loss vs 10.95 fused with block influence + angular
    strategy: str = "ranked"
    select_data: tuple[str, ...] = ()  # more data sets whose validation users the selection measures too, and whose train prompts the bridges are fitted on (layers for every domain)
    bridge: str = "mlp-fold"
    own_text: bool = False  # the bridges fitted on the original's own sampled text too (BuildConfig.own_text)
    steps: int | None = None  # None: the task format's recipe (RECIPES), as for lr, rank_negatives, answers, full, teacher
    batch_size: int = 8
    lora_rank: int = 16
    lr: float | None = None
    rank_negatives: int | None = None
    rank_weight: float = 0.5
    rank_regimes: tuple[str, ...] = ("uniform", "popularity")
    answers: int | None = None  # each prompt also trained on the user's next answers-1 train items (FinetuneConfig.answers)
    popularity_debias: float = 0.0  # answers weighted by train count ** -popularity_debias (FinetuneConfig)
    cf_answers: int = 0  # answers of an item-to-item recommender for each prompt's history (FinetuneConfig.cf_answers)
    cf_share: float = 0.5  # the share of the title loss those answers carry
    cf_vocab: int = 0  # those answers from the cf_vocab most taken train items (0: every item)
    full: bool | None = None  # heal every weight instead of LoRA adapters
    # With a teacher, healing distils from the untouched original: its distribution over the target and
    # negatives at ``distill_temperature`` (listwise KD) and its hidden state at the end of each kept layer's gap.
    teacher: str | None = None  # "original" or "none"
    listwise_weight: float = 2.0
    distill_temperature: float = 2.0
    align_weight: float = 0.5
    # ... and its per-token KL (with the alignment) on text it wrote itself: what the task's prompts do not carry
    # (another domain). 0: off; the cross-domain runs of README "Cross-domain" measured 12 on 1,024 texts.
    general_weight: float = 0.0
    general_texts: int = 1024
    checkpoint_every: int = 25
    outtype: str = "q8_0"
    register: bool = True
    run_dir: Path | None = None
    from_stage: str | None = None
    hf: str | None = None
    calib_users: int = 32
    val_users: int = 64
    eval_users: int = 100
    history: int = 5
    title_words: int = 10
    min_retained: float | None = None  # the selection stop rule: remove layers while validation NDCG@10 lift stays above this share
    task_format: str = "chat"  # score, select, heal and rank in the prompt `ollama run` sends (recsys.prompt); or "completion"
    reference: bool | None = None  # None: on when a GPU makes the budget affordable
    cross_domain: str | None = None
    host: str | None = None
    force: bool = False
    dtype: str = "float32"
    device_map: str | None = None
    bench_repeats: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        """Healing options left at None take the task format's recipe (:data:`RECIPES`)."""
        for key, value in RECIPES.get(self.task_format, {}).items():  # an unknown format: check_config says so
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)

    @property
    def slim_name(self) -> str:
        """``--name``, else ``<family>-slim`` (``qwen2.5:0.5b`` -> ``qwen2.5-slim``)."""
        if self.name:
            return self.name
        if Path(self.model).exists():
            return f"{Path(self.model).stem.lower()}-slim"
        return default_slim_name(parse_name(self.model))

    def root(self) -> Path:
        if self.run_dir is not None:
            return Path(self.run_dir)
        return RUNS_DIR / self.slim_name

    def distills(self) -> bool:
        """Whether the slim model's healing has a teacher term on (``teacher`` and a weight)."""
        return self.teacher != "none" and self.steps > 0 and (self.listwise_weight > 0 or self.align_weight > 0 or self.general_weight > 0)

    def use_reference(self) -> bool:
        if self.reference is not None:
            return self.reference
        import torch

        return torch.cuda.is_available()

    def wants_reference(self) -> bool:
        """Whether the run fine-tunes the full model too (only when the slim one is healed)."""
        return self.use_reference() and self.steps > 0

    def eval_targets(self) -> dict[str, tuple[str, str]]:
        """label -> (which model, data set): original zero-shot, slim, the shipped GGUF, reference, cross-domain."""
        targets = {"original": ("original", self.data), "slim": ("slim", self.data), "shipped": ("shipped", self.data)}
        if self.wants_reference():
            targets["reference"] = ("reference", self.data)
        if self.cross_domain:
            targets |= {"cross_original": ("original", self.cross_domain), "cross_slim": ("slim", self.cross_domain)}
        return targets


def read_record(run: Path, *, hint: str) -> dict[str, Any]:
    """The ``config`` a run's ``prune.json`` recorded (empty if it has none); an unreadable record is a
    one-line :class:`UsageError` (with ``hint``)."""
    from ollama_slim import paths
    from ollama_slim.pipeline.layout import RunLayout

    record = RunLayout(Path(run)).prune_record
    try:
        config = paths.read_json(record).get("config", {})
        if not isinstance(config, dict):
            raise TypeError("its config is not a mapping")
        return config
    except (OSError, ValueError, AttributeError, TypeError) as err:
        raise _unreadable(record, err, hint) from None


def read_run_config(run: Path, *, hint: str) -> PruneConfig:
    """The :class:`PruneConfig` of ``run`` as its ``prune.json`` recorded it (:func:`read_record` then
    :func:`recorded_config`); a record without the options every run has (model, keep) is the same one line."""
    from ollama_slim.pipeline.layout import RunLayout

    layout = RunLayout(Path(run))
    try:
        return recorded_config(read_record(layout.root, hint=hint), run_dir=layout.root)
    except TypeError as err:
        raise _unreadable(layout.prune_record, err, hint) from None


def _unreadable(record: Path, err: Exception, hint: str):
    """The one-line error for a ``prune.json`` that cannot give a run's settings."""
    from ollama_slim.errors import UsageError

    return UsageError(f"cannot read the run's settings from {record}: {err}", hint=hint)


def recorded_config(record: dict[str, Any], *, run_dir: Path) -> PruneConfig:
    """The :class:`PruneConfig` a run's ``prune.json`` recorded (its ``config``), placed at ``run_dir``
    (a run directory may have moved). Fields the record lacks take their defaults, except the task
    format: a run recorded before formats existed was healed in the completion prompt."""
    known = {f.name for f in fields(PruneConfig)}
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in record.items() if key in known}
    values.setdefault("task_format", "completion")
    return PruneConfig(**{**values, "run_dir": Path(run_dir), "from_stage": None, "force": False})


def command_line(config: PruneConfig) -> str:
    """The ``ollama-slim prune`` command that reproduces ``config``."""
    defaults = asdict(PruneConfig(model=config.model, keep=config.keep, task_format=config.task_format))  # its format's recipe
    defaults["task_format"] = PruneConfig(model=config.model, keep=config.keep).task_format
    parts = ["ollama-slim", "prune", config.model, *(["--keep", str(config.keep)] if config.keep is not None else [])]
    for key, value in asdict(config).items():
        if key in ("model", "keep", "from_stage", "force") or value == defaults[key]:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            parts += [flag, ",".join(value) if isinstance(value, tuple) else str(value)]
    return shlex.join(parts)
