"""``ollama-slim select``: choose the layers to keep, measured on the validation split."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ollama_slim.cli.display import verbose_option, working
from ollama_slim.cli.options import RegistryChoice, defaults
from ollama_slim.models.modeling import DTYPES
from ollama_slim.slimming.selection import STRATEGIES, SelectConfig

_DEFAULTS = defaults(SelectConfig)


@click.command("select")
@click.argument("run_or_model")
@click.option("--keep", type=int, help="Number of layers to keep.")
@click.option("--min-retained", type=float, help="Keep the fewest layers that retain this share of the full model's NDCG@10 lift over chance.")
@click.option("--strategy", type=RegistryChoice(STRATEGIES, unknown="unknown selection strategy"), default=_DEFAULTS["strategy"], show_default=True,
              help="Selection strategy.")
@click.option("--data", metavar="DIR_OR_NAME", multiple=True,
              help="Data set [default: the one the scores were computed on]. Give it twice or more to measure the validation users "
                   "of every set (--val-users from each): layers that serve all the domains, not only one.")
@click.option("--val-users", default=_DEFAULTS["val_users"], show_default=True, type=int, help="Validation users to evaluate subsets on.")
@click.option("--run-dir", type=click.Path(path_type=Path), help="Run directory when RUN_OR_MODEL is a model [default: runs/<model>].")
@click.option("--hf", metavar="REPO_OR_DIR", help="Hugging Face repo id or directory to use for the model.")
@click.option("--dtype", default=_DEFAULTS["dtype"], show_default=True, type=click.Choice(DTYPES))
@click.option("--device-map", default=None, metavar="MAP", help="accelerate device map, e.g. auto.")
@verbose_option
def command(run_or_model: str, keep: int | None, min_retained: float | None, strategy: str, data: tuple[str, ...], val_users: int,
            run_dir: Path | None, hf: str | None, dtype: str, device_map: str | None) -> None:
    """Select the layers of a model to keep (RUN_OR_MODEL: a run directory or a model).

    `ranked` adds layers in the fused importance order of `score` (scoring first if
    the run has no scores), `backward` removes and `forward` adds layers greedily;
    each step is measured on the validation split. Writes selection.json (read by
    `build`) and selection.png.
    """
    from ollama_slim.slimming.selection import select_layers

    config = SelectConfig(source=run_or_model, keep=keep, min_retained=min_retained, strategy=strategy, data=data[0] if data else None,
                          also_data=data[1:], val_users=val_users,
                          run_dir=run_dir, hf=hf, dtype=dtype, device_map=device_map)
    with working("Selecting layers...") as status:
        result = select_layers(config, progress=lambda text: status(f"Selecting layers ({strategy}): {text}"))
    table = Table(title=f"{strategy} selection on {val_users} validation users" + (f" from each of {len(data)} data sets" if len(data) > 1 else ""))
    for name in ("layers kept", "changed", "val loss", "NDCG@10", "retained"):
        table.add_column(name, justify="right")
    table.add_row(f"all {result.num_layers}", "", f"{result.full.val_loss:.4f}", f"{result.full.ndcg10:.4f}", "1.00", style="dim")
    for step in result.steps:
        retained = "-" if step.retained is None else f"{step.retained:.2f}"
        table.add_row(str(len(step.layers)), str(step.changed), f"{step.val_loss:.4f}", f"{step.ndcg10:.4f}", retained)
    Console().print(table)
    search = result.cache["search"]
    if search["evaluations"]:
        click.echo(f"search layer forwards: {search['layer_forwards']} with prefix caching, {search['naive_layer_forwards']} naive")
    click.echo(f"kept {len(result.kept)} of {result.num_layers}: {','.join(map(str, result.kept))}")
    click.echo(f"wrote {result.path} and {result.png}")
