"""The keep-versus-quality curve (issue 11, point 5): how much quality and speed each ``--keep`` buys.

For each number of kept layers K in ``--keeps`` (default 8,10,12,15,20 of 30): the layers that
``--strategy`` selects on validation users (one ``ranked`` pass, adding layers in
importance order up to the largest K: its path holds every smaller set), the compact model with ``--bridge``, healed with the recipe of
``tools/bench_quality.py`` (``--recipe distilled``: with the full fine-tuned teacher, the default;
``healed``: without), exported at ``--outtype`` and scored *as it ships*, through llama.cpp (or, with
``--measure transformers``, its transformers twin), on the same seeded test users and 1+19 candidates
in both negative regimes. Printed per K: NDCG@10,
quality retained on lift against the full fine-tuned model (paired bootstrap 95% interval) per
regime, and the speed of the slim GGUF against the full model's GGUF at the same outtype (llama.cpp,
one run, medians of repeats after a warm-up: prompt and generation tokens/s ratios, file size).

Writes ``--out``.json, ``--out``.md (the table) and ``--out``.png (the curve); ``--report
RUN/report.md`` appends the table and the plot to a report (written to a temp file, renamed).
Every model, GGUF and score is cached under ``--out``-work, so a stopped run continues.

    python tools/bench_keep_curve.py --keeps 8,10,12,15,20 --test-users 1000 --valid-users 100 \\
        --steps 200 --rank-negatives 4 --rank-regimes uniform,popularity --listwise-weight 1 \\
        --align-weight 0.5 --out bench/keep-curve
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))
sys.path.insert(0, str(TOOLS))

import bench_quality as bq  # noqa: E402

from ollama_slim import paths  # noqa: E402
from ollama_slim.recsys.data import load_dataset  # noqa: E402
from ollama_slim.recsys.metrics import bootstrap_interval, per_user_metrics, random_baseline  # noqa: E402
from ollama_slim.recsys.retained import retained_on_lift  # noqa: E402

RECIPES = ("distilled", "healed")
MEASURES = ("gguf", "transformers")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = bq.parser(__doc__)
    p.set_defaults(out=Path("bench-keep-curve"))
    p.add_argument("--keeps", default="8,10,12,15,20", help="numbers of kept layers (comma-separated)")
    p.add_argument("--strategy", default="ranked", help="selection strategy (ranked: one pass serves every K)")
    p.add_argument("--recipe", default="distilled", choices=RECIPES, help="healing with the full fine-tuned teacher, or without")
    p.add_argument("--speed-repeats", type=int, default=3, help="llama.cpp speed rounds per model (after one warm-up)")
    p.add_argument("--report", type=Path, default=None, help="append the table and the plot to this report.md")
    p.add_argument("--measure", default="gguf", choices=MEASURES,
                   help="score each slim model as it ships (the --outtype GGUF through llama.cpp), or its transformers twin "
                        "(about 3x faster on a CPU with bf16 matmuls; the speed columns still time the GGUFs)")
    args = bq.resolve_precision(p.parse_args(argv))
    try:
        args.keep_list = sorted({int(k) for k in args.keeps.split(",")})
    except ValueError:
        p.error(f"--keeps must be whole numbers separated by commas, got {args.keeps!r}")
    if args.outtype == "none":
        p.error("the curve measures the GGUF that ships: give an --outtype (e.g. q8_0)")
    return args


def kept_sets(args: argparse.Namespace, work: Path) -> dict[int, list[int]]:
    """``{K: kept layers}`` from one selection pass: ``ranked`` and ``forward`` add layers up to
    the largest K, ``backward`` removes them down to the smallest; every K lies on the path."""
    target = args.keep_list[0] if args.strategy == "backward" else args.keep_list[-1]
    path = bq.select_path(args, work, strategy=args.strategy, target=target)
    missing = [k for k in args.keep_list if k not in path]
    if missing:
        sys.exit(f"error: the {args.strategy} selection never kept exactly {', '.join(map(str, missing))} layers; use --strategy ranked or backward")
    return {k: path[k] for k in args.keep_list}


def speed(args: argparse.Namespace, original: Path, slim: Path, work: Path) -> dict:
    """Slim GGUF vs full GGUF in llama.cpp, one run (cached as JSON)."""
    from ollama_slim.bench.speed import BenchConfig, bench

    cache = work / "speed" / f"{slim.stem}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    result = bench(BenchConfig(original=str(original), slim=str(slim), backend="llama-cpp", repeats=args.speed_repeats, warmup=1, n_predict=32,
                               threads=args.threads, run_dir=work / "speed"))
    out = {"prompt": result.ratios["prompt_tps"], "generation": result.ratios["gen_tps"], "size": result.ratios["size"]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out) + "\n")
    bq.log(f"speed {slim.stem}: prompt {out['prompt']:.2f}x, generation {out['generation']:.2f}x")
    return out


def point(keep: int, scores: dict[str, np.ndarray], reference: dict[str, np.ndarray], speedup: dict, kept: list[int]) -> dict:
    """One K's row: per regime NDCG@10 and retained on lift, with the speed ratios."""
    random = random_baseline(20)["ndcg@10"]
    row = {"keep": keep, "kept": kept, "speed": speedup, "regimes": {}}
    for regime in bq.REGIMES:
        slim = per_user_metrics(scores[f"test/{regime}"])["ndcg@10"]
        full = per_user_metrics(reference[f"test/{regime}"])["ndcg@10"]
        row["regimes"][regime] = {"ndcg@10": bootstrap_interval(slim).to_json(), "retained": retained_on_lift(slim, full, random=random).to_json()}
    return row


def check_work(args: argparse.Namespace, work: Path) -> None:
    """:func:`bench_quality.check_work` with this tool's defaults: a work directory made before an option existed still resumes."""
    bq.check_work(args, work, defaults=vars(parse_args([])))


def curve(args: argparse.Namespace) -> dict:
    work = args.out.with_name(args.out.name + "-work")
    check_work(args, work)
    dataset = load_dataset(args.data)
    began = time.perf_counter()
    from ollama_slim.models.sources import resolve

    resolved = resolve(args.model)
    teacher = bq.heal(args, Path(resolved.model_dir), work / "ft-full")
    reference = bq.scores_of("full fine-tuned", teacher, args, dataset, work)
    full_gguf = bq.export(args, teacher, work)
    rows = []
    for keep, kept in kept_sets(args, work).items():
        compact = bq.build_slim(args, work, args.bridge, kept=kept, name=f"keep{keep}-{args.bridge}", source=bq.slim_source(args, teacher))
        healed = bq.heal(args, compact, work / f"keep{keep}-{args.recipe}", teacher=teacher if args.recipe == "distilled" else None, slim=True)
        gguf = bq.export(args, healed, work)
        if args.measure == "gguf":
            scores = bq.scores_of(f"keep {keep} {args.recipe} {args.outtype} GGUF", gguf, args, dataset, work, splits=("test",))
        else:
            scores = bq.scores_of(f"keep {keep} {args.recipe} transformers", healed, args, dataset, work, splits=("test",))
        rows.append(point(keep, scores, reference, speed(args, full_gguf, gguf, work), kept))
        bq.log(f"keep {keep}: " + ", ".join(f"{r} retained {v['retained']['retained']:.2f}" for r, v in rows[-1]["regimes"].items()))
    full = {regime: bootstrap_interval(per_user_metrics(reference[f"test/{regime}"])["ndcg@10"]).to_json() for regime in bq.REGIMES}
    return {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "keep_list"},
            "num_layers": resolved.num_layers, "full_finetuned": full, "random_ndcg@10": random_baseline(20)["ndcg@10"],
            "points": rows, "seconds": round(time.perf_counter() - began, 1)}


def measured(cfg: dict) -> str:
    """What the quality columns were scored on (reports made before ``--measure``: the GGUF)."""
    return f"{cfg['outtype']} GGUF through llama.cpp" if cfg.get("measure", "gguf") == "gguf" else f"transformers, {cfg['dtype']}"


def markdown(report: dict, *, plot: str | None = None) -> str:
    cfg = report["config"]
    n = report["num_layers"]
    lines = [f"### Keep versus quality: {cfg['model']} ({cfg['bridge']}, {cfg['recipe']}, {measured(cfg)})", "",
             f"{cfg['test_users']} test users of {Path(cfg['data']).name}, 1+19 candidates; retained on NDCG@10 lift against the full "
             f"fine-tuned model (transformers), 95% paired bootstrap interval; speed: the slim GGUF against the full model's GGUF "
             f"at {cfg['outtype']}, llama.cpp, medians of {cfg['speed_repeats']} rounds after a warm-up.", "",
             "| kept | uniform NDCG@10 | uniform retained | popularity NDCG@10 | popularity retained | prompt speed-up | generation speed-up | file |",
             "| ---: | --- | --- | --- | --- | ---: | ---: | ---: |"]
    full = report["full_finetuned"]
    lines.append(f"| {n} (full fine-tuned) | {bq._fmt(full['uniform'])} | 1.00 | {bq._fmt(full['popularity'])} | 1.00 | 1.00x | 1.00x | 1.00x |")
    for row in report["points"]:
        cells = []
        for regime in bq.REGIMES:
            r = row["regimes"][regime]
            ret = r["retained"]
            cells += [bq._fmt(r["ndcg@10"]), f"{ret['retained']:.2f} [{ret['retained_low']:.2f}, {ret['retained_high']:.2f}]"]
        sp = row["speed"]
        size = f"{sp['size']:.2f}x" if sp.get("size") else "-"
        lines.append(f"| {row['keep']} | {' | '.join(cells)} | {sp['prompt']:.2f}x | {sp['generation']:.2f}x | {size} |")
    if plot:
        lines += ["", f"![keep versus quality]({plot})"]
    return "\n".join(lines) + "\n"


def plot(report: dict, target: Path) -> Path:
    """Retained on lift (with its interval) per regime against kept layers; speed-ups on the right axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keeps = [row["keep"] for row in report["points"]]
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    for regime, colour in zip(bq.REGIMES, ("tab:blue", "tab:green")):
        rets = [row["regimes"][regime]["retained"] for row in report["points"]]
        mid = np.array([r["retained"] for r in rets])
        err = np.array([[m - r["retained_low"] for m, r in zip(mid, rets)], [r["retained_high"] - m for m, r in zip(mid, rets)]])
        ax.errorbar(keeps, mid, yerr=np.clip(err, 0, None), fmt="o-", color=colour, capsize=3, label=f"retained ({regime} negatives)")
    ax.axhline(0.9, color="grey", linestyle="--", linewidth=0.8, label="0.90")
    ax.set_xlabel(f"layers kept of {report['num_layers']}")
    ax.set_ylabel("quality retained on lift")
    right = ax.twinx()
    right.plot(keeps, [row["speed"]["prompt"] for row in report["points"]], "s:", color="tab:red", label="prompt speed-up")
    right.plot(keeps, [row["speed"]["generation"] for row in report["points"]], "^:", color="tab:orange", label="generation speed-up")
    right.set_ylabel("speed-up (slim / full, llama.cpp)")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="lower right")
    ax.set_title(f"{report['config']['model']}: keep vs quality ({measured(report['config'])})", fontsize=10)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    with paths.atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return target


def append_to_report(report_md: Path, text: str) -> None:
    """Add ``text`` as a section of ``report_md`` (temp file + rename; a rerun replaces its section)."""
    marker = "<!-- keep-curve -->"
    earlier = report_md.read_text() if report_md.is_file() else ""
    if marker in earlier:
        earlier = earlier[: earlier.index(marker)].rstrip() + "\n"
    paths.write_text(report_md, earlier + ("\n" if earlier else "") + marker + "\n" + text)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    bq.use_threads(args)
    report = curve(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = plot(report, args.out.with_suffix(".png"))
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report, plot=png.name))
    if args.report is not None:
        target = args.report.parent / png.name
        if target.resolve() != png.resolve():
            target.write_bytes(png.read_bytes())
        append_to_report(args.report, markdown(report, plot=png.name))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
