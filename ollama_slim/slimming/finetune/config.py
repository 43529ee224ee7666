"""What a fine-tuning run is: its settings, its progress reports and its result, and where it reads and writes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ollama_slim.errors import UsageError


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run. ``steps`` or ``epochs`` (over the train examples), not both.

    ``lora_rank`` > 0 trains LoRA adapters (merged at the end); ``full`` trains every
    weight. ``distill_from`` names a teacher with the same tokenizer; ``distill_weight``
    mixes its KL into the loss. ``train_bridges`` adds identity-initialised MLP maps on
    the gaps recorded in the compact model's ``slim.json`` and folds them at the end.
    ``rank_negatives`` > 0 draws that many never-interacted items per example and step
    and mixes a softmax cross-entropy over the 1 + k candidates' length-normalised
    title log-likelihoods into the loss with ``rank_weight``.
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
    distill_weight: float = 0.5
    rank_negatives: int = 0
    rank_weight: float = 0.5
    train_bridges: bool = False
    lr: float = 2e-4
    batch_size: int = 8
    warmup: float = 0.05
    checkpoint_every: int = 50
    seed: int = 0
    history: int = 5
    title_words: int = 10
    title_tokens: int = 16
    users: int | None = None
    mixed_precision: str | None = None  # None: what `accelerate launch` says (no on CPU)
    hf: str | None = None
    force: bool = False
    run_dir: Path | None = None  # a run: the result also goes to its finetune.json (default: ``model``, when it is a run directory)

    def fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must share with the run that resumes it.

        Without ranking negatives the ranking settings change nothing and are left
        out, so checkpoints made before they existed still resume.
        """
        skip = {"out_dir", "checkpoint_every", "force", "mixed_precision", "run_dir"}
        if self.rank_negatives == 0:
            skip |= {"rank_negatives", "rank_weight"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass(frozen=True)
class FinetuneProgress:
    """What the progress callback sees after each optimizer step."""

    step: int
    total: int
    loss: float
    lr: float
    seconds: float


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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out_dir"], data["checkpoint_dir"] = str(self.out_dir), str(self.checkpoint_dir)
        return data


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


@dataclass(frozen=True)
class Places:
    """The model to train, the final directory and the checkpoint directory."""

    model_dir: Path
    out_dir: Path
    checkpoint_dir: Path
    run_dir: Path | None = None  # where finetune.json goes


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
