"""Speed and quality of layer scoring and selection (issue 3), as JSON and a Markdown table.

    python tools/bench_select.py [--model smollm2:135m] [--data DIR] [--calib-users 64]
        [--shapley-permutations 8] [--search-users 64] [--table-users 200] [--keep 10] [--out DIR]

Speed: each scorer on the calibration users (train split), Shapley with P permutations,
``ranked`` selection down to ``keep`` layers, and ``backward``'s layer forwards with the
prefix cache against a naive search. Quality (validation split, no fine-tuning): title
loss and NDCG@10 (1 + 19 seeded uniform candidates, 95% bootstrap interval) at ``keep``
layers for (a) the first ``keep`` layers, (b) ShortGPT's block influence alone (top
``keep``), (c) each method alone with ``ranked``, (d) the fused ranking with ``ranked``,
(e) ``backward``. Searches run on ``--search-users`` validation users; the table is
measured on ``--table-users`` (a separate seeded draw of the validation split).
Results are written after each part (``--out``/bench_select.json), so a long run that is
stopped keeps what it finished.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ollama_slim import paths  # noqa: E402
from ollama_slim.importance import METHODS, ScoreConfig, open_model, score_layers  # noqa: E402
from ollama_slim.metrics import bootstrap_interval, per_user_metrics  # noqa: E402
from ollama_slim.selection import STRATEGIES, SelectConfig, _search_context  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "amazon-electronics-2014"


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def run_scoring(model: str, data: str, calib_users: int, permutations: int, methods: tuple[str, ...], run: Path) -> dict:
    """Every method once on the calibration users; seconds per method and cache counters."""
    start = time.perf_counter()
    result = score_layers(ScoreConfig(model=model, data=data, methods=methods, calib_users=calib_users, shapley_permutations=permutations, run_dir=run), progress=_say)
    total = time.perf_counter() - start
    return {"calib_users": calib_users, "shapley_permutations": permutations, "seconds": result.seconds, "total_seconds": round(total, 1),
            "all_but_shapley_seconds": round(sum(v for k, v in result.seconds.items() if k != "shapley"), 1), "cache": result.cache,
            "scores": {k: v.scores for k, v in result.methods.items()}, "stderr": {k: v.stderr for k, v in result.methods.items()},
            "fused": result.fused, "order": result.order}


def quality(ctx, layers: list[int]) -> dict:
    """Validation title loss and NDCG@10 with a bootstrap interval, on the table probe."""
    ll = ctx.rank.loglik(layers)
    ndcg = per_user_metrics(ll.double().numpy())["ndcg@10"]
    interval = bootstrap_interval(ndcg, resamples=1000, seed=0)
    return {"layers": sorted(layers), "val_loss": float(-ll[:, 0].mean()), "ndcg10": interval.mean, "ndcg10_low": interval.low, "ndcg10_high": interval.high}


def timed_strategy(name: str, make_ctx, order: list[int] | None) -> tuple[list, float, dict]:
    """A strategy on a fresh search context (empty caches): steps, seconds, counters."""
    ctx = make_ctx(order)
    start = time.perf_counter()
    steps = STRATEGIES[name](ctx)
    return steps, time.perf_counter() - start, {"search": ctx.loss.cache.stats(), "quality": ctx.rank.cache.stats()}


def markdown(report: dict) -> str:
    """The speed and quality tables."""
    sp = report.get("speed", {})
    lines = ["## Speed", "", "| what | seconds |", "| --- | ---: |"]
    for k, v in sp.get("scoring", {}).get("seconds", {}).items():
        lines.append(f"| score: {k} ({sp['scoring']['calib_users']} calibration users) | {v:.1f} |")
    if "scoring" in sp:
        lines.append(f"| score: all methods but Shapley | {sp['scoring']['all_but_shapley_seconds']:.1f} |")
    if "ranked_seconds" in sp:
        lines.append(f"| select: ranked to {report['keep']} layers ({report['search_users']} validation users) | {sp['ranked_seconds']:.1f} |")
    if "backward_seconds" in sp:
        lines.append(f"| select: backward to {report['keep']} layers ({report['search_users']} validation users) | {sp['backward_seconds']:.1f} |")
    if "backward_cache" in sp:
        c = sp["backward_cache"]["search"]
        lines += ["", f"backward layer forwards: {c['layer_forwards']} with prefix caching vs {c['naive_layer_forwards']} naive "
                  f"({c['naive_layer_forwards'] / max(c['layer_forwards'], 1):.1f}x fewer, {c['evaluations']} subsets evaluated)"]
    rows = report.get("quality", {})
    if rows:
        lines += ["", f"## Quality: keep {report['keep']} of {report['num_layers']}, {report['table_users']} validation users, no fine-tuning", "",
                  "| selection | val title loss | NDCG@10 [95% CI] | layers |", "| --- | ---: | ---: | --- |"]
        for name, q in rows.items():
            lines.append(f"| {name} | {q['val_loss']:.4f} | {q['ndcg10']:.4f} [{q['ndcg10_low']:.3f}, {q['ndcg10_high']:.3f}] | {','.join(map(str, q['layers']))} |")
        lines.append(f"\nrandom NDCG@10 = {report['chance']:.3f}")
    if "best" in report:
        lines.append(f"\nbest on validation loss: **{report['best']}**, {report['best_margin']:.4f} below the runner-up ({report['runner_up']})")
    return "\n".join(lines) + "\n"


def _save(report: dict, out: Path) -> None:
    paths.write_json(out / "bench_select.json", report)
    paths.write_text(out / "bench_select.md", markdown(report))


@click.command()
@click.option("--model", default="smollm2:135m", show_default=True)
@click.option("--data", default=str(DEFAULT_DATA), show_default=True)
@click.option("--calib-users", default=64, show_default=True)
@click.option("--shapley-permutations", default=8, show_default=True)
@click.option("--search-users", default=64, show_default=True, help="Validation users the searches evaluate on.")
@click.option("--table-users", default=200, show_default=True, help="Validation users of the quality table.")
@click.option("--keep", default=10, show_default=True)
@click.option("--strategies", default="ranked,backward", show_default=True, help="Search strategies to run (forward is slow: N^2 subsets).")
@click.option("--out", default="runs/bench-select", show_default=True, type=click.Path(path_type=Path))
def main(model: str, data: str, calib_users: int, shapley_permutations: int, search_users: int, table_users: int, keep: int, strategies: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": model, "data": data, "keep": keep, "search_users": search_users, "table_users": table_users, "speed": {}, "quality": {}}
    methods = tuple(m for m in METHODS if m != "shapley") + (("shapley",) if shapley_permutations > 0 else ())
    scoring = run_scoring(model, data, calib_users, shapley_permutations, methods, out / "run")
    report["speed"]["scoring"] = scoring
    _save(report, out)
    net, tokenizer, num_layers = open_model(model, hf=None, dtype="float32", device_map=None)
    report["num_layers"] = num_layers
    search = SelectConfig(source=model, keep=keep, val_users=search_users)
    make_ctx = lambda order: _search_context(search, net, tokenizer, data, num_layers, order, _say)  # noqa: E731
    table = _search_context(replace(search, val_users=table_users), net, tokenizer, data, num_layers, None, None)
    report["chance"] = table.chance
    report["quality"]["full model (all layers)"] = quality(table, list(range(num_layers)))
    report["quality"][f"(a) first {keep} layers"] = quality(table, list(range(keep)))
    report["quality"]["(b) block influence alone (top k)"] = quality(table, sorted(_order(scoring["scores"]["block-influence"])[:keep]))
    _save(report, out)
    wanted = [s for s in strategies.split(",") if s]
    if "ranked" in wanted:
        steps, seconds, cache = timed_strategy("ranked", make_ctx, scoring["order"])
        report["speed"]["ranked_seconds"], report["speed"]["ranked_cache"] = round(seconds, 1), cache
        report["quality"]["(d) fused ranking, ranked"] = quality(table, steps[-1].layers)
        for name, scores in scoring["scores"].items():
            report["quality"][f"(c) {name} alone, ranked"] = quality(table, sorted(_order(scores)[:keep]))
        _save(report, out)
    for name in [s for s in wanted if s != "ranked"]:
        steps, seconds, cache = timed_strategy(name, make_ctx, scoring["order"])
        report["speed"][f"{name}_seconds"], report["speed"][f"{name}_cache"] = round(seconds, 1), cache
        report["quality"][f"(e) {name}" if name == "backward" else name] = quality(table, steps[-1].layers)
        _save(report, out)
    candidates = {k: v for k, v in report["quality"].items() if not k.startswith("full")}
    ranked_rows = sorted(candidates, key=lambda k: candidates[k]["val_loss"])
    report["best"], report["runner_up"] = ranked_rows[0], ranked_rows[1]
    report["best_margin"] = candidates[ranked_rows[1]]["val_loss"] - candidates[ranked_rows[0]]["val_loss"]
    _save(report, out)
    print(markdown(report))


if __name__ == "__main__":
    main()
