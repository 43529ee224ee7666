"""``ollama-slim score``: one importance score per layer per method, and a fused ranking."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ollama_slim.slimming.importance import DEFAULT_METHODS, METHODS


def _methods(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


@click.command("score")
@click.argument("model")
@click.option("--data", required=True, metavar="DIR_OR_NAME", help="Data set (directory or name); only its train split is used.")
@click.option("--methods", default=",".join(DEFAULT_METHODS), show_default=True, metavar="LIST",
              help=f"Comma-separated importance methods: {', '.join(METHODS)}.")
@click.option("--calib-users", default=64, show_default=True, type=int, help="Calibration users (one train example each).")
@click.option("--shapley-permutations", default=8, show_default=True, type=int, help="Permutations sampled for the Shapley values.")
@click.option("--run-dir", type=click.Path(path_type=Path), help="Run directory [default: runs/<model>].")
@click.option("--hf", metavar="REPO_OR_DIR", help="Hugging Face repo id or directory to use for MODEL.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--device-map", default=None, metavar="MAP", help="accelerate device map, e.g. auto (spread over several GPUs).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the user sample and the permutations.")
def command(model: str, data: str, methods: str, calib_users: int, shapley_permutations: int, run_dir: Path | None, hf: str | None,
            dtype: str, device_map: str | None, seed: int) -> None:
    """Score how much each layer of MODEL matters for next-item recommendation.

    Runs each method on the train split of --data (never validation or test), fuses
    them by mean rank, and writes scores.json and scores.png to the run directory.
    """
    from ollama_slim.slimming.importance import ScoreConfig, score_layers

    config = ScoreConfig(model=model, data=data, methods=_methods(methods), calib_users=calib_users, shapley_permutations=shapley_permutations,
                         run_dir=run_dir, hf=hf, dtype=dtype, device_map=device_map, seed=seed)
    err = Console(stderr=True)
    with err.status(f"Scoring the layers of {model}...") as status:
        result = score_layers(config, progress=lambda text: status.update(f"Scoring the layers of {model}: {text}"))
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
