"""``ollama-slim export``: a model directory -> one GGUF, checked by llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ollama_slim.cli.display import verbose_option, working
from ollama_slim.cli.options import RegistryChoice, defaults
from ollama_slim.gguf.export import ExportConfig, outtypes


@click.command("export")
@click.argument("model_dir", metavar="DIR_OR_RUN", type=click.Path(path_type=Path))
@click.option("--outtype", type=RegistryChoice(outtypes()), default=defaults(ExportConfig)["outtype"], show_default=True, help="Tensor type: f32/f16/bf16/q8_0 written directly, K-quants (q4_k_m...) by llama.cpp's quantizer.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Output GGUF file [default: <DIR>-<outtype>.gguf beside DIR; RUN/model.gguf for a run].")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--tokenizer-gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Copy the tokenizer from this GGUF (default: the source GGUF recorded by build, else tokenizer.json).")
@click.option("--no-check", is_flag=True, help="Skip the acceptance check (llama.cpp vs transformers logits).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@verbose_option
def command(model_dir: Path, outtype: str, out: Path | None, force: bool, tokenizer_gguf: Path | None, no_check: bool, as_json: bool) -> None:
    """Export DIR (a `build` output or any Llama/Qwen2 directory) to GGUF.

    The GGUF carries the tokenizer, chat template and provenance (source model, kept
    layers, bridge). Unless --no-check, llama.cpp loads it and its logits on 20
    fixed prompts are compared with transformers'; a GGUF that fails is not kept.
    For a run directory RUN, its healed (else compact) model becomes RUN/model.gguf,
    with RUN/Modelfile, the original at the same outtype and RUN/export.json.
    """
    with working(f"Exporting {model_dir} to {outtype} GGUF{'' if no_check else ' and checking it in llama.cpp'}..."):
        result = _export(model_dir, outtype=outtype, out=out, force=force, check=not no_check, tokenizer_gguf=tokenizer_gguf)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    table = Table(title=f"ollama-slim export {model_dir}", show_header=False)
    table.add_row("GGUF", str(result.path))
    table.add_row("size", f"{result.size_bytes / 2**20:.1f} MiB ({result.n_tensors} tensors, {outtype})")
    table.add_row("tokenizer", f"{result.tokenizer} (pre-tokenizer {result.pre_tokenizer})")
    check = result.check
    if check is None:
        table.add_row("llama.cpp check", "skipped (--no-check)")
    else:
        table.add_row("llama.cpp check", f"[green]passed[/green]: max |dlogit| {check.max_abs_diff:.3g} ({check.rel_diff:.2g} x max |logit|), top-1 {check.top1_agree}/{check.n_prompts}, top-5 {check.top5_agree}/{check.n_prompts}")
    table.add_row("time", f"{result.seconds:.1f}s")
    Console().print(table)


def _export(model_dir: Path, *, outtype: str, out: Path | None, force: bool, check: bool, tokenizer_gguf: Path | None) -> Any:
    """The export stage of a run directory, else a plain export of a model directory."""
    from ollama_slim.errors import UsageError
    from ollama_slim.gguf.export import export_gguf
    from ollama_slim.gguf.run_export import RunExportConfig, export_run
    from ollama_slim.pipeline.layout import RunLayout, is_run_dir

    if not is_run_dir(model_dir):
        return export_gguf(ExportConfig(model_dir=model_dir, outtype=outtype, out=out, force=force, check=check, tokenizer_gguf=tokenizer_gguf))
    if out is not None:
        raise UsageError(f"--out does not go with a run directory: {model_dir} exports to {RunLayout(model_dir).gguf}", hint="export RUN/healed --out FILE for another file")
    return export_run(RunExportConfig(run_dir=model_dir, outtype=outtype, force=force, check=check, tokenizer_gguf=tokenizer_gguf))
