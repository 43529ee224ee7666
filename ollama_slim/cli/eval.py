"""``ollama-slim eval``: recommendation quality of a model, with both baselines."""

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
from ollama_slim.errors import UsageError
from ollama_slim.recsys.evaluate import EVAL_SPLITS, REGIMES, EvalConfig
from ollama_slim.recsys.generation import GenerationConfig
from ollama_slim.recsys.phrasings import PHRASINGS, TRAIN_PHRASINGS
from ollama_slim.recsys.scorers import SCORERS

_DEFAULTS = defaults(EvalConfig)
_GENERATE = defaults(GenerationConfig)
MODES = ("rank", "generate")


def _layers(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(x) for x in value.replace(" ", "").split(",") if x]
    except ValueError:
        raise click.BadParameter("give comma-separated layer indices, e.g. 0,1,5,29") from None


@click.command("eval")
@click.argument("model")
@click.option("--data", required=True, metavar="NAME_OR_PATH", help="A data directory (plain, Amazon 2014/2023, MovieLens, RecBole) or a named data set (movielens-100k).")
@click.option("--split", type=RegistryChoice(EVAL_SPLITS), default=_DEFAULTS["split"], show_default=True, help="Which leave-one-out target to rank.")
@click.option("--users", type=int, default=_DEFAULTS["users"], show_default=True, help="Users drawn with the seed (0 = all).")
@click.option("--negatives", type=int, default=_DEFAULTS["negatives"], show_default=True, help="Negatives per target.")
@click.option("--regime", type=RegistryChoice(REGIMES), default=_DEFAULTS["regime"], show_default=True, help="How negatives are drawn.")
@click.option("--history", type=int, show_default=f"the run's, else {_DEFAULTS['history']}", help="History titles in the prompt.")
@click.option("--title-tokens", type=int, default=_DEFAULTS["title_tokens"], show_default=True, help="Candidate titles are scored on at most this many tokens.")
@click.option("--title-words", type=int, show_default=f"the run's, else {_DEFAULTS['title_words']}", help="Titles cut to this many words in prompts (prune and finetune use 10).")
@click.option("--task-format", type=click.Choice(TASK_FORMATS), show_default=f"the run's, else {_DEFAULTS['task_format']}",
              help="rank: completion (a raw prompt) or chat (the prompt as `ollama run` renders it, each candidate as the answer).")
@click.option("--seed", type=int, default=_DEFAULTS["seed"], show_default=True, help="Seed of the users, negatives and bootstrap.")
@click.option("--backend", type=RegistryChoice(["auto", *SCORERS]), default=_DEFAULTS["backend"], show_default=True, help="auto: llama-cpp for a .gguf file, transformers otherwise.")
@click.option("--batch", type=int, default=_DEFAULTS["batch"], show_default=True, help="Candidates per forward pass.")
@click.option("--threads", type=int, help="CPU threads (default: all cores; 1 can be faster on a busy machine).")
@click.option("--layers", callback=_layers, metavar="I,J,...", help="Run only these decoder layers (transformers backend).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), help="Also record the result in this run directory, as eval_<label>.json.")
@click.option("--label", default=_DEFAULTS["label"], show_default=True, help="With --run-dir: the result's name (prune writes slim, original, reference).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only, on stdout.")
@click.option("--per-user", is_flag=True, help="With --json: include each user's rank and metrics (generate: each user's answer).")
@click.option("--mode", type=RegistryChoice(MODES), default="rank", show_default=True,
              help="rank: score the candidates; generate: ask the shipped GGUF in chat (as `ollama run` does) and match its answers to the catalogue.")
@click.option("--phrasings", default=",".join(_GENERATE["phrasings"]), show_default=True, callback=comma_list(lambda: PHRASINGS, unknown="unknown phrasing"),
              help=f"generate: how users word the question, one drawn per user (known: {', '.join(PHRASINGS)}; {', '.join(TRAIN_PHRASINGS)} are kept for training).")
@click.option("--max-tokens", type=int, default=_GENERATE["max_tokens"], show_default=True, help="generate: longest answer, in tokens (greedy).")
@click.option("--modelfile", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="generate: TEMPLATE, SYSTEM and stops from this Modelfile (default: the model's own, e.g. a run's).")
@click.option("--ranks", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="generate: a ranking result of the same model and users (eval_<label>.json) for the target-or-top-10 share.")
@verbose_option
def command(model: str, data: str, split: str, users: int, negatives: int, regime: str, history: int | None, title_tokens: int, title_words: int | None, task_format: str | None, seed: int, backend: str, batch: int,
            threads: int | None, layers: list[int] | None, run_dir: Path | None, label: str, as_json: bool, per_user: bool, mode: str,
            phrasings: tuple[str, ...], max_tokens: int, modelfile: Path | None, ranks: Path | None) -> None:
    """Rank each user's next item among 1 + N candidates with MODEL (an Ollama tag, a
    Hugging Face directory or a .gguf file) and print NDCG@10, MRR and HR@1/5/10 with
    95% bootstrap intervals, beside the random and popularity baselines on the same
    candidates. Users, candidates and intervals are seeded: reruns give the same numbers.

    With --mode generate, MODEL is a run directory, a .gguf file or a tag with a GGUF: each
    user's history goes to it as a chat message, rendered with the Modelfile's TEMPLATE and
    SYSTEM, answered greedily by llama.cpp; printed are the shares of answers that are a
    catalogue title, a title the user did not list, the target, and distinct answers.

    A model of a `prune` run (the run directory, its healed/, reference/ or model.gguf)
    is asked in the prompt it was healed on: --task-format, --history and --title-words
    default to the run's (prune.json), so the figures match its report.
    """
    history, title_words, task_format = _prompt_settings(model, run_dir, history=history, title_words=title_words, task_format=task_format)
    config = EvalConfig(
        data=data, split=split, users=users or None, negatives=negatives, regime=regime, history=history,
        title_tokens=title_tokens, title_words=title_words, seed=seed, backend=backend, batch=batch, threads=threads, run_dir=run_dir, label=label, task_format=task_format,
    )
    if mode == "generate":
        if layers is not None or backend not in ("auto", "llama-cpp"):
            raise UsageError("--mode generate runs the GGUF through llama.cpp", hint="leave out --layers and --backend")
        generation = GenerationConfig(cases=config, phrasings=phrasings, max_tokens=max_tokens, modelfile=modelfile)
        return _generate(model, generation, ranks=ranks, as_json=as_json, per_user=per_user)
    if modelfile is not None or ranks is not None:
        raise UsageError("--modelfile and --ranks belong to --mode generate", hint="add --mode generate, or leave them out")
    _rank(model, config, layers=layers, as_json=as_json, per_user=per_user)


def _prompt_settings(model: str, run_dir: Path | None, **given: object) -> tuple:
    """``history``, ``title_words`` and ``task_format``: as given, else the ``prune`` run's of ``model`` (or of
    ``--run-dir``), else the defaults. A run's settings that are used are said on stderr."""
    from ollama_slim.pipeline.config import read_record
    from ollama_slim.pipeline.layout import RunLayout, run_of

    run = run_of(model) or (run_of(run_dir) if run_dir is not None else None)
    record = RunLayout(run).prune_record if run is not None else None
    recorded = read_record(run, hint="give --task-format, --history and --title-words") if run is not None else {}
    taken = {key: recorded[key] for key, value in given.items() if value is None and key in recorded}
    if taken:
        said = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in taken.items())
        Console(stderr=True).print(f"{said} from {record} (options override)", markup=False, highlight=False)
    return tuple(given[key] if given[key] is not None else taken.get(key, _DEFAULTS[key]) for key in ("history", "title_words", "task_format"))


def _rank(model: str, config: EvalConfig, *, layers: list[int] | None, as_json: bool, per_user: bool) -> None:
    """The ranking evaluation, shown."""
    from ollama_slim.recsys.evaluate import evaluate

    data, split = config.data, config.split
    console = Console(stderr=True)
    with live(TextColumn("[bold]eval[/] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), transient=as_json) as bar:
        task = bar.add_task(f"{model} on {data} ({split})", total=None)
        result = evaluate(model, config, layers=layers, progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        click.echo(json.dumps(result.to_json(per_user=per_user), indent=2))
        return
    Console().print(_table(result))
    d = result.data
    console.print(f"data {d['name']}: {d['users']} users, {d['items']} items, {d['interactions']} interactions ({d['dropped_users']} users with < 3 interactions dropped)")
    if result.seconds > 0:
        console.print(f"scored {result.tokens} tokens in {result.seconds:.1f}s ({result.tokens / result.seconds:.0f} tokens/s); ties count as a random order of the tied candidates")


def _table(result) -> Table:
    """Metrics (with 95% intervals) of the model and both baselines, one row per metric."""
    d = result.data
    table = Table(title=f"{result.model} on {d['name']} ({result.config.split}, {len(result.users)} users, 1+{result.candidates - 1} {result.config.regime} candidates)")
    for name in ("metric", "model [95% CI]", "popularity [95% CI]", "random"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    for metric, value in result.metrics.items():
        pop = result.popularity[metric]
        table.add_row(metric, f"{value.mean:.3f} [{value.low:.3f}, {value.high:.3f}]", f"{pop.mean:.3f} [{pop.low:.3f}, {pop.high:.3f}]", f"{result.random[metric]:.3f}")
    return table


_FIGURE_NAMES = {"title": "a catalogue title", "new_title": "a title not listed", "target": "the target", "target_or_top10": "target, or ranked top 10"}


def _generate(model: str, config: GenerationConfig, *, ranks: Path | None, as_json: bool, per_user: bool) -> None:
    """The generation-mode measure, shown."""
    from ollama_slim.recsys.generation import evaluate_generation, verdict

    with live(TextColumn("[bold]eval[/] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), transient=as_json) as bar:
        task = bar.add_task(f"{model} on {config.cases.data} ({config.cases.split}, generate)", total=None)
        result = evaluate_generation(model, config, ranks=ranks, progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        click.echo(json.dumps(result.to_json(per_user=per_user), indent=2))
        return
    Console().print(_generation_table(result))
    console = Console(stderr=True)
    for n, ex in enumerate(result.examples, start=1):
        console.print(f"[bold]example {n}[/] ({ex['phrasing']}), user {ex['user']}:", markup=True)
        console.print(ex["message"], markup=False)
        console.print(f"-> {ex['answer']!r}: {verdict(ex)}", markup=False)
    if result.seconds > 0:
        console.print(f"generated {result.tokens} tokens in {result.seconds:.1f}s; template, system and stops from {result.chat.source}", markup=False)


def _generation_table(result) -> Table:
    """The shares of users whose answer is each kind, with 95% intervals, and the distinct answers."""
    cfg = result.config
    table = Table(title=f"{result.model} on {result.data['name']} ({cfg.cases.split}, {len(result.users)} users, greedy answers of <= {cfg.max_tokens} tokens; phrasings {', '.join(cfg.phrasings)})")
    table.add_column("the answer is", justify="left")
    table.add_column("share of users [95% CI]", justify="right")
    for name, value in result.figures.items():
        table.add_row(_FIGURE_NAMES[name], f"{value.mean:.3f} [{value.low:.3f}, {value.high:.3f}]")
    table.add_row("distinct (answers / users)", f"{result.distinct:.3f}")
    table.add_row("distinct titles not listed (/ users)", f"{result.distinct_titles:.3f}")
    table.add_row("most common answer", f"{result.top_answer[0][:40]!r} x {result.top_answer[1]}")
    return table
