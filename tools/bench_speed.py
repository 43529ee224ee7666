"""Speed benchmark of issue 6: SmolLM2-135M against itself with 10 of 30 layers kept.

    python tools/bench_speed.py [--model smollm2:135m] [--layers 0,1,2,3,10,11,20,27,28,29]
                                [--outtype q8_0] [--work DIR] [--repeats 7] [--tokens 64] [--threads 1]

Builds the slim model (plain drop, no bridge), exports original and slim at the same
outtype (GGUFs kept in --work and reused by later runs), then runs `ollama-slim bench`'s
library with the llama-cpp backend: warm-up, alternating rounds, medians. Prints JSON on
stdout and a table on stderr: the measured ratios slim/original, the targets (generation
>= 1.8, prompt >= 2.4) and the ceilings the parameter counts allow.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ollama_slim import paths  # noqa: E402
from ollama_slim.bench.speed import BenchConfig, BenchResult, bench  # noqa: E402
from ollama_slim.slimming.build import BuildConfig, build_compact, parse_layers  # noqa: E402
from ollama_slim.gguf.export import ExportConfig, export_gguf  # noqa: E402
from ollama_slim.models.sources import resolve  # noqa: E402

TARGETS = {"gen_tps": 1.8, "prompt_tps": 2.4}
DEFAULT_LAYERS = "0,1,2,3,10,11,20,27,28,29"


def _gguf(model_dir: Path, out: Path, outtype: str) -> Path:
    """Export ``model_dir`` to ``out`` unless an earlier run already did."""
    if not out.is_file():
        result = export_gguf(ExportConfig(model_dir=model_dir, outtype=outtype, out=out))
        print(f"exported {out.name}: {result.size_bytes / 1e6:.1f} MB, check {result.check.reason if result.check else 'skipped'}", file=sys.stderr)
    return out


def prepare(*, model: str, layers: tuple[int, ...], outtype: str, work: Path) -> tuple[Path, Path]:
    """(original GGUF, slim GGUF), both at ``outtype``."""
    work.mkdir(parents=True, exist_ok=True)
    original_dir = resolve(model).model_dir
    slim_dir = work / f"slim-keep{len(layers)}"
    if not (slim_dir / "config.json").is_file():
        build_compact(BuildConfig(model=model, layers=layers, out_dir=slim_dir, bridge="none", force=True))
    original = _gguf(original_dir, work / f"original-{outtype}.gguf", outtype)
    slim = _gguf(slim_dir, work / f"slim-keep{len(layers)}-{outtype}.gguf", outtype)
    return original, slim


def table(result: BenchResult) -> Table:
    out = Table(title=f"slim / original ({result.backend}, {result.config['threads']} thread(s), median of {result.config['repeats']} rounds)")
    for column in ("", "original tok/s", "slim tok/s", "ratio", "target", "ceiling", "verdict"):
        out.add_column(column, justify="right" if column else "left")
    for key, label in (("prompt_tps", "prompt"), ("gen_tps", "generation")):
        o, s = getattr(result.original, key), getattr(result.slim, key)
        ratio, ceiling = result.ratios[key], result.ceilings[key]
        out.add_row(label, f"{o.median:.1f} ({o.min:.1f}-{o.max:.1f})", f"{s.median:.1f} ({s.min:.1f}-{s.max:.1f})",
                    f"x{ratio:.2f}", f">= x{TARGETS[key]}", f"x{ceiling:.2f}" if ceiling else "-", "met" if ratio >= TARGETS[key] else "MISSED")
    out.add_row("file size", f"{result.original.size_bytes / 1e6:.1f} MB", f"{result.slim.size_bytes / 1e6:.1f} MB", f"x{result.ratios['size']:.2f}", "", "", "")
    out.add_row("peak memory", f"{result.original.peak_memory_bytes / 1e6:.0f} MB", f"{result.slim.peak_memory_bytes / 1e6:.0f} MB", f"x{result.ratios['peak_memory']:.2f}", "", "", "")
    return out


@click.command()
@click.option("--model", default="smollm2:135m", show_default=True)
@click.option("--layers", default=DEFAULT_LAYERS, show_default=True, help="Kept layers (plain drop).")
@click.option("--outtype", default="q8_0", show_default=True)
@click.option("--work", type=click.Path(path_type=Path), help="Where the GGUFs are kept (default: the ollama-slim cache, bench-speed/).")
@click.option("--repeats", type=int, default=7, show_default=True)
@click.option("--tokens", type=int, default=64, show_default=True, help="Tokens generated per prompt.")
@click.option("--threads", type=int, default=1, show_default=True, help="llama.cpp threads (the same for both models).")
@click.option("--strict", is_flag=True, help="Exit 1 when a target is missed.")
def main(model: str, layers: str, outtype: str, work: Path | None, repeats: int, tokens: int, threads: int, strict: bool) -> None:
    work = work or paths.home() / "bench-speed"
    original, slim = prepare(model=model, layers=parse_layers(layers), outtype=outtype, work=work)
    result = bench(BenchConfig(original=str(original), slim=str(slim), backend="llama-cpp", repeats=repeats, n_predict=tokens, threads=threads))
    click.echo(json.dumps(result.to_json() | {"targets": TARGETS}, indent=2))
    Console(stderr=True).print(table(result))
    if strict and any(result.ratios[k] < v for k, v in TARGETS.items()):
        sys.exit(1)


if __name__ == "__main__":
    main()
