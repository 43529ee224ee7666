"""The README's quickstart figures, from a real run of the quickstart with today's defaults.

    python tools/quickstart_figures.py [--workdir DIR] [--write-readme]
    python tools/quickstart_figures.py --from-json docs/quickstart_figures.json [--write-readme]

Runs the README's quickstart command exactly (``ollama-slim prune smollm2:135m --keep 10
--no-register``) in --workdir (default: a new temp dir, kept), so the run directory is
DIR/runs/smollm2-slim; times it end to end and runs it again to time a rerun with
everything present; reads the run's own files (stage seconds, the original's and the
slim model's NDCG@10 with 95% intervals, the baselines, the speed ratios). Prints the
figures as JSON on stdout and a table on stderr. --write-readme saves them to
docs/quickstart_figures.json and rewrites the README paragraph between
``<!-- quickstart-figures -->`` and ``<!-- /quickstart-figures -->``; a test checks the
two agree, so the README's figures cannot drift from a real run.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ollama_slim import paths  # noqa: E402
from ollama_slim.pipeline.layout import RunLayout  # noqa: E402

COMMAND = "ollama-slim prune smollm2:135m --keep 10 --no-register"
RUN_DIR = Path("runs") / "smollm2-slim"  # where the quickstart's run lands, relative to where it runs
README = REPO / "README.md"
FIGURES = REPO / "docs" / "quickstart_figures.json"
BEGIN, END = "<!-- quickstart-figures -->", "<!-- /quickstart-figures -->"


def run_quickstart(workdir: Path) -> tuple[float, float]:
    """Run the quickstart command in ``workdir``: (wall seconds, CPU seconds); its output goes to our stderr."""
    exe = shutil.which("ollama-slim")
    argv = [exe, *shlex.split(COMMAND)[1:]] if exe else [sys.executable, "-m", "ollama_slim.cli", *shlex.split(COMMAND)[1:]]
    cpu_before, began = _children_cpu(), time.perf_counter()
    done = subprocess.run(argv, cwd=workdir, stdout=sys.stderr, stderr=sys.stderr, check=False)
    wall, cpu = time.perf_counter() - began, _children_cpu() - cpu_before
    if done.returncode != 0:
        raise click.ClickException(f"the quickstart failed (exit {done.returncode}) in {workdir}")
    return wall, cpu


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (less sensitive than wall time to other jobs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _interval(value: dict[str, float]) -> dict[str, float]:
    return {k: round(value[k], 4) for k in ("mean", "low", "high")}


def collect(run_dir: Path, *, wall: float, rerun: float, cpu: float | None = None, load: tuple[float, float] | None = None) -> dict[str, Any]:
    """The figures of the finished quickstart run in ``run_dir`` (its own result files)."""
    layout = RunLayout(run_dir)
    state, config = paths.read_json(layout.state), paths.read_json(layout.prune_record)["config"]
    original, slim = paths.read_json(layout.eval_record("original")), paths.read_json(layout.eval_record("slim"))
    bench = paths.read_json(layout.bench)
    return {
        "command": COMMAND, "date": date.today().isoformat(), "cpus": os.cpu_count(),
        "load_average": {"start": round(load[0], 1), "end": round(load[1], 1)} if load else None,
        "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1) if cpu is not None else None, "rerun_seconds": round(rerun, 1),
        "stages": {name: record["seconds"] for name, record in state.items() if isinstance(record, dict) and "seconds" in record},
        "defaults": {k: config[k] for k in DEFAULT_KEYS if k in config},
        "eval": {"users": slim["users"], "candidates": slim["candidates"], "regime": slim["config"]["regime"], "data": slim["data"]["name"],
                 "held_out": _held_out(layout)},
        "ndcg10": {"original": _interval(original["metrics"]["ndcg@10"]), "slim": _interval(slim["metrics"]["ndcg@10"]),
                   "popularity": _interval(slim["baselines"]["popularity"]["ndcg@10"]), "random": round(slim["baselines"]["random"]["ndcg@10"], 4)},
        "speed": {"prompt": round(bench["ratios"]["prompt_tps"], 2), "generation": round(bench["ratios"]["gen_tps"], 2)},
        "chat": {label: _chat(layout.generation_record(label)) for label in ("slim", "original") if layout.generation_record(label).is_file()},
    }


def _held_out(layout: RunLayout) -> int:
    """How many users the healing left out (the evaluated ones; 0 in runs made before it did)."""
    provenance = paths.read_json(layout.healed_dir / "slim.json")
    return int(provenance.get("finetune", {}).get("config", {}).get("holdout_users", 0))


def _chat(record: Path) -> dict[str, Any]:
    """What a model answered in chat (the eval stage's generation measure): shares of users, distinct answers, the top one."""
    g = paths.read_json(record)
    return {"users": g["users"], "title": round(g["figures"]["title"]["mean"], 4), "new_title": round(g["figures"]["new_title"]["mean"], 4),
            "distinct": round(g["distinct"], 4), "top_answer": g["top_answer"]}


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _ci(value: dict[str, float]) -> str:
    return f"{value['mean']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


DEFAULT_KEYS = ("data", "methods", "strategy", "bridge", "steps", "outtype", "eval_users", "bench_repeats", "teacher", "listwise_weight", "align_weight",
                "rank_negatives", "task_format", "full", "answers", "lr")


def _healing(d: dict[str, Any]) -> str:
    """How the run healed, when its figures say (the task format, full or LoRA, answers, a teacher and its weights)."""
    out = f" --task-format {d['task_format']}" if "task_format" in d else ""
    if d.get("full"):
        out += f" --full --answers {d['answers']} --lr {d['lr']:g}"
    if d.get("teacher", "none") != "none":
        out += f" --teacher {d['teacher']} --listwise-weight {d['listwise_weight']:g} --align-weight {d['align_weight']:g} --rank-negatives {d['rank_negatives']}"
    return out


def _asked(chat: dict[str, Any]) -> str:
    """The report's "Asked in chat" figures in a sentence, slim then original."""
    if "slim" not in chat:
        return ""
    def said(g: dict[str, Any]) -> str:
        top, answer = g["top_answer"], " ".join(g["top_answer"]["answer"].split())
        answer = answer if len(answer) <= 40 else answer[:40].rstrip() + "..."
        return (f"a catalogue title for {g['title']:.2f} of the users ({g['new_title']:.2f} one they had not listed), distinct answers for "
                f"{g['distinct']:.2f}, the commonest `{answer}` ({top['users']} users)")
    text = f" Asked in chat through llama.cpp with the Modelfile's template and system prompt ({chat['slim']['users']} test users), the slim GGUF gives {said(chat['slim'])}"
    if "original" in chat:
        text += f"; the original, asked the same way, {said(chat['original'])}"
    return text + "."


def render(figures: dict[str, Any]) -> str:
    """The README paragraph for ``figures`` (markdown, wrapped at about 100 columns)."""
    f, d, n = figures, figures["defaults"], figures["ndcg10"]
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in f["stages"].items() if seconds >= 0.5)
    load, cpu = "", ""
    loads = {when: value for when, value in (f.get("load_average") or {}).items() if value is not None}  # start, end
    if loads:
        load = ", load average " + " and ".join(f"{value:.1f} at the {when}" for when, value in loads.items())
        if max(loads.values()) > f["cpus"]:
            load += ": other jobs were running, an idle machine takes less"
    if f.get("cpu_seconds") is not None:
        cpu = f", {_minutes(f['cpu_seconds'])} of CPU time"
    best_llm = max(n["original"]["mean"], n["slim"]["mean"])
    verdict = ("Popularity beats both at this budget, as the design warned for small models." if n["popularity"]["mean"] > best_llm
               else "The slim model beats popularity." if n["slim"]["mean"] > n["popularity"]["mean"] else "The original beats popularity; the slim model does not.")
    text = (
        f"Measured here ({f['date']}, {f['cpus']} CPU cores{load}; `python tools/quickstart_figures.py --write-readme` reran it and "
        f"wrote this paragraph): the quickstart with its defaults (`--methods {','.join(d['methods'])} --strategy {d['strategy']} "
        f"--bridge {d['bridge']} --steps {d['steps']}{_healing(d)} --outtype {d['outtype']}`) took **{_minutes(f['wall_seconds'])}** end to end{cpu} "
        f"({stages}), and rerunning it with everything present took **{f['rerun_seconds']:.1f} s**. Its report on "
        f"{d['data']} ({f['eval']['users']} test users{', none of them healed on' if f['eval'].get('held_out') else ''}, "
        f"1+{f['eval']['candidates'] - 1} {f['eval']['regime']}): original "
        f"zero-shot NDCG@10 {_ci(n['original'])}, slim healed {_ci(n['slim'])} (it keeps {_kept(n)} of the original's lift over random), "
        f"popularity {_ci(n['popularity'])}, random {n['random']:.3f}; llama.cpp speed slim/original: prompt {f['speed']['prompt']:.2f}x, generation "
        f"{f['speed']['generation']:.2f}x ({d['outtype']}, {d['bench_repeats']} repeats). {verdict}{_asked(f.get('chat') or {})}"
    )
    return _wrap(text)


def _kept(n: dict[str, Any]) -> str:
    """The slim model's share of the original's lift over random (point estimate; the report has its interval)."""
    lift = n["original"]["mean"] - n["random"]
    return f"{(n['slim']['mean'] - n['random']) / lift:.2f}" if lift > 0 else "none"


def _wrap(text: str, width: int = 100) -> str:
    import textwrap

    return textwrap.fill(text, width=width, break_long_words=False, break_on_hyphens=False)


def readme_block(readme: str) -> str:
    """The text between the README's quickstart-figures markers."""
    if BEGIN not in readme or END not in readme:
        raise click.ClickException(f"README.md has no {BEGIN} ... {END} block")
    return readme.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def with_block(readme: str, block: str) -> str:
    """``readme`` with the text between the markers replaced by ``block``."""
    readme_block(readme)  # the markers are there
    head, rest = readme.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{rest.split(END, 1)[1]}"


def table(figures: dict[str, Any]) -> Table:
    out = Table(title=f"{figures['command']} ({figures['date']}, {figures['cpus']} cores)", show_header=False)
    out.add_row("wall time", f"{_minutes(figures['wall_seconds'])} ({figures['wall_seconds']:.1f} s); rerun {figures['rerun_seconds']:.1f} s")
    out.add_row("CPU time", f"{figures['cpu_seconds']:.1f} s" if figures.get("cpu_seconds") is not None else "-")
    for name, seconds in figures["stages"].items():
        out.add_row(f"  {name}", f"{seconds:.1f} s")
    for label, value in figures["ndcg10"].items():
        out.add_row(f"NDCG@10 {label}", f"{value:.3f}" if isinstance(value, float) else _ci(value))
    out.add_row("speed slim/original", f"prompt {figures['speed']['prompt']:.2f}x, generation {figures['speed']['generation']:.2f}x")
    return out


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help="Where to run the quickstart [default: a new temp dir, kept].")
@click.option("--from-json", "from_json", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Render saved figures instead of running.")
@click.option("--write-readme", is_flag=True, help=f"Save the figures to {FIGURES.relative_to(REPO)} and rewrite the README paragraph.")
def main(workdir: Path | None, from_json: Path | None, write_readme: bool) -> None:
    """Run the README's quickstart and report (or write) its figures."""
    if from_json is not None:
        figures = json.loads(from_json.read_text(encoding="utf-8"))
    else:
        workdir = workdir or Path(tempfile.mkdtemp(prefix="quickstart-"))
        workdir.mkdir(parents=True, exist_ok=True)
        load_start = os.getloadavg()[0]
        wall, cpu = run_quickstart(workdir)
        load = (load_start, os.getloadavg()[0])
        rerun, _ = run_quickstart(workdir)
        figures = collect(workdir / RUN_DIR, wall=wall, rerun=rerun, cpu=cpu, load=load)
    click.echo(json.dumps(figures, indent=2))
    Console(stderr=True).print(table(figures))
    if write_readme:
        FIGURES.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        README.write_text(with_block(README.read_text(encoding="utf-8"), render(figures)), encoding="utf-8")
        click.echo(f"wrote {FIGURES} and the quickstart figures of {README}", err=True)


if __name__ == "__main__":
    main()
