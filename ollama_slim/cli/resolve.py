"""``ollama-slim resolve``: where a model's weights come from."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table


@click.command("resolve")
@click.argument("model", required=False)
@click.option("--hf", "hf", metavar="REPO_OR_DIR", help="Hugging Face repo id or local directory to use for MODEL.")
@click.option("--list", "list_tags", is_flag=True, help="List the built-in Ollama tags.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), help="Also record the result in this run directory, as resolve.json.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(model: str | None, hf: str | None, list_tags: bool, run_dir: Path | None, as_json: bool) -> None:
    """Resolve MODEL (an Ollama tag, HF directory or GGUF file) to local weights.

    Tries, in order: --hf, the tag table's Hugging Face repo (cache, then download),
    the GGUF of the model in your Ollama store, and the offline copy a package
    carries (smollm2:135m). Prints architecture, layers, parameters and source.
    """
    from ollama_slim.models.sources import ResolveConfig, resolve_model
    from ollama_slim.models.tags import known_tags

    if list_tags or model is None:
        click.echo("\n".join(known_tags()))
        return
    with Console(stderr=True).status(f"Resolving {model}..."):
        resolved = resolve_model(ResolveConfig(model=model, hf=hf, run_dir=run_dir))
    if as_json:
        click.echo(json.dumps(resolved.to_json(), indent=2))
        return
    table = Table(title=f"ollama-slim resolve {model}", show_header=False)
    rows = [
        ("tag", resolved.tag or "-"), ("Hugging Face repo", resolved.hf_repo or "-"), ("architecture", resolved.arch),
        ("layers", str(resolved.num_layers)), ("parameters", f"{resolved.num_params / 1e6:.1f}M"),
        ("chat template", resolved.chat or "-"), ("source", resolved.source), ("weights from", resolved.origin),
        ("local directory", str(resolved.model_dir)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
