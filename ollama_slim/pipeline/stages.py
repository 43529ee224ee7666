"""The stage table of ``prune``: for each stage, its library config, its outputs and its call.

A stage's config is built from the :class:`~ollama_slim.pipeline.config.PruneConfig` and the
run layout alone (never from another stage's files), so its key (:func:`stage_options`) is
known before anything runs; what a stage reads from earlier stages is covered by the
runner chaining each key to the one before. Each ``run`` only calls the stage's library
function, which writes the stage's result file into the run directory itself.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ollama_slim.ollama.modelfile import chat_prompt_of
from ollama_slim import paths
from ollama_slim.bench.speed import BenchConfig, bench
from ollama_slim.gguf.run_export import RunExportConfig, export_reference, export_run
from ollama_slim.models.sources import ResolveConfig, resolve_model
from ollama_slim.ollama.register import RegisterConfig, record_not_registered, register_model
from ollama_slim.pipeline.config import PruneConfig, read_run_config
from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.pipeline.run_report import write_run_report
from ollama_slim.pipeline.runner import config_key
from ollama_slim.recsys.evaluate import EvalConfig, evaluate
from ollama_slim.recsys.generation import GenerationConfig, evaluate_generation
from ollama_slim.recsys.prompt import PromptConfig
from ollama_slim.slimming.build import BuildConfig, build_compact
from ollama_slim.slimming.finetune import FinetuneConfig, finetune
from ollama_slim.slimming.importance.stage import ScoreConfig, score_layers
from ollama_slim.slimming.selection import SelectConfig, select_layers

Say = Callable[[str], None]


@dataclass(frozen=True)
class Stage:
    """One stage: ``config(prune, layout)`` (None: off), ``outputs(prune, layout)``, ``run(config, layout, say)``."""

    name: str
    config: Callable[[PruneConfig, RunLayout], Any]
    outputs: Callable[[PruneConfig, RunLayout], list[Path]]
    run: Callable[[Any, RunLayout, Say], Any]


def _prompt(c: PruneConfig) -> PromptConfig:
    chat = chat_prompt_of(c.model, seed=c.seed) if c.task_format == "chat" else None
    return PromptConfig(history=c.history, title_words=c.title_words, chat=chat)


# -- resolve, score, select, build ----------------------------------------------------


def _resolve_config(c: PruneConfig, layout: RunLayout) -> ResolveConfig:
    return ResolveConfig(model=c.model, hf=c.hf, run_dir=layout.root)


def _score_config(c: PruneConfig, layout: RunLayout) -> ScoreConfig:
    return ScoreConfig(model=c.model, hf=c.hf, data=c.data, methods=c.methods, calib_users=c.calib_users, run_dir=layout.root,
                       dtype=c.dtype, device_map=c.device_map, seed=c.seed, prompt=_prompt(c))


def _select_config(c: PruneConfig, layout: RunLayout) -> SelectConfig:
    return SelectConfig(source=str(layout.root), hf=c.hf, keep=c.keep, min_retained=c.min_retained, strategy=c.strategy, data=c.data,
                        also_data=c.select_data, val_users=c.val_users, run_dir=layout.root, dtype=c.dtype, device_map=c.device_map, seed=c.seed, prompt=_prompt(c))


def _build_config(c: PruneConfig, layout: RunLayout) -> BuildConfig:
    return BuildConfig(model=c.model, hf=c.hf, selection=layout.selection, out_dir=layout.compact_dir, bridge=c.bridge, data=c.data,
                       calib_data=c.select_data, own_text=c.own_text, force=True, run_dir=layout.root)


# -- finetune, reference ---------------------------------------------------------------


def _healing(c: PruneConfig, *, model: str, hf: str | None, out: Path, run_dir: Path | None) -> FinetuneConfig:
    """The one healing recipe of a run, for the slim model and the reference alike; neither sees
    the users the eval stage ranks (``holdout_users``), so its figures are on users never healed on."""
    return FinetuneConfig(model=model, hf=hf, data=c.data, out_dir=out, steps=c.steps, lora_rank=c.lora_rank, lr=c.lr, batch_size=c.batch_size,
                          rank_negatives=c.rank_negatives, rank_weight=c.rank_weight, rank_regimes=c.rank_regimes, checkpoint_every=c.checkpoint_every,
                          seed=c.seed, history=c.history, title_words=c.title_words, force=True, run_dir=run_dir, task_format=c.task_format,
                          answers=c.answers, popularity_debias=c.popularity_debias, cf_answers=c.cf_answers, cf_share=c.cf_share, cf_vocab=c.cf_vocab, full=c.full,
                          holdout_users=c.eval_users)


def _finetune_config(c: PruneConfig, layout: RunLayout) -> FinetuneConfig:
    """The slim model's healing; with ``--teacher original``, distilled from the original (its
    ranking of the candidates, its hidden states at the end of each kept layer's gap)."""
    config = _healing(c, model=str(layout.compact_dir), hf=None, out=layout.healed_dir, run_dir=layout.root)
    if not c.distills():
        return config
    general = dict(general_weight=c.general_weight, general_texts=c.general_texts) if c.general_weight > 0 else {}
    return replace(config, distill_from=c.model, distill_hf=c.hf, distill_weight=0.0, distill_listwise_weight=c.listwise_weight,
                   distill_temperature=c.distill_temperature, align_weight=c.align_weight, align_at="gap-end", **general)


def recorded_healing(run: Path) -> FinetuneConfig:
    """The slim model's healing as ``prune`` set it up in ``run`` (from its ``prune.json``): what
    ``finetune RUN`` starts from, so a run healed again keeps its format and recipe."""
    layout = RunLayout(Path(run))
    return _finetune_config(read_run_config(layout.root, hint="pass every healing option, or rerun prune"), layout)


def _finetune_outputs(c: PruneConfig, layout: RunLayout) -> list[Path]:
    return [layout.healed_dir / "config.json"] + ([layout.finetune_record] if c.steps > 0 else [])


def _run_finetune(config: FinetuneConfig, layout: RunLayout, say: Say) -> None:
    if config.steps == 0:  # no healing: the compact model is the slim one
        _copy_model(Path(config.model), Path(config.out_dir))
        return
    _heal(config, say)


def _heal(config: FinetuneConfig, say: Say) -> None:
    """Fine-tune, then drop the checkpoints: they only serve to resume an interrupted run, and
    with the optimizer's state they weigh three times the model (gigabytes from 1B up). A stage
    that finished is skipped on a rerun; ``finetune RUN --force`` heals again from the start."""
    result = finetune(config, on_step=lambda p: say(f"finetune: {p.describe()}"))
    shutil.rmtree(result.checkpoint_dir, ignore_errors=True)


def _reference_config(c: PruneConfig, layout: RunLayout) -> FinetuneConfig | None:
    return _healing(c, model=c.model, hf=c.hf, out=layout.reference_dir, run_dir=None) if c.wants_reference() else None


def _run_reference(config: FinetuneConfig | None, layout: RunLayout, say: Say) -> None:
    if config is not None:
        _heal(config, say)


# -- export, register, bench -------------------------------------------------------------


def _export_config(c: PruneConfig, layout: RunLayout) -> RunExportConfig:
    return RunExportConfig(run_dir=layout.root, outtype=c.outtype, model_dir=layout.healed_dir, force=True)


def _export_outputs(c: PruneConfig, layout: RunLayout) -> list[Path]:
    return [layout.gguf, layout.modelfile, layout.original_gguf(c.outtype), layout.export_record]


def _register_config(c: PruneConfig, layout: RunLayout) -> RegisterConfig | None:
    return RegisterConfig(source=layout.gguf, name=c.slim_name, force=c.force, host=c.host, run_dir=layout.root) if c.register else None


def _run_register(config: RegisterConfig | None, layout: RunLayout, say: Say) -> None:
    if config is None:
        record_not_registered(layout.root, reason="--no-register")
    else:
        register_model(config)


def _bench_config(c: PruneConfig, layout: RunLayout) -> BenchConfig:
    return BenchConfig(original=str(layout.original_gguf(c.outtype)), slim=str(layout.gguf), backend="llama-cpp", repeats=c.bench_repeats, run_dir=layout.root)


# -- eval, report ------------------------------------------------------------------------


def _eval_config(c: PruneConfig, layout: RunLayout) -> dict[str, tuple[str, EvalConfig]]:
    """label -> (which model, its evaluation): each writes ``eval_<label>.json``."""
    return {label: (which, EvalConfig(data=data, split="test", users=c.eval_users, history=c.history, title_words=c.title_words, seed=c.seed,
                                      backend="llama-cpp" if which == "shipped" else "transformers", run_dir=layout.root, label=label,
                                      task_format=c.task_format))
            for label, (which, data) in c.eval_targets().items()}


def _generate_config(c: PruneConfig, layout: RunLayout) -> dict[str, GenerationConfig]:
    """label -> the chat measure of the shipped GGUF (``slim``), and asked the slim model's way (its Modelfile) the original's
    GGUF (``original``) and, when there is one, the reference's (``reference``: the full model healed with the same recipe)."""
    def cases(label: str) -> EvalConfig:
        return EvalConfig(data=c.data, split="test", users=c.eval_users, history=c.history, title_words=c.title_words, seed=c.seed, run_dir=layout.root, label=label)

    return {"slim": GenerationConfig(cases=cases("slim"))} | {label: GenerationConfig(cases=cases(label), modelfile=layout.modelfile) for label in _asked_full(c)}


def _asked_full(c: PruneConfig) -> tuple[str, ...]:
    """The full models asked in chat beside the slim one."""
    return ("original", "reference") if c.wants_reference() else ("original",)


def _evals(c: PruneConfig, layout: RunLayout) -> dict[str, Any]:
    """The eval stage: rankings (``eval_<label>.json``) and, on the GGUFs, answers in chat (``generation_<label>.json``)."""
    return {"rank": _eval_config(c, layout), "generate": _generate_config(c, layout), "outtype": c.outtype}


def _run_eval(evals: dict[str, Any], layout: RunLayout, say: Say) -> None:
    for label, (which, config) in evals["rank"].items():
        say(f"eval: {label} on {config.data}")
        evaluate(_model_for(which, layout), config, progress=lambda done, total, label=label: say(f"eval: {label} {done}/{total} users"))
    ggufs = {"slim": (layout.gguf, layout.eval_record("shipped")), "original": (layout.original_gguf(evals["outtype"]), layout.eval_record("original")),
             "reference": (layout.reference_gguf(evals["outtype"]), layout.eval_record("reference"))}
    asked = {}
    with_reference = "reference" in evals["generate"]  # exported for this measure only: a full-size file the run does not ship
    if with_reference:
        say(f"eval: exporting the reference to {ggufs['reference'][0].name}")
        export_reference(layout.root, evals["outtype"])
    try:
        for label, config in evals["generate"].items():
            gguf, ranks = ggufs[label]
            asked[label] = evaluate_generation(gguf, config, ranks=ranks, progress=lambda done, total, label=label: say(f"eval: {label} asked in chat {done}/{total} users"))
    finally:
        if with_reference:  # only the file this stage exported
            ggufs["reference"][0].unlink(missing_ok=True)
    slim = asked["slim"]
    titles = round(slim.figures["title"].mean * len(slim.users))
    say(f"slim {len(slim.users)}/{len(slim.users)} users; in chat {titles}/{len(slim.users)} answers are catalogue titles")


def _eval_outputs(c: PruneConfig, layout: RunLayout) -> list[Path]:
    return [*(layout.eval_record(label) for label in c.eval_targets()), *(layout.generation_record(label) for label in ("slim", *_asked_full(c)))]


def _model_for(which: str, layout: RunLayout) -> str:
    """The directory of ``original`` (as resolved), ``slim`` (healed) or ``reference``; the GGUF for ``shipped``."""
    if which == "original":
        return paths.read_json(layout.resolve)["model_dir"]
    if which == "shipped":
        return str(layout.gguf)
    return str(layout.healed_dir if which == "slim" else layout.reference_dir)


STAGE_TABLE: tuple[Stage, ...] = (
    Stage("resolve", _resolve_config, lambda c, layout: [layout.resolve], lambda config, layout, say: resolve_model(config)),
    Stage("score", _score_config, lambda c, layout: [layout.scores], lambda config, layout, say: score_layers(config, progress=say)),
    Stage("select", _select_config, lambda c, layout: [layout.selection], lambda config, layout, say: select_layers(config, progress=say)),
    Stage("build", _build_config, lambda c, layout: [layout.compact_dir / "config.json", layout.build_record], lambda config, layout, say: build_compact(config)),
    Stage("finetune", _finetune_config, _finetune_outputs, _run_finetune),
    Stage("reference", _reference_config, lambda c, layout: [layout.reference_dir / "config.json"] if c.wants_reference() else [], _run_reference),
    Stage("export", _export_config, _export_outputs, lambda config, layout, say: export_run(config)),
    Stage("register", _register_config, lambda c, layout: [layout.register], _run_register),
    Stage("bench", _bench_config, lambda c, layout: [layout.bench], lambda config, layout, say: bench(config)),
    Stage("eval", _evals, _eval_outputs, _run_eval),
    Stage("report", lambda c, layout: c, lambda c, layout: [layout.report], lambda config, layout, say: write_run_report(config, layout)),
)
STAGES = tuple(stage.name for stage in STAGE_TABLE)


def stage_options(config: PruneConfig, layout: RunLayout) -> dict[str, Any]:
    """What each stage's key hashes (before chaining): its config without the output-neutral fields."""
    return {stage.name: config_key(stage.config(config, layout), root=layout.root) for stage in STAGE_TABLE}


def _copy_model(src: Path, dst: Path) -> None:
    with paths.atomic_dir(dst) as tmp:
        for file in src.iterdir():
            if file.is_file():
                shutil.copy2(file, tmp / file.name)
