"""``ollama-slim share``: a run -> a Hugging Face GGUF repository folder, optionally published."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.cli.display import verbose_option, working
from ollama_slim.sharing.share import DEFAULT_QUANTS


@click.command("share")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="The folder to write [default: RUN/hub].")
@click.option("--quants", default=",".join(DEFAULT_QUANTS), show_default=True, metavar="Q,Q,...", help="The quantization ladder: one GGUF each, named <name>-<QUANT>.gguf.")
@click.option("--license", "license_id", metavar="ID", help="The original's licence (e.g. apache-2.0), when it cannot be found in the Ollama store, the HF card or the tag table.")
@click.option("--name", help="Model and file name [default: the registered name, else the run folder's name].")
@click.option("--users", type=int, help="Test users each GGUF is scored on [default: the run's own evaluation].")
@click.option("--repeats", type=int, default=3, show_default=True, help="Speed repeats per GGUF (0: no timing).")
@click.option("--hf", "hf_repo", metavar="USER/REPO", help="Upload the folder to this Hugging Face repository (created if needed; one commit; your `hf auth login` token).")
@click.option("--private", is_flag=True, help="With --hf: create the repository private.")
@click.option("--ollama", "ollama_name", metavar="USER/NAME", help="Copy the registered model to USER/NAME and push it to Ollama's registry.")
@click.option("--host", metavar="URL", help="Ollama server for --ollama (default: $OLLAMA_HOST, else http://127.0.0.1:11434).")
@click.option("--force", is_flag=True, help="Replace an existing folder, Hub repository content or pushed model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@verbose_option
def command(run_dir: Path, out: Path | None, quants: str, license_id: str | None, name: str | None, users: int | None, repeats: int,
            hf_repo: str | None, private: bool, ollama_name: str | None, host: str | None, force: bool, as_json: bool) -> None:
    """Prepare RUN (a `prune` run) for sharing, the way the community shares GGUFs.

    Writes a folder that is a complete Hugging Face repository: a GGUF per quantization
    (each checked in llama.cpp, scored on the run's test users and timed), Ollama's
    `template`, `system` and `params` files, the Modelfile, a model card (README.md) and
    the original's LICENSE with the duties of its licence applied. Anyone can then
    `ollama run hf.co/USER/REPO`. With --hf it is uploaded; with --ollama the registered
    model is pushed to ollama.com. Rerunning with nothing changed does nothing.
    """
    from ollama_slim.sharing.share import PublishConfig, ShareConfig, prepare_share, publish

    config = ShareConfig(run_dir=run_dir, out=out or RunLayout(run_dir).hub_dir, quants=tuple(q for q in quants.split(",") if q.strip()), license=license_id,
                         name=name, users=users, bench_repeats=repeats, repo=hf_repo, force=force)
    console = Console(stderr=True)
    with working(f"Preparing {config.out}...") as status:
        result = prepare_share(config, progress=status)
    record = {"folder": result.to_json()}
    if hf_repo or ollama_name:
        with working("Publishing...") as status:
            record = publish(result, run_dir, PublishConfig(hf=hf_repo, private=private, ollama=ollama_name, host=host, force=force), progress=lambda p: status(_progress(p)))
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
        return
    Console().print(_table(result))
    for warning in result.warnings:
        console.print(f"[yellow]Warning:[/] {warning}")
    _published(console, record)


def _progress(p: object) -> str:
    if isinstance(p, str):
        return p
    total, done = getattr(p, "total", None), getattr(p, "completed", None)
    status = getattr(p, "status", str(p))
    return f"{status} {100 * done / total:.0f}%" if total and done is not None else status


def _table(result) -> Table:
    table = Table(title=f"ollama-slim share → {result.out}{' (up to date)' if result.reused else ''}")
    for column in ("file", "size", "NDCG@10 [95% CI]", "gen tokens/s", "speed-up gen"):
        table.add_column(column, justify="left" if column == "file" else "right")
    for q in result.quants:
        speedup = q.speedup.get("gen_tps") if q.speedup else None
        table.add_row(q.file, f"{q.size_bytes / 2**20:.1f} MiB", f"{q.ndcg['mean']:.3f} [{q.ndcg['low']:.3f}, {q.ndcg['high']:.3f}]",
                      f"{q.gen_tps:.1f}" if q.gen_tps else "-", f"{speedup:.2f}x" if speedup else "-")
    table.caption = f"licence {result.license['name']}; files: {', '.join(result.files)}"
    return table


def _published(console: Console, record: dict) -> None:
    hf = record.get("hf")
    if hf:
        state = "unchanged, nothing uploaded" if hf.get("unchanged") else f"commit {hf.get('commit')}"
        console.print(f"Hugging Face: {hf.get('url')} ({state}). Run it: ollama run hf.co/{hf.get('repo')}")
    pushed = record.get("ollama")
    if pushed:
        console.print(f"Ollama: {pushed.get('dest')} ({'unchanged, nothing pushed' if pushed.get('unchanged') else 'pushed'})")
