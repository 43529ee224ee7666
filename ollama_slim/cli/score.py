"""``ollama-slim score``: one importance score per layer per method, and a fused ranking."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ollama_slim.cli.display import verbose_option, working
from ollama_slim.cli.options import comma_list, defaults
from ollama_slim.models.modeling import DTYPES
from ollama_slim.slimming.importance import METHODS, ScoreConfig

_DEFAULTS = defaults(ScoreConfig)


@click.command("score")
@click.argument("model")
@click.option("--data", required=True, metavar="DIR_OR_NAME", help="Data set (directory or name); only its train split is used.")
@click.option("--methods", default=",".join(_DEFAULTS["methods"]), show_default=True, metavar="LIST", callback=comma_list(lambda: METHODS, unknown="unknown importance method"),
              help=f"Comma-separated importance methods: {', '.join(METHODS)}.")
@click.option("--calib-users", default=_DEFAULTS["calib_users"], show_default=True, type=int, help="Calibration users (one train example each).")
@click.option("--shapley-permutations", default=_DEFAULTS["shapley_permutations"], show_default=True, type=int, help="Permutations sampled for the Shapley values.")
@click.option("--run-dir", type=click.Path(path_type=Path), help="Run directory [default: runs/<model>].")
@click.option("--hf", metavar="REPO_OR_DIR", help="Hugging Face repo id or directory to use for MODEL.")
@click.option("--dtype", default=_DEFAULTS["dtype"], show_default=True, type=click.Choice(DTYPES))
@click.option("--device-map", default=None, metavar="MAP", help="accelerate device map, e.g. auto (spread over several GPUs).")
@click.option("--seed", default=_DEFAULTS["seed"], show_default=True, type=int, help="Seed of the user sample and the permutations.")
@verbose_option
def command(model: str, data: str, methods: tuple[str, ...], calib_users: int, shapley_permutations: int, run_dir: Path | None, hf: str | None,
            dtype: str, device_map: str | None, seed: int) -> None:
    """Score how much each layer of MODEL matters for next-item recommendation.

    Runs each method on the train split of --data (never validation or test), fuses
    them by mean rank, and writes scores.json and scores.png to the run directory.
    """
    from ollama_slim.slimming.importance import score_layers

    config = ScoreConfig(model=model, data=data, methods=methods, calib_users=calib_users, shapley_permutations=shapley_permutations,
                         run_dir=run_dir, hf=hf, dtype=dtype, device_map=device_map, seed=seed)
    with working(f"Scoring the layers of {model}...") as status:
        result = score_layers(config, progress=lambda text: status(f"Scoring the layers of {model}: {text}"))
    console = Console()
    width = max(4, (console.width - 18) // 7)  # layers per table that fit the terminal
    for start in range(0, result.num_layers, width):
        layers = range(start, min(start + width, result.num_layers))
        table = Table(title=f"layer importance of {model}, layers {layers[0]}-{layers[-1]} (higher = more important)")
        table.add_column("method", no_wrap=True)
        for i in layers:
            table.add_column(str(i), justify="right", no_wrap=True)
        for name, scores in result.methods.items():
            table.add_row(name, *[f"{scores.scores[i]:.3g}" for i in layers])
        table.add_row("fused", *[f"{result.fused[i]:.2f}" for i in layers], style="bold")
        console.print(table)
    click.echo(f"most important first: {' '.join(map(str, result.order))}")
    click.echo(f"wrote {result.path} and {result.png}")
