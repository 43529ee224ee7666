"""``prune``: one run directory from an Ollama tag to a registered slim model and a report.

resolve -> score -> select -> build -> finetune [-> reference] -> export -> register ->
bench -> eval -> report. Each stage is the library function of its own command
(:mod:`ollama_slim.pipeline.stages`); the :class:`~ollama_slim.pipeline.runner.StageRunner`
skips a stage whose config and inputs are unchanged and whose outputs exist, so an
interrupted run resumes where it stopped (fine-tuning resumes from its last checkpoint).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from ollama_slim import paths
from ollama_slim.errors import UsageError
from ollama_slim.gguf.export import outtypes
from ollama_slim.models.tags import parse_name
from ollama_slim.pipeline.config import RECIPES, TEACHERS, PruneConfig, command_line
from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.pipeline.runner import StageRunner, config_key
from ollama_slim.pipeline.stages import STAGE_TABLE, STAGES
from ollama_slim.recsys.data import find_dataset
from ollama_slim.slimming.bridges import BRIDGES
from ollama_slim.slimming.finetune import FinetuneConfig, check_config as check_finetune
from ollama_slim.slimming.importance.methods import METHODS
from ollama_slim.slimming.selection import STRATEGIES

__all__ = ["STAGES", "PruneConfig", "PruneResult", "check_config", "command_line", "prune"]

Progress = Callable[[str], None]


@dataclass
class PruneResult:
    """Where the shareable files are, and what ran or was skipped."""

    run_dir: Path
    gguf: Path
    modelfile: Path
    report: Path
    registered: str | None
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def check_config(config: PruneConfig) -> None:
    """Fail fast, before any model is loaded, on options that cannot work."""
    if (config.keep is None) == (config.min_retained is None):
        raise UsageError("give either --keep or --min-retained (exactly one)", hint="e.g. --keep 10, or --min-retained 0.9 to remove layers while 90% of the validation lift stays")
    if config.keep is not None and config.keep <= 0:
        raise UsageError(f"--keep must be at least 1, got {config.keep}", hint="pass how many decoder layers to keep, e.g. --keep 10")
    if config.min_retained is not None and not 0 < config.min_retained <= 1:
        raise UsageError(f"--min-retained must be in (0, 1], got {config.min_retained}", hint="e.g. --min-retained 0.9")
    if config.from_stage is not None and config.from_stage not in STAGES:
        raise UsageError(f"--from {config.from_stage}: no such stage", hint=f"stages: {', '.join(STAGES)}")
    checks = [(config.bridge, BRIDGES, "--bridge"), (config.strategy, STRATEGIES, "--strategy"), (config.outtype, outtypes(), "--outtype"),
              (config.task_format, tuple(RECIPES), "--task-format")]  # an unknown format has no recipe: checked before its fields are read
    checks += [(m, METHODS, "--methods") for m in config.methods]
    for value, known, option in checks:
        if value not in known:
            raise UsageError(f"{option} {value!r} is not known", hint=f"choose from {', '.join(known)}")
    if config.steps < 0:
        raise UsageError(f"--steps must be >= 0, got {config.steps}")
    if config.teacher not in TEACHERS:
        raise UsageError(f"--teacher {config.teacher!r} is not known", hint=f"choose from {', '.join(TEACHERS)}")
    if config.teacher != "none" and config.listwise_weight > 0 and config.rank_negatives == 0:
        raise UsageError("--listwise-weight needs candidates to rank", hint="pass --rank-negatives K (e.g. 4), or --listwise-weight 0")
    if not config.general_weight >= 0.0:
        raise UsageError(f"--general-weight must be 0 or more, got {config.general_weight}", hint="0 turns it off")
    if config.teacher == "none" and config.general_weight > 0:
        raise UsageError("--general-weight needs a teacher to write the text and be matched on it", hint="pass --teacher original, or --general-weight 0")
    if config.steps > 0:  # healing's own checks (batch size, rank, ranking loss, weights), with its messages
        distill = dict(distill_from=config.model, distill_listwise_weight=config.listwise_weight, distill_temperature=config.distill_temperature,
                       align_weight=config.align_weight, general_weight=config.general_weight, general_texts=config.general_texts) if config.distills() else {}
        check_finetune(FinetuneConfig(model=config.model, data=config.data, steps=config.steps, lora_rank=config.lora_rank, lr=config.lr, batch_size=config.batch_size,
                                      checkpoint_every=config.checkpoint_every, rank_negatives=config.rank_negatives, rank_weight=config.rank_weight,
                                      rank_regimes=config.rank_regimes, answers=config.answers, popularity_debias=config.popularity_debias,
                                      cf_answers=config.cf_answers, cf_share=config.cf_share, cf_vocab=config.cf_vocab,
                                      full=config.full, **distill))
    for name in (config.data, *config.select_data, *([config.cross_domain] if config.cross_domain else [])):
        find_dataset(name)  # a mistyped data set fails now, not after the scores
    parse_name(config.slim_name)  # a name Ollama would refuse fails now, not after an hour


def prune(config: PruneConfig, *, progress: Progress | None = None) -> PruneResult:
    """Run (or resume) every stage of ``config`` in its run directory."""
    check_config(config)
    layout = RunLayout(config.root())
    say = progress or (lambda _msg: None)
    runner = StageRunner(root=layout.root, order=STAGES, redo_from=config.from_stage, on_event=lambda s, e: say(f"{s}: {e}"))
    paths.write_json(layout.prune_record, {"command": command_line(config), "config": asdict(config)})
    for stage in STAGE_TABLE:
        stage_config = stage.config(config, layout)
        runner.run(stage.name, options=config_key(stage_config, root=layout.root), outputs=stage.outputs(config, layout),
                   fn=partial(stage.run, stage_config, layout, say))
    registered = paths.read_json(layout.register).get("name") if layout.register.is_file() and config.register else None
    ran = [s for s in STAGES if s not in runner.skipped]
    return PruneResult(run_dir=layout.root, gguf=layout.gguf, modelfile=layout.modelfile, report=layout.report, registered=registered,
                       ran=ran, skipped=list(runner.skipped), timings=dict(runner.timings))
