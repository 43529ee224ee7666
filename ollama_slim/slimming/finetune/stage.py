"""The ``finetune`` stage: set up (data, trainee, teacher, accelerator, resume), train, save the merged model."""

from __future__ import annotations

from dataclasses import replace

import time
from pathlib import Path
from typing import Any, Callable

import torch

from ollama_slim import paths
from ollama_slim.errors import RunError, UsageError
from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.slimming.finetune.checkpoints import latest_checkpoint, load_early_stop, resume
from ollama_slim.slimming.finetune.config import FinetuneConfig, FinetuneProgress, FinetuneResult, Places, check_config, places
from ollama_slim.slimming.finetune.data import AnswerWeights, Negatives, check_negatives, train_examples
from ollama_slim.slimming.finetune.distill import make_distiller
from ollama_slim.slimming.finetune.general import teacher_corpus
from ollama_slim.slimming.finetune.loop import Loop, run_loop, total_steps
from ollama_slim.slimming.finetune.trainee import Trainee, base_model, build_trainee, load_teacher, merged_model
from ollama_slim.slimming.finetune.validation import keep_best, make_early_stop, make_validator


def finetune(config: FinetuneConfig, *, on_step: Callable[[FinetuneProgress], None] | None = None) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``config.data``; resume from the last checkpoint if any.

    ``on_step`` is called after every optimizer step (progress bars, early stops: an
    exception it raises, e.g. KeyboardInterrupt, stops the run and keeps the checkpoints).
    """
    from ollama_slim.recsys.data import load_dataset

    began = time.perf_counter()
    check_config(config)
    where = places(config)
    if config.task_format == "chat" and config.chat is None:
        from ollama_slim.ollama.modelfile import chat_prompt_of

        config = replace(config, chat=chat_prompt_of(where.model_dir, seed=config.seed))
    if where.out_dir.exists() and not config.force and latest_checkpoint(where.checkpoint_dir) is None:
        raise UsageError(f"{where.out_dir} already exists", hint="pass --force to replace it, or choose another --out")
    dataset = load_dataset(config.data)
    train = train_examples(config, dataset)
    check_negatives(config, dataset, train)
    trainee, tokenizer = build_trainee(config, where.model_dir)
    teacher = load_teacher(config, trainee.model)
    accelerator = make_accelerator(config)
    optimizer = torch.optim.AdamW(list(trainee.params.values()), lr=config.lr, weight_decay=0.0)
    start, losses = resume(where.checkpoint_dir, trainee=trainee, optimizer=optimizer, config=config)
    trainee.model, optimizer = accelerator.prepare(trainee.model, optimizer)
    if teacher is not None:
        teacher = accelerator.prepare_model(teacher, evaluation_mode=True)
    loop = Loop(config=config, trainee=trainee, teacher=teacher, tokenizer=tokenizer, dataset=dataset, examples=train,
                optimizer=optimizer, accelerator=accelerator, total=total_steps(config, len(train)))
    _add_options(loop, where, start)
    if start > loop.total:
        raise RunError(f"checkpoint in {where.checkpoint_dir} is past step {loop.total}", hint=f"delete {where.checkpoint_dir} to start over")
    losses = run_loop(loop, start=start, losses=losses, checkpoint_dir=where.checkpoint_dir, on_step=on_step)
    if loop.early is not None and loop.early.best_params:
        keep_best(loop.early, trainee.params)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_final(trainee, accelerator, tokenizer=tokenizer, where=where, config=config, losses=losses, best_step=loop.early.best_step if loop.early else None)
    result = _result(loop, where=where, start=start, losses=losses, seconds=time.perf_counter() - began)
    if where.run_dir is not None and accelerator.is_main_process:
        paths.write_json(RunLayout(Path(where.run_dir)).finetune_record, result.to_json())
    return result


def _add_options(loop: Loop, where: Places, start: int) -> None:
    """The loop's optional parts, each ``None`` while its option is off: negatives from the
    configured regimes, the distiller, the validator and early-stopping state (restored
    from the checkpoint a resumed run started from)."""
    config, accelerator = loop.config, loop.accelerator
    if config.rank_negatives > 0:
        loop.negatives = Negatives(loop.dataset, count=config.rank_negatives, seed=config.seed, regimes=config.rank_regimes, fixed=config.fixed_negatives)
    if config.popularity_debias > 0 or config.cf_answers > 0:
        loop.weights = AnswerWeights(loop.dataset, beta=config.popularity_debias, cf_answers=config.cf_answers, cf_share=config.cf_share)
    if loop.teacher is not None and config.uses_distiller():
        loop.distiller = make_distiller(config, teacher=accelerator.unwrap_model(loop.teacher), student=base_model(accelerator.unwrap_model(loop.trainee.model)),
                                        model_dir=where.model_dir, cache_dir=where.teacher_cache_dir)
    if loop.teacher is not None and config.general_weight > 0:
        loop.corpus = teacher_corpus(accelerator.unwrap_model(loop.teacher), loop.tokenizer, texts=config.general_texts, tokens=config.general_tokens,
                                     seed=config.seed, path=where.general_corpus, write=accelerator.is_main_process)
    loop.validator, loop.early = make_validator(config, loop.dataset, loop.tokenizer), make_early_stop(config)
    if loop.early is not None and start > 0:
        load_early_stop(latest_checkpoint(where.checkpoint_dir), loop.early)


def _result(loop: Loop, *, where: Places, start: int, losses: list[float], seconds: float) -> FinetuneResult:
    """The stage's result: steps taken (the planned ones unless early stopping stopped), losses, the best step."""
    early, trainee = loop.early, loop.trainee
    return FinetuneResult(
        out_dir=where.out_dir, checkpoint_dir=where.checkpoint_dir, mode=trainee.mode, steps=len(losses) if early else loop.total, resumed_from=start,
        final_loss=losses[-1] if losses else None, trainable_params=sum(p.numel() for p in trainee.params.values()),
        train_examples=len(loop.examples), seconds=seconds, losses=losses,
        best_step=early.best_step if early else None, stopped_early=bool(early and early.stopped),
        validation=[{"step": step, "value": value} for step, value in early.history] if early else [],
        teacher=loop.distiller.teacher.summary() if loop.distiller else None,
    )


def make_accelerator(config: FinetuneConfig) -> Any:
    """An ``Accelerator`` with this run's mixed precision.

    Its state is a process-wide singleton: a second run in the same process (the quality
    benchmark heals several models) would keep the first run's precision, or refuse
    another one. That part is dropped first; the distributed setup (``PartialState``)
    stays, and ``None`` still means what ``accelerate launch`` says.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)  # accelerate's own tests do this between runs
    return Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())


def save_final(trainee: Trainee, accelerator: Any, *, tokenizer: Any, where: Places, config: FinetuneConfig, losses: list[float], best_step: int | None = None) -> None:
    """The merged model in ``where.out_dir``, its ``slim.json`` extended with this run's record."""
    from ollama_slim.slimming.build import read_provenance, save_compact

    model = merged_model(trainee, accelerator)
    model.config.use_cache = True
    provenance = read_provenance(where.model_dir)
    record = {"model_dir": str(where.model_dir), "mode": trainee.mode, "steps": len(losses), "final_loss": losses[-1] if losses else None, "config": config.fingerprint()}
    if best_step is not None:
        record["best_step"] = best_step
    provenance["finetune"] = record
    if trainee.bridge is not None:
        provenance.setdefault("bridge", {})["trained"] = trainee.bridge.summary()
    save_compact(model, tokenizer, where.out_dir, provenance=provenance)
