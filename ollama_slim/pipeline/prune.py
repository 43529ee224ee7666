"""``prune``: one run directory from an Ollama tag to a registered slim model and a report.

resolve -> score -> select -> build -> finetune [-> reference] -> export -> register ->
bench -> eval -> report. Each stage is the library function of its own command; the
:class:`~ollama_slim.pipeline.runner.StageRunner` skips a stage whose options and inputs are
unchanged and whose outputs exist, so an interrupted run resumes where it stopped
(fine-tuning resumes from its last checkpoint).
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ollama_slim import paths
from ollama_slim.errors import UsageError
from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.pipeline.runner import StageRunner
from ollama_slim.models.tags import default_slim_name, parse_name

STAGES = ("resolve", "score", "select", "build", "finetune", "reference", "export", "register", "bench", "eval", "report")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class PruneConfig:
    """Every option of ``prune``; defaults are the choices the benchmarks measured best."""

    model: str
    keep: int
    name: str | None = None
    data: str = "movielens-100k"
    methods: tuple[str, ...] = ("ablation",)  # tools/bench_select.py: 10.03 val loss vs 10.95 fused with block influence + angular
    strategy: str = "ranked"
    bridge: str = "mlp-fold"
    steps: int = 150
    batch_size: int = 8
    lora_rank: int = 16
    lr: float = 2e-4
    rank_negatives: int = 0
    rank_weight: float = 0.5
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
    reference: bool | None = None  # None: on when a GPU makes the budget affordable
    cross_domain: str | None = None
    host: str | None = None
    force: bool = False
    dtype: str = "float32"
    device_map: str | None = None
    bench_repeats: int = 3
    seed: int = 0

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
        return Path("runs") / self.slim_name

    def use_reference(self) -> bool:
        if self.reference is not None:
            return self.reference
        import torch

        return torch.cuda.is_available()


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
    from ollama_slim.slimming.bridges import BRIDGES
    from ollama_slim.gguf.export import outtypes
    from ollama_slim.slimming.importance.methods import METHODS
    from ollama_slim.slimming.selection import STRATEGIES

    if config.keep <= 0:
        raise UsageError(f"--keep must be at least 1, got {config.keep}", hint="pass how many decoder layers to keep, e.g. --keep 10")
    if config.from_stage is not None and config.from_stage not in STAGES:
        raise UsageError(f"--from {config.from_stage}: no such stage", hint=f"stages: {', '.join(STAGES)}")
    checks = [(config.bridge, BRIDGES, "--bridge"), (config.strategy, STRATEGIES, "--strategy"), (config.outtype, outtypes(), "--outtype")]
    checks += [(m, METHODS, "--methods") for m in config.methods]
    for value, known, option in checks:
        if value not in known:
            raise UsageError(f"{option} {value!r} is not known", hint=f"choose from {', '.join(known)}")
    if config.steps < 0:
        raise UsageError(f"--steps must be >= 0, got {config.steps}")
    if config.steps > 0:  # healing's own checks (batch size, rank, ranking loss), with its messages
        from ollama_slim.slimming.finetune import FinetuneConfig, check_config as check_finetune

        check_finetune(FinetuneConfig(model=config.model, data=config.data, steps=config.steps, lora_rank=config.lora_rank, lr=config.lr, batch_size=config.batch_size,
                                      checkpoint_every=config.checkpoint_every, rank_negatives=config.rank_negatives, rank_weight=config.rank_weight))
    parse_name(config.slim_name)  # a name Ollama would refuse fails now, not after an hour


def prune(config: PruneConfig, *, progress: Progress | None = None) -> PruneResult:
    """Run (or resume) every stage of ``config`` in its run directory."""
    check_config(config)
    layout = RunLayout(config.root())
    say = progress or (lambda _msg: None)
    runner = StageRunner(root=layout.root, order=STAGES, redo_from=config.from_stage, on_event=lambda s, e: say(f"{s}: {e}"))
    paths.write_json(layout.prune_record, {"command": command_line(config), "config": asdict(config)})
    plan = _Plan(config=config, layout=layout, say=say)
    for stage in STAGES:
        options, outputs, fn = plan.stage(stage)
        runner.run(stage, options=options, outputs=outputs, fn=fn)
    registered = paths.read_json(layout.register).get("name") if layout.register.is_file() and config.register else None
    ran = [s for s in STAGES if s not in runner.skipped]
    return PruneResult(run_dir=layout.root, gguf=layout.gguf, modelfile=layout.modelfile, report=layout.report, registered=registered,
                       ran=ran, skipped=list(runner.skipped), timings=dict(runner.timings))


def command_line(config: PruneConfig) -> str:
    """The ``ollama-slim prune`` command that reproduces ``config``."""
    defaults = PruneConfig(model=config.model, keep=config.keep)
    parts = ["ollama-slim", "prune", config.model, "--keep", str(config.keep)]
    for key, value in asdict(config).items():
        if key in ("model", "keep", "from_stage", "force") or value == getattr(defaults, key):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            parts += [flag, ",".join(value) if isinstance(value, tuple) else str(value)]
    return shlex.join(parts)


from ollama_slim.pipeline.stages import _Plan  # noqa: E402  (the stage bodies, split off for size)
