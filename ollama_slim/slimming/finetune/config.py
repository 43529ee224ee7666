"""What a fine-tuning run is: its settings, its progress reports and its result, and where it reads and writes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ollama_slim.errors import UsageError
from ollama_slim.recsys.prompt import TASK_FORMATS


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run. ``steps`` or ``epochs`` (over the train examples), not both.

    ``lora_rank`` > 0 trains LoRA adapters (merged at the end); ``full`` trains every
    weight. ``distill_from`` names a teacher with the same tokenizer; ``distill_weight``
    mixes its KL into the loss. ``train_bridges`` adds identity-initialised MLP maps on
    the gaps recorded in the compact model's ``slim.json`` and folds them at the end.
    ``rank_negatives`` > 0 draws that many never-interacted items per example and step
    and mixes a softmax cross-entropy over the 1 + k candidates' length-normalised
    title log-likelihoods into the loss with ``rank_weight``; ``rank_regimes`` draws
    them uniformly and/or by train popularity (one regime per draw, chosen with the
    seed); ``fixed_negatives`` draws them once per example instead of every step.

    Off by default (design §6, issue 11), each added to the loss with its weight:
    ``distill_listwise_weight`` x KL between the teacher's and the student's softmax
    over the candidates' scores at ``distill_temperature``; ``align_weight`` x
    ``align_kind`` distance between each kept layer's output and the teacher's layer
    output it stands for (``align_at``: the layer's original index, or the end of the
    gap after it, which is what the next kept layer reads). ``teacher_cache`` keeps
    the teacher's outputs per example on disk beside the checkpoints. ``general_weight``
    x the teacher's per-token KL (and, when aligning, the alignment) on ``general_texts``
    sequences of ``general_tokens`` tokens the teacher sampled once (general knowledge that
    the task's prompts do not carry; :mod:`~ollama_slim.slimming.finetune.general`).
    ``early_stop_patience`` > 0 measures ``val_measure`` on ``val_users`` validation
    users every ``eval_every`` steps, stops after that many measures without a better
    one, and keeps the best weights; ``val_at_start`` measures once before the first step
    too, so a further stage on a healed model can keep its starting weights when no step
    beats them. ``answers`` > 1 trains each prompt on the target
    and the user's following train items as well, each as an answer to the same prompt
    (packed after it, so more titles are learnt per step for little more compute).
    ``popularity_debias`` > 0 weights each answer's title loss by its item's train count to
    the power ``-popularity_debias`` (normalised to mean 1 per batch): rare answers count
    more, popular ones less. ``cf_answers`` > 0 adds that many answers of an item-to-item
    recommender (:class:`~ollama_slim.recsys.neighbours.ItemNeighbours`) for the prompt's
    history — sequence-level distillation of a personal answer — carrying ``cf_share`` of
    each prompt's title loss; ``cf_vocab`` > 0 has that recommender answer only among the
    ``cf_vocab`` most taken train items, after the ``cf_vocab_skip`` most taken ones.
    """

    model: str
    data: str
    out_dir: Path | None = None
    steps: int | None = None
    epochs: float | None = None
    lora_rank: int = 16
    lora_alpha: float | None = None
    full: bool = False
    distill_from: str | None = None
    distill_hf: str | None = None  # where the teacher's weights are, as ``--hf`` for ``distill_from`` (a directory or repository id)
    distill_weight: float = 0.5
    distill_listwise_weight: float = 0.0
    distill_temperature: float = 1.0
    align_weight: float = 0.0
    align_kind: str = "cosine"
    align_at: str = "kept"
    teacher_cache: bool = False
    general_weight: float = 0.0  # KL to the teacher (and alignment) on text the teacher wrote (finetune.general)
    general_texts: int = 256  # ... that many sequences
    general_tokens: int = 64  # ... of that many tokens each
    rank_negatives: int = 0
    rank_weight: float = 0.5
    rank_regimes: tuple[str, ...] = ("uniform",)
    fixed_negatives: bool = False
    early_stop_patience: int = 0
    eval_every: int = 50
    val_measure: str = "loss"
    val_users: int = 32
    val_negatives: int = 19
    val_at_start: bool = False  # measure before step 1 too: the starting weights compete for the kept ones
    train_bridges: bool = False
    lr: float = 2e-4
    batch_size: int = 8
    warmup: float = 0.05
    checkpoint_every: int = 50
    answers: int = 1  # the target and the user's next answers-1 train items, each trained as an answer to the same prompt
    popularity_debias: float = 0.0  # each answer's title loss weighted by its train count ** -popularity_debias
    cf_answers: int = 0  # answers of an item-to-item recommender for the prompt's history, added after the data's
    cf_share: float = 0.5  # the share of each prompt's title loss the cf_answers carry
    cf_vocab: int = 0  # the cf_answers come from the cf_vocab most taken train items (0: every item)
    cf_vocab_skip: int = 0  # ... after the cf_vocab_skip most taken ones (which popularity-weighted negatives draw most)
    seed: int = 0
    history: int = 5
    title_words: int = 10
    title_tokens: int = 16
    task_format: str = "completion"  # or "chat": train on the prompt as `ollama run` renders it, the answer closed by end-of-turn
    chat: Any = None  # the model's ChatPrompt for the chat format (found by the stage; not a setting)
    users: int | None = None
    holdout_users: int = 0  # left out of training and validation: the users `eval --users N --seed SEED` ranks (users the model never saw)
    mixed_precision: str | None = None  # None: what `accelerate launch` says (no on CPU)
    hf: str | None = None
    force: bool = False
    run_dir: Path | None = None  # a run: the result also goes to its finetune.json (default: ``model``, when it is a run directory)

    def uses_distiller(self) -> bool:
        """Whether the teacher goes beyond the title tokens: listwise KD, alignment or its cache."""
        return self.distill_from is not None and (self.distill_listwise_weight > 0 or self.align_weight > 0 or self.teacher_cache)

    def teacher_dir(self) -> Path:
        """The teacher's weights directory: ``distill_from`` resolved (with ``distill_hf``) like any model."""
        from ollama_slim.models.sources import resolve

        return Path(resolve(self.distill_from, hf=self.distill_hf).model_dir)

    def fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must share with the run that resumes it.

        A setting that only matters with an option which is off is left out (the ranking
        settings without negatives...), and so is every option added later while it is at
        its default, so checkpoints made before they existed still resume.
        """
        skip = {"out_dir", "checkpoint_every", "force", "mixed_precision", "run_dir", "chat"}
        for switch, dependent in _DEPENDENT.items():
            if not getattr(self, switch):
                skip |= {switch, *dependent}
        data = asdict(self)
        skip |= {name for name in _LATER if data[name] == _FIELD_DEFAULTS[name]}
        return {k: v for k, v in data.items() if k not in skip}


# option -> the settings that change nothing while it is off (0 or False)
_DEPENDENT = {
    "rank_negatives": ("rank_weight", "rank_regimes", "fixed_negatives"),
    "distill_listwise_weight": ("distill_temperature",),
    "align_weight": ("align_kind", "align_at"),
    "general_weight": ("general_texts", "general_tokens"),
    "early_stop_patience": ("eval_every", "val_measure", "val_users", "val_negatives"),
    "cf_answers": ("cf_share", "cf_vocab", "cf_vocab_skip"),
}
# options added after checkpoints existed: left out of the fingerprint at their defaults
_LATER = ("distill_hf", "distill_listwise_weight", "distill_temperature", "align_weight", "align_kind", "align_at", "teacher_cache",
          "rank_regimes", "fixed_negatives", "early_stop_patience", "eval_every", "val_measure", "val_users", "val_negatives", "task_format",
          "answers", "popularity_debias", "cf_answers", "cf_share", "cf_vocab", "cf_vocab_skip", "holdout_users", "val_at_start",
          "general_weight", "general_texts", "general_tokens")
_FIELD_DEFAULTS = {f.name: f.default for f in fields(FinetuneConfig)}


@dataclass(frozen=True)
class FinetuneProgress:
    """What the progress callback sees after each optimizer step."""

    step: int
    total: int
    loss: float
    lr: float
    seconds: float
    measured: float | None = None  # the validation measure taken after this step, if one was
    best: tuple[int, float] | None = None  # (step, value) of the best validation measure so far

    def describe(self) -> str:
        """``step 100/400 loss 1.738``, and after a validation measure ``, validation 0.294 (best 0.301 at step 50)``."""
        text = f"step {self.step}/{self.total} loss {self.loss:.3f}"
        if self.measured is not None and self.best is not None:
            text += f", validation {self.measured:.4f} (best {self.best[1]:.4f} at step {self.best[0]})"
        return text


@dataclass(frozen=True)
class FinetuneResult:
    out_dir: Path
    checkpoint_dir: Path
    mode: str
    steps: int
    resumed_from: int
    final_loss: float | None
    trainable_params: int
    train_examples: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    best_step: int | None = None  # with early stopping: the step whose weights were kept
    stopped_early: bool = False
    validation: list[dict[str, float]] = field(default_factory=list)  # {"step", "value"} of each measure
    teacher: dict[str, Any] | None = None  # with a distiller: teacher forwards, cached and computed examples

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out_dir"], data["checkpoint_dir"] = str(self.out_dir), str(self.checkpoint_dir)
        return data

    def validation_text(self) -> str:
        """Each validation measure as ``step: value``, the kept step marked; when later measures
        only equalled the kept one, says so: a tie keeps the earlier weights ("" without measures)."""
        text = ", ".join(f"{v['step']}: {v['value']:.4f}" + (" (kept)" if v["step"] == self.best_step else "") for v in self.validation)
        kept = next((v["value"] for v in self.validation if v["step"] == self.best_step), None)
        tied = [str(v["step"]) for v in self.validation if kept is not None and v["step"] > self.best_step and v["value"] == kept]
        if tied:
            text += f"; step{'s' if len(tied) > 1 else ''} {', '.join(tied)} measured the same, not better: the earlier weights are kept"
        return text


def check_config(config: FinetuneConfig) -> None:
    """Refuse options that cannot work (:class:`UsageError`), before anything is loaded."""
    if (config.steps is None) == (config.epochs is None):
        raise UsageError("give either --steps or --epochs (exactly one)", hint="e.g. --steps 150")
    if (config.steps is not None and config.steps <= 0) or (config.epochs is not None and config.epochs <= 0):
        raise UsageError("--steps and --epochs must be positive")
    if config.batch_size <= 0 or config.checkpoint_every <= 0 or config.lr <= 0:
        raise UsageError("--batch-size, --checkpoint-every and --lr must be positive")
    if not config.full and config.lora_rank <= 0:
        raise UsageError(f"--lora-rank must be positive, got {config.lora_rank}", hint="or pass --full to train every weight")
    if config.rank_negatives < 0:
        raise UsageError(f"--rank-negatives must be 0 or more, got {config.rank_negatives}", hint="0 trains on the title loss alone")
    if not 0.0 <= config.rank_weight <= 1.0:
        raise UsageError(f"--rank-weight must be between 0 and 1, got {config.rank_weight}", hint="e.g. --rank-weight 0.5")
    if config.answers < 1:
        raise UsageError(f"--answers must be 1 or more, got {config.answers}", hint="1 trains on the target alone")
    if config.cf_answers < 0:
        raise UsageError(f"--cf-answers must be 0 or more, got {config.cf_answers}", hint="0 trains on the data's answers alone")
    if not 0.0 < config.cf_share < 1.0:
        raise UsageError(f"--cf-share must be between 0 and 1 (both excluded), got {config.cf_share}", hint="e.g. --cf-share 0.5")
    if config.cf_vocab < 0:
        raise UsageError(f"--cf-vocab must be 0 or more, got {config.cf_vocab}", hint="0 lets the recommender answer with any item; e.g. 100")
    if config.cf_vocab_skip < 0 or (config.cf_vocab_skip and not config.cf_vocab):
        raise UsageError(f"--cf-vocab-skip must be 0, or positive with --cf-vocab, got {config.cf_vocab_skip}",
                         hint="e.g. --cf-vocab 100 --cf-vocab-skip 500: answers among the items ranked 501-600 by train count")
    if config.holdout_users < 0:
        raise UsageError(f"--holdout-users must be 0 or more, got {config.holdout_users}", hint="0 heals on every user; N leaves out the users `eval --users N` ranks")
    if not config.popularity_debias >= 0.0:
        raise UsageError(f"--popularity-debias must be 0 or more, got {config.popularity_debias}", hint="0 weighs every answer alike; 0.5 is a mild debias")
    if config.task_format not in TASK_FORMATS:
        raise UsageError(f"--task-format {config.task_format!r} is not one of {', '.join(TASK_FORMATS)}", hint="use completion or chat")
    _check_regimes(config)
    _check_distillation(config)
    _check_early_stop(config)


def _known(flag: str, value: str, names: Any) -> None:
    """A :class:`UsageError` unless ``value`` is one of the registered ``names``."""
    if value not in names:
        raise UsageError(f"{flag} {value!r} is not known", hint=f"choose from {', '.join(repr(n) for n in names)}")


def _check_regimes(config: FinetuneConfig) -> None:
    from ollama_slim.recsys.data.core import REGIMES

    if not config.rank_regimes or len(set(config.rank_regimes)) != len(config.rank_regimes):
        raise UsageError(f"--rank-regimes must name each regime once, got {','.join(config.rank_regimes) or 'none'}", hint="e.g. --rank-regimes uniform,popularity")
    for regime in config.rank_regimes:
        _known("--rank-regimes", regime, REGIMES)


def _check_distillation(config: FinetuneConfig) -> None:
    """The listwise, alignment and cache options: weights, kinds, and what each needs."""
    from ollama_slim.slimming.finetune.distill import ALIGN_TARGETS
    from ollama_slim.slimming.finetune.losses import ALIGN_LOSSES

    if not config.distill_listwise_weight >= 0.0:  # NaN too
        raise UsageError(f"--distill-listwise-weight must be 0 or more, got {config.distill_listwise_weight}", hint="0 turns it off")
    if not config.align_weight >= 0.0:
        raise UsageError(f"--align-weight must be 0 or more, got {config.align_weight}", hint="0 turns it off")
    if not config.distill_temperature > 0.0:
        raise UsageError(f"--distill-temperature must be positive, got {config.distill_temperature}", hint="e.g. --distill-temperature 2")
    _known("--align-kind", config.align_kind, list(ALIGN_LOSSES))
    _known("--align-at", config.align_at, list(ALIGN_TARGETS))
    if not config.general_weight >= 0.0:
        raise UsageError(f"--general-weight must be 0 or more, got {config.general_weight}", hint="0 turns it off")
    if config.general_texts <= 0 or config.general_tokens <= 0:
        raise UsageError("--general-texts and --general-tokens must be positive", hint="e.g. --general-texts 256 --general-tokens 64")
    wanted = [flag for flag, on in (("--distill-listwise-weight", config.distill_listwise_weight > 0), ("--align-weight", config.align_weight > 0),
                                    ("--teacher-cache", config.teacher_cache), ("--general-weight", config.general_weight > 0)) if on]
    if wanted and config.distill_from is None:
        raise UsageError(f"{wanted[0]} needs a teacher (--distill-from)", hint="pass --distill-from with the full fine-tuned model")
    if config.distill_listwise_weight > 0 and config.rank_negatives == 0:
        raise UsageError("--distill-listwise-weight needs candidates to rank", hint="pass --rank-negatives K: the teacher's and the student's scores of the target and K negatives")
    if config.teacher_cache and config.distill_listwise_weight > 0 and not config.fixed_negatives:
        raise UsageError("--teacher-cache with --distill-listwise-weight needs --fixed-negatives",
                         hint="negatives drawn anew every step would miss the cache at every step")


def _check_early_stop(config: FinetuneConfig) -> None:
    from ollama_slim.slimming.finetune.validation import VAL_MEASURES

    if config.early_stop_patience < 0:
        raise UsageError(f"--early-stop-patience must be 0 or more, got {config.early_stop_patience}", hint="0 trains for every step")
    if config.eval_every <= 0 or config.val_users <= 0 or config.val_negatives <= 0:
        raise UsageError("--eval-every, --val-users and --val-negatives must be positive", hint="e.g. --eval-every 50 --val-users 32")
    _known("--val-measure", config.val_measure, list(VAL_MEASURES))
    if config.val_at_start and config.early_stop_patience == 0:
        raise UsageError("--val-at-start needs early stopping (--early-stop-patience N)", hint="e.g. --early-stop-patience 3 --eval-every 100 --val-at-start")


@dataclass(frozen=True)
class Places:
    """The model to train, the final directory and the checkpoint directory."""

    model_dir: Path
    out_dir: Path
    checkpoint_dir: Path
    run_dir: Path | None = None  # where finetune.json goes

    @property
    def general_corpus(self) -> Path:
        """The text the teacher wrote for general-text distillation (beside the checkpoints)."""
        return self.checkpoint_dir / "general.json"

    @property
    def teacher_cache_dir(self) -> Path:
        """The teacher's outputs per example (``--teacher-cache``), beside the checkpoints."""
        return self.checkpoint_dir / "teacher"


def places(config: FinetuneConfig) -> Places:
    """Where ``config.model`` is read from and the run writes: a run directory's, or ``--out``'s."""
    from ollama_slim.models.sources import resolve
    from ollama_slim.pipeline.layout import RunLayout

    root = Path(config.model)
    if root.is_dir() and RunLayout(root).compact_dir.is_dir() and config.hf is None:
        layout = RunLayout(root)
        out = Path(config.out_dir) if config.out_dir else layout.healed_dir
        return Places(model_dir=layout.compact_dir, out_dir=out, checkpoint_dir=layout.finetune_dir, run_dir=config.run_dir or root)
    model_dir = resolve(config.model, hf=config.hf).model_dir
    if config.out_dir is None:
        raise UsageError(f"{config.model} is not a run directory, so --out is needed", hint="pass --out DIR for the fine-tuned model")
    out = Path(config.out_dir)
    return Places(model_dir=Path(model_dir), out_dir=out, checkpoint_dir=out.with_name(out.name + ".checkpoints"), run_dir=config.run_dir)
