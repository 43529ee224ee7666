"""``ollama-slim register``: a GGUF into the user's Ollama."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table


@click.command("register")
@click.argument("source", metavar="GGUF_OR_DIR", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Ollama model name, e.g. smollm2-slim or smollm2-slim:q8.")
@click.option("--force", is_flag=True, help="Replace a model of that name if Ollama already has one.")
@click.option("--host", metavar="URL", help="Ollama server (default: $OLLAMA_HOST, else http://127.0.0.1:11434).")
@click.option("--chat", metavar="FAMILY", help="Chat template family to use instead of the original's (chatml, llama3).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(source: Path, name: str, force: bool, host: str | None, chat: str | None, as_json: bool) -> None:
    """Register GGUF_OR_DIR (a GGUF, or a run directory holding one) in Ollama as NAME.

    Uploads the GGUF as a blob, then creates the model with the original model's
    TEMPLATE and stop tokens, taken from the Modelfile beside the GGUF (written
    first when there is none). An existing model is replaced only with --force.
    """
    from ollama_slim.ollama.register import register

    with Console(stderr=True).status(f"Registering {source} as {name}..."):
        result = register(source=source, name=name, force=force, host=host, chat=chat)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    table = Table(title=f"ollama-slim register {name}", show_header=False)
    rows = [
        ("name", result.name), ("Ollama", result.host), ("GGUF", str(result.gguf)), ("size", f"{result.size_bytes / 1e6:.1f} MB"),
        ("digest", result.digest), ("Modelfile", str(result.modelfile or "- (directory not writable)")), ("template from", result.template_source),
        ("stop tokens", ", ".join(result.stops) or "-"), ("replaced", "yes" if result.replaced else "no"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
    click.echo(f"Run it with: ollama run {result.name}")
