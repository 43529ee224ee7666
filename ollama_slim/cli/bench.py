"""``ollama-slim bench``: speed of the original and the slim model, side by side."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ollama_slim.cli.display import verbose_option, working
from ollama_slim.bench.speed import BenchConfig, backend_names
from ollama_slim.cli.options import RegistryChoice, defaults

_DEFAULTS = defaults(BenchConfig)


def _fmt(value: float | None, spec: str = ".1f", prefix: str = "") -> str:
    return "-" if value is None else f"{prefix}{value:{spec}}"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f} MB"


@click.command("bench")
@click.argument("original")
@click.argument("slim")
@click.option("--backend", type=RegistryChoice(backend_names()), default=_DEFAULTS["backend"], show_default=True, help="auto: Ollama when a server answers, else llama.cpp.")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), help="Text file, one prompt per line (default: three built-in prompts).")
@click.option("--repeats", type=int, default=_DEFAULTS["repeats"], show_default=True, help="Measured rounds per model (after one warm-up).")
@click.option("--tokens", "n_predict", type=int, default=_DEFAULTS["n_predict"], show_default=True, help="Tokens to generate per prompt.")
@click.option("--threads", type=int, help="llama.cpp threads (default: its own choice).")
@click.option("--host", metavar="URL", help="Ollama server (default: $OLLAMA_HOST, else http://127.0.0.1:11434).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--png", "png", type=click.Path(path_type=Path), help="Also write a bar chart to this PNG file.")
@verbose_option
def command(original: str, slim: str, backend: str, prompts_file: Path | None, repeats: int, n_predict: int, threads: int | None, host: str | None, as_json: bool, png: Path | None) -> None:
    """Prompt and generation tokens/s of ORIGINAL and SLIM, in one run, as ratios.

    ORIGINAL and SLIM are Ollama model names (ollama backend), GGUF files or run
    directories (llama-cpp backend; an Ollama tag such as smollm2:135m resolves to
    its GGUF). Warm-up first, then alternating rounds; medians with min-max. The
    ceiling column is what the parameter counts allow. When SLIM is a run directory,
    the result is also its bench.json.
    """
    from ollama_slim.bench.speed import bench, plot_bench, read_prompts

    config = BenchConfig(original=original, slim=slim, backend=backend, repeats=repeats, n_predict=n_predict, threads=threads, host=host)
    if prompts_file is not None:
        config = replace(config, prompts=read_prompts(prompts_file))
    with working(f"Benchmarking {original} and {slim}..."):
        result = bench(config)
    if png is not None:
        plot_bench(result, png)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    Console().print(_table(result))


def _table(result: Any) -> Table:
    o, s, r, c = result.original, result.slim, result.ratios, result.ceilings
    table = Table(title=f"ollama-slim bench ({result.backend}, median of {result.config['repeats']} rounds, min-max)")
    for column in ("", "original", "slim", "slim / original", "ceiling"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row("model", o.target, s.target, "", "")
    table.add_row("prompt tokens/s", f"{o.prompt_tps.median:.1f} ({o.prompt_tps.min:.1f}-{o.prompt_tps.max:.1f})",
                  f"{s.prompt_tps.median:.1f} ({s.prompt_tps.min:.1f}-{s.prompt_tps.max:.1f})", _fmt(r["prompt_tps"], ".2f", "x"), _fmt(c["prompt_tps"], ".2f", "x"))
    table.add_row("generation tokens/s", f"{o.gen_tps.median:.1f} ({o.gen_tps.min:.1f}-{o.gen_tps.max:.1f})",
                  f"{s.gen_tps.median:.1f} ({s.gen_tps.min:.1f}-{s.gen_tps.max:.1f})", _fmt(r["gen_tps"], ".2f", "x"), _fmt(c["gen_tps"], ".2f", "x"))
    table.add_row("file size", _mb(o.size_bytes), _mb(s.size_bytes), _fmt(r["size"], ".2f", "x"), "")
    table.add_row("peak memory", _mb(o.peak_memory_bytes), _mb(s.peak_memory_bytes), _fmt(r["peak_memory"], ".2f", "x"), "")
    table.add_row("blocks", _fmt(o.params.blocks if o.params else None, "d"), _fmt(s.params.blocks if s.params else None, "d"), "", "")
    return table
