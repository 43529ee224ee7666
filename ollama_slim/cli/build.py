"""``ollama-slim build``: a compact model from a subset of layers."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ollama_slim.cli.display import verbose_option, working
from ollama_slim.cli.options import OWN_TEXT_HELP, RegistryChoice, defaults
from ollama_slim.models.modeling import DTYPES
from ollama_slim.slimming.bridges import BRIDGES
from ollama_slim.slimming.build import BuildConfig

_DEFAULTS = defaults(BuildConfig)


@click.command("build")
@click.argument("model")
@click.option("--layers", metavar="LIST", help="Layers to keep, in order: comma-separated indices or ranges, e.g. 0,1,2,27-29.")
@click.option("--selection", type=click.Path(dir_okay=False, path_type=Path), help="A selection file written by `ollama-slim select` (instead of --layers).")
@click.option("--bridge", type=RegistryChoice(BRIDGES), default=_DEFAULTS["bridge"], show_default=True, help="How to bridge the gaps left by removed layers.")
@click.option("--data", metavar="DIR_OR_NAME", multiple=True,
              help="Data set (name or directory) whose train split calibrates the bridge fit. Give it twice or more to fit the bridges "
                   "on every set's prompts (the calibration tokens shared evenly): a compact model for all the domains, not only one.")
@click.option("--own-text", is_flag=True,
              help=OWN_TEXT_HELP)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Output directory [default: RUN/compact with --run-dir, else ./<model>-keep<N>].")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="A run directory: its selection.json is the default --selection, RUN/compact the default --out, and the result goes to RUN/build.json.")
@click.option("--hf", metavar="REPO_OR_DIR", help="Hugging Face repo id or local directory to use for MODEL.")
@click.option("--dtype", type=click.Choice(DTYPES), default=_DEFAULTS["dtype"], show_default=True, help="Weight dtype of the compact model.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@verbose_option
def command(model: str, layers: str | None, selection: Path | None, bridge: str, data: tuple[str, ...], own_text: bool, out_dir: Path | None, run_dir: Path | None, hf: str | None,
            dtype: str, force: bool, as_json: bool) -> None:
    """Build a compact model from MODEL keeping only some decoder layers.

    MODEL is an Ollama tag, a Hugging Face directory or a GGUF file. The kept layers
    are renumbered and saved with the tokenizer and chat template as a plain
    safetensors directory (loadable by `from_pretrained`), with a slim.json recording
    where it came from. Then: `ollama-slim export DIR`.
    """
    from ollama_slim.slimming.build import build_compact, parse_layers

    config = BuildConfig(
        model=model, layers=parse_layers(layers) if layers is not None else None, selection=selection,
        out_dir=out_dir, bridge=bridge, data=data[0] if data else None, calib_data=data[1:], own_text=own_text, dtype=dtype, hf=hf, force=force, run_dir=run_dir, bridge_fallback=False,
    )
    with working(f"Building a compact {model}..."):
        result = build_compact(config)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    table = Table(title=f"ollama-slim build {model}", show_header=False)
    rows = [
        ("kept layers", f"{','.join(map(str, result.kept))} ({len(result.kept)} of {result.num_layers_before})"),
        ("parameters", f"{result.num_params_before / 1e6:.1f}M -> {result.num_params_after / 1e6:.1f}M"),
        ("bridge", result.bridge.get("kind", bridge)), ("written to", str(result.out_dir)), ("time", f"{result.seconds:.1f}s"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
