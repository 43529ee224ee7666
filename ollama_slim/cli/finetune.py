"""``ollama-slim finetune``: heal a compact model (or fine-tune the full reference)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ollama_slim.recsys.prompt import TASK_FORMATS
from ollama_slim.cli.display import live, verbose_option
from ollama_slim.cli.options import RegistryChoice, comma_list, defaults
from ollama_slim.recsys.data.core import REGIMES
from ollama_slim.slimming.finetune import FinetuneConfig
from ollama_slim.slimming.finetune.distill import ALIGN_TARGETS
from ollama_slim.slimming.finetune.losses import ALIGN_LOSSES
from ollama_slim.slimming.finetune.validation import VAL_MEASURES

_DEFAULTS = defaults(FinetuneConfig)


@click.command("finetune", epilog="The defaults shown are finetune's own: for a run made by `prune`, its recorded recipe takes their place.")
@click.argument("model", metavar="RUN_OR_MODEL")
@click.option("--data", metavar="DIR_OR_NAME", help="Data set directory or name (its train split is used) [default for a prune run: the run's].")
@click.option("--steps", type=int, help="Optimizer steps.")
@click.option("--epochs", type=float, help="Passes over the train examples (instead of --steps).")
@click.option("--lora-rank", type=int, default=_DEFAULTS["lora_rank"], show_default=True, help="LoRA rank (adapters are merged before saving).")
@click.option("--full", is_flag=True, help="Train every weight instead of LoRA adapters.")
@click.option("--distill-from", metavar="TEACHER", help="Teacher model (tag or directory, same tokenizer): adds KL on the target title tokens.")
@click.option("--distill-weight", type=float, default=_DEFAULTS["distill_weight"], show_default=True, help="Share of the distillation KL in the loss.")
@click.option("--rank-negatives", type=int, default=_DEFAULTS["rank_negatives"], show_default=True, metavar="K",
              help="Also rank the target among K items the user never interacted with (seeded per step): a softmax "
                   "cross-entropy over the 1+K titles' mean log-probs, the score evaluation ranks by. 0: title loss only.")
@click.option("--rank-weight", type=float, default=_DEFAULTS["rank_weight"], show_default=True, metavar="W",
              help="Share of the ranking loss, in [0, 1]: loss = (1-W) x title loss + W x ranking loss (with --rank-negatives).")
@click.option("--distill-listwise-weight", type=float, default=_DEFAULTS["distill_listwise_weight"], show_default=True, metavar="W",
              help="Add W x KL between the teacher's and the student's softmax over the 1+K candidates' scores (needs --distill-from, --rank-negatives). 0: off.")
@click.option("--distill-temperature", type=float, default=_DEFAULTS["distill_temperature"], show_default=True, metavar="T", help="Temperature of the listwise KD softmax.")
@click.option("--align-weight", type=float, default=_DEFAULTS["align_weight"], show_default=True, metavar="W",
              help="Add W x the distance between each kept layer's output and the teacher's hidden state at its original index (needs --distill-from and a compact model's slim.json). 0: off.")
@click.option("--align-kind", type=RegistryChoice(ALIGN_LOSSES), default=_DEFAULTS["align_kind"], show_default=True, help="Distance of the hidden-state alignment.")
@click.option("--align-at", type=RegistryChoice(ALIGN_TARGETS), default=_DEFAULTS["align_at"], show_default=True,
              help="Teacher layer of each kept layer: its original index, or the end of the gap after it (what the next kept layer reads).")
@click.option("--teacher-cache", is_flag=True, help="Compute the teacher's outputs once per example and keep them beside the checkpoints.")
@click.option("--general-weight", type=float, default=_DEFAULTS["general_weight"], show_default=True, metavar="W",
              help="With a teacher: weight of its per-token KL (and, with --align-weight, the alignment) on text it wrote itself "
                   "(sampled once from its start token, kept beside the checkpoints): general knowledge the task's prompts do not carry. 0: off.")
@click.option("--general-texts", type=int, default=_DEFAULTS["general_texts"], show_default=True, metavar="N", help="Sequences the teacher writes for --general-weight.")
@click.option("--general-tokens", type=int, default=_DEFAULTS["general_tokens"], show_default=True, metavar="N", help="Tokens in each of them.")
@click.option("--rank-regimes", default=",".join(_DEFAULTS["rank_regimes"]), show_default=True, metavar="R1,R2",
              callback=comma_list(lambda: REGIMES), help=f"Regimes the ranking negatives are drawn from, one per draw chosen with the seed: {', '.join(REGIMES)}.")
@click.option("--fixed-negatives", is_flag=True, help="Draw each example's negatives once instead of every step (needed by --teacher-cache with listwise KD).")
@click.option("--early-stop-patience", type=int, default=_DEFAULTS["early_stop_patience"], show_default=True, metavar="N",
              help="Stop after N validation measures without a better one and keep the best weights. 0: train every step.")
@click.option("--eval-every", type=int, default=_DEFAULTS["eval_every"], show_default=True, metavar="N", help="Measure on validation users every N steps (with --early-stop-patience).")
@click.option("--val-measure", type=RegistryChoice(VAL_MEASURES), default=_DEFAULTS["val_measure"], show_default=True,
              help="Validation measure: the title loss, NDCG@10 among --val-negatives uniform negatives (ndcg), or the mean "
                   "of NDCG@10 among uniform and among popularity-weighted negatives (ndcg-both), or the distinct catalogue titles "
                   "not in the user's list that greedy answers name, per user (answer: the generation-mode measure).")
@click.option("--val-users", type=int, default=_DEFAULTS["val_users"], show_default=True, help="Validation users (seeded draw).")
@click.option("--val-negatives", type=int, default=_DEFAULTS["val_negatives"], show_default=True, help="Negatives per validation user (and regime) for --val-measure ndcg or ndcg-both.")
@click.option("--val-at-start", is_flag=True,
              help="Measure the starting weights too (step 0), so early stopping keeps them when no step beats them: for a further stage on a healed model.")
@click.option("--train-bridges", is_flag=True, help="Also train a d x d map on each gap (folded into down_proj at the end).")
@click.option("--lr", type=float, default=_DEFAULTS["lr"], show_default=True, help="Peak learning rate.")
@click.option("--batch-size", type=int, default=_DEFAULTS["batch_size"], show_default=True, help="Examples per optimizer step (over all processes).")
@click.option("--checkpoint-every", type=int, default=_DEFAULTS["checkpoint_every"], show_default=True, help="Write a checkpoint every N steps.")
@click.option("--users", type=int, help="Train on this many users only (seeded draw).")
@click.option("--holdout-users", type=int, default=_DEFAULTS["holdout_users"], show_default=True, metavar="N",
              help="Leave out of training and validation the N users `eval --users N` ranks with the same --seed: test users the model never saw.")
@click.option("--history", type=int, default=_DEFAULTS["history"], show_default=True, help="History items in the prompt.")
@click.option("--answers", type=int, default=_DEFAULTS["answers"], show_default=True, metavar="N",
              help="Train each prompt on N answers: the target and the N-1 items the user took next, packed after one prompt "
                   "(more titles learnt per step for little more compute). 1: the target alone.")
@click.option("--popularity-debias", type=float, default=_DEFAULTS["popularity_debias"], show_default=True, metavar="B",
              help="Weight each answer's title loss by its item's train count ** -B (mean 1 per batch): rare answers count more, "
                   "popular ones less. 0: every answer alike.")
@click.option("--cf-answers", type=int, default=_DEFAULTS["cf_answers"], show_default=True, metavar="K",
              help="Also train each prompt on the K top items of an item-to-item recommender (what users took soon after the "
                   "history's items, train parts only): a personal answer per history, distilled as sequences. 0: off.")
@click.option("--cf-share", type=float, default=_DEFAULTS["cf_share"], show_default=True, metavar="S",
              help="The share of each prompt's title loss that the --cf-answers carry (the data's answers the rest).")
@click.option("--cf-vocab", type=int, default=_DEFAULTS["cf_vocab"], show_default=True, metavar="N",
              help="The recommender of --cf-answers answers only among the N items most taken in the train parts: personal "
                   "answers from a set small enough to learn which history leads to which. 0: any item.")
@click.option("--cf-vocab-skip", type=int, default=_DEFAULTS["cf_vocab_skip"], show_default=True, metavar="M",
              help="Leave the M most taken items out of --cf-vocab (it becomes the items ranked M+1 to M+N by train count), "
                   "so that the answers are items popularity-weighted negatives rarely draw. On Amazon it did not spare the "
                   "ranking under those negatives (docs/quality-log.md).")
@click.option("--task-format", type=click.Choice(TASK_FORMATS), default=_DEFAULTS["task_format"], show_default=True,
              help="completion: a raw prompt, the title as its continuation; chat: the prompt as `ollama run` renders it (chat template, SYSTEM, "
                   "history in a user message in one of several wordings), the title as the answer closed by end-of-turn.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Output directory [default for a run: RUN/healed].")
@click.option("--seed", type=int, default=_DEFAULTS["seed"], show_default=True, help="Seed of the batch order and initialisation.")
@click.option("--hf", metavar="REPO_OR_DIR", help="Hugging Face repo id or local directory to use for MODEL.")
@click.option("--force", is_flag=True, help="Replace an existing output directory; discard checkpoints made with other settings.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@verbose_option
def command(model: str, data: str | None, steps: int | None, epochs: float | None, lora_rank: int, full: bool, distill_from: str | None,
            distill_weight: float, rank_negatives: int, rank_weight: float, distill_listwise_weight: float, distill_temperature: float,
            align_weight: float, align_kind: str, align_at: str, teacher_cache: bool, general_weight: float, general_texts: int, general_tokens: int, rank_regimes: tuple[str, ...], fixed_negatives: bool,
            early_stop_patience: int, eval_every: int, val_measure: str, val_users: int, val_negatives: int, val_at_start: bool, train_bridges: bool, lr: float,
            batch_size: int, checkpoint_every: int, users: int | None, holdout_users: int, history: int, answers: int, popularity_debias: float, cf_answers: int, cf_share: float, cf_vocab: int, cf_vocab_skip: int, task_format: str, out_dir: Path | None, seed: int, hf: str | None,
            force: bool, as_json: bool) -> None:
    """Fine-tune RUN_OR_MODEL on the next-item title loss of the --data train split
    (with --rank-negatives, mixed with a ranking loss over the target and K negatives).

    RUN_OR_MODEL is a run directory (its compact model is healed into RUN/healed, the
    result recorded in RUN/finetune.json) or a model (tag or directory; then --out is
    needed): the same command fine-tunes the full model that serves as the reference.
    A checkpoint is written every --checkpoint-every steps; after Ctrl-C, rerun the
    same command to resume. With a teacher (--distill-from), --distill-listwise-weight
    and --align-weight distil its ranking and hidden states too; --early-stop-patience
    heals to convergence on validation users rather than to a step count. For
    several GPUs: `accelerate launch --multi_gpu --mixed_precision bf16 -m ollama_slim.cli finetune ...`.

    A run made by `prune` is healed again with its own recipe (prune.json: data, task
    format, steps, learning rate, answers, teacher, held-out users...); the options given
    override it, and the ones taken from the run are said on stderr.
    """
    from ollama_slim.slimming.finetune import check_config, finetune

    config = FinetuneConfig(
        model=model, data=data, out_dir=out_dir, steps=steps, epochs=epochs, lora_rank=lora_rank, full=full,
        distill_from=distill_from, distill_weight=distill_weight, rank_negatives=rank_negatives, rank_weight=rank_weight,
        distill_listwise_weight=distill_listwise_weight, distill_temperature=distill_temperature, align_weight=align_weight,
        align_kind=align_kind, align_at=align_at, teacher_cache=teacher_cache, general_weight=general_weight,
        general_texts=general_texts, general_tokens=general_tokens, rank_regimes=rank_regimes, fixed_negatives=fixed_negatives,
        early_stop_patience=early_stop_patience, eval_every=eval_every, val_measure=val_measure, val_users=val_users,
        val_negatives=val_negatives, val_at_start=val_at_start, train_bridges=train_bridges, lr=lr, batch_size=batch_size,
        checkpoint_every=checkpoint_every, seed=seed, history=history, answers=answers, popularity_debias=popularity_debias, cf_answers=cf_answers, cf_share=cf_share, cf_vocab=cf_vocab, cf_vocab_skip=cf_vocab_skip, users=users, holdout_users=holdout_users, hf=hf, force=force, task_format=task_format,
    )
    config = _run_recipe(config)
    check_config(config)  # a bad option: one line, before the progress bar
    columns = [TextColumn("[bold]finetune"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[val]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with live(*columns, transient=as_json) as progress:
        task = progress.add_task("steps", total=None, loss="-", val="")

        def on_step(p) -> None:
            best = {"val": f"validation best {p.best[1]:.4f} (step {p.best[0]})"} if p.best is not None else {}
            progress.update(task, total=p.total, completed=p.step, loss=f"{p.loss:.4f}", **best)

        result = finetune(config, on_step=on_step)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    table = Table(title=f"ollama-slim finetune {model}", show_header=False)
    first = f"{result.losses[0]:.4f}" if result.losses else "-"
    rows = [
        ("mode", result.mode), ("steps", f"{result.steps} (resumed from {result.resumed_from})" if result.resumed_from else str(result.steps)),
        *([("best step", f"{result.best_step}" + (" (stopped early)" if result.stopped_early else ""))] if result.best_step is not None else []),
        *([("validation", result.validation_text())] if result.validation else []),
        ("loss", f"{first} -> {result.final_loss:.4f}" if result.final_loss is not None else "-"),
        ("trainable parameters", f"{result.trainable_params / 1e6:.2f}M"), ("train examples", str(result.train_examples)),
        ("written to", str(result.out_dir)), ("checkpoints", str(result.checkpoint_dir)), ("time", f"{result.seconds:.1f}s"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def _run_recipe(given: FinetuneConfig) -> FinetuneConfig:
    """``given`` as is, unless its model is a ``prune`` run: then the run's own healing, with the
    options given on the command line in place of its settings (said on stderr)."""
    from dataclasses import fields, replace

    from click.core import ParameterSource

    from ollama_slim.errors import UsageError
    from ollama_slim.pipeline.layout import RunLayout
    from ollama_slim.pipeline.stages import recorded_healing

    run = RunLayout(Path(given.model))
    if not run.prune_record.is_file():
        if given.data is None:
            raise UsageError("--data is needed", hint="give a data set name or directory, e.g. --data movielens-100k")
        return given
    ctx = click.get_current_context()
    named = {name for name in ctx.params if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
    overrides = {f.name: getattr(given, f.name) for f in fields(given) if f.name in named and f.name != "model"}
    if "epochs" in overrides:  # a length in epochs replaces the run's step count
        overrides["steps"] = None
    recipe = recorded_healing(run.root)
    taken = [(f.name.replace("_", " "), getattr(recipe, f.name)) for f in fields(recipe)
             if f.name in _SAID and f.name not in overrides and getattr(recipe, f.name) != _DEFAULTS.get(f.name)]
    said = ", ".join(f"{name} {','.join(value) if isinstance(value, tuple) else value}" for name, value in taken)
    click.echo(f"healing as the run did ({run.prune_record}): {said or 'the defaults'} (options override)", err=True)
    return replace(recipe, **{"force": given.force, **overrides})


# the run's settings worth saying when they differ from finetune's own defaults
_SAID = ("data", "task_format", "steps", "full", "lr", "answers", "rank_negatives", "rank_regimes", "distill_from", "distill_listwise_weight",
         "align_weight", "cf_answers", "popularity_debias", "holdout_users", "history", "title_words")
