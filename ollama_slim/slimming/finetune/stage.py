"""The ``finetune`` stage: set up (data, trainee, teacher, accelerator, resume), train, save the merged model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from ollama_slim import paths
from ollama_slim.errors import RunError, UsageError
from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.slimming.finetune.checkpoints import latest_checkpoint, resume
from ollama_slim.slimming.finetune.config import FinetuneConfig, FinetuneProgress, FinetuneResult, Places, check_config, places
from ollama_slim.slimming.finetune.data import check_negatives, train_examples
from ollama_slim.slimming.finetune.loop import Loop, run_loop, total_steps
from ollama_slim.slimming.finetune.trainee import Trainee, build_trainee, load_teacher, merged_model


def finetune(config: FinetuneConfig, *, on_step: Callable[[FinetuneProgress], None] | None = None) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``config.data``; resume from the last checkpoint if any.

    ``on_step`` is called after every optimizer step (progress bars, early stops: an
    exception it raises, e.g. KeyboardInterrupt, stops the run and keeps the checkpoints).
    """
    from ollama_slim.recsys.data import load_dataset

    began = time.perf_counter()
    check_config(config)
    where = places(config)
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
    if start > loop.total:
        raise RunError(f"checkpoint in {where.checkpoint_dir} is past step {loop.total}", hint=f"delete {where.checkpoint_dir} to start over")
    losses = run_loop(loop, start=start, losses=losses, checkpoint_dir=where.checkpoint_dir, on_step=on_step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_final(trainee, accelerator, tokenizer=tokenizer, where=where, config=config, losses=losses)
    result = FinetuneResult(
        out_dir=where.out_dir, checkpoint_dir=where.checkpoint_dir, mode=trainee.mode, steps=loop.total, resumed_from=start,
        final_loss=losses[-1] if losses else None, trainable_params=sum(p.numel() for p in trainee.params.values()),
        train_examples=len(train), seconds=time.perf_counter() - began, losses=losses,
    )
    if where.run_dir is not None and accelerator.is_main_process:
        paths.write_json(RunLayout(Path(where.run_dir)).finetune_record, result.to_json())
    return result


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


def save_final(trainee: Trainee, accelerator: Any, *, tokenizer: Any, where: Places, config: FinetuneConfig, losses: list[float]) -> None:
    """The merged model in ``where.out_dir``, its ``slim.json`` extended with this run's record."""
    from ollama_slim.slimming.build import read_provenance, save_compact

    model = merged_model(trainee, accelerator)
    model.config.use_cache = True
    provenance = read_provenance(where.model_dir)
    record = {"model_dir": str(where.model_dir), "mode": trainee.mode, "steps": len(losses), "final_loss": losses[-1] if losses else None, "config": config.fingerprint()}
    provenance["finetune"] = record
    if trainee.bridge is not None:
        provenance.setdefault("bridge", {})["trained"] = trainee.bridge.summary()
    save_compact(model, tokenizer, where.out_dir, provenance=provenance)
