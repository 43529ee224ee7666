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
stopped keeps what it finished. On a small machine, run the parts apart and merge them:

    python tools/bench_select.py --parts score --out runs/b-score
    python tools/bench_select.py --parts backward --out runs/b-backward
    python tools/bench_select.py --parts ranked,table --scores-from runs/b-score/bench_select.json \
        --searches-from runs/b-backward/bench_select.json --out runs/b-all

``(c)``/``(d)``: ``ranked`` with ``--keep k`` ends with the top ``k`` layers of its order, so
those rows evaluate that set; the ``ranked`` part times the strategy itself.
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
from ollama_slim.models.modeling import auto_dtype  # noqa: E402
from ollama_slim.slimming.importance import METHODS, ScoreConfig, mean_rank, open_model, score_layers  # noqa: E402
from ollama_slim.recsys.metrics import bootstrap_interval, per_user_metrics  # noqa: E402
from ollama_slim.slimming.selection import STRATEGIES, SelectConfig, _search_context  # noqa: E402
from ollama_slim.pipeline.prune import PruneConfig  # noqa: E402

PRUNE_METHODS = PruneConfig.methods
DEFAULT_DATA = REPO.parent / "shared" / "data" / "amazon-electronics-2014"


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def run_scoring(model: str, data: str, calib_users: int, permutations: int, methods: tuple[str, ...], run: Path, dtype: str) -> dict:
    """Every method once on the calibration users; seconds per method and cache counters."""
    start = time.perf_counter()
    result = score_layers(ScoreConfig(model=model, data=data, methods=methods, calib_users=calib_users, shapley_permutations=permutations, run_dir=run, dtype=dtype),
                          progress=_say)
    total = time.perf_counter() - start
    return {"calib_users": calib_users, "shapley_permutations": permutations, "dtype": dtype, "seconds": result.seconds, "total_seconds": round(total, 1),
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
    lines = [f"## Speed ({report.get('dtype', 'float32')})", "", "| what | seconds |", "| --- | ---: |"]
    for k, v in sp.get("scoring", {}).get("seconds", {}).items():
        lines.append(f"| score: {k} ({sp['scoring']['calib_users']} calibration users) | {v:.1f} |")
    if "scoring" in sp:
        lines.append(f"| score: all methods but Shapley | {sp['scoring']['all_but_shapley_seconds']:.1f} |")
    for name, found in report.get("searches", {}).items():
        users = found.get("users", report["search_users"])
        lines.append(f"| select: {name} to {report['keep']} layers ({users} validation users) | {found['seconds']:.1f} |")
    for name, found in report.get("searches", {}).items():
        c = found["cache"]["search"] if name != "ranked" else found["cache"]["quality"]
        lines += ["", f"{name}: {c['layer_forwards']} layer forwards with prefix caching vs {c['naive_layer_forwards']} naive "
                  f"({c['naive_layer_forwards'] / max(c['layer_forwards'], 1):.1f}x fewer, {c['evaluations']} subsets evaluated)"]
    rows = report.get("quality", {})
    if rows:
        lines += ["", f"## Quality: keep {report['keep']} of {report['num_layers']}, {report['table_users']} validation users, no fine-tuning, {report.get('table_dtype', 'float32')}", "",
                  "| selection | val title loss | NDCG@10 [95% CI] | layers |", "| --- | ---: | ---: | --- |"]
        for name, q in rows.items():
            lines.append(f"| {name} | {q['val_loss']:.4f} | {q['ndcg10']:.4f} [{q['ndcg10_low']:.3f}, {q['ndcg10_high']:.3f}] | {','.join(map(str, q['layers']))} |")
        lines.append(f"\nrandom NDCG@10 = {report['chance']:.3f}")
    if "best" in report:
        lines.append(f"\nbest on validation loss: **{report['best']}**, {report['best_margin']:.4f} below the runner-up ({report['runner_up']})")
        if report.get("best_same_set"):
            lines.append(f"(the same layers as: {', '.join(report['best_same_set'])})")
    return "\n".join(lines) + "\n"


def _save(report: dict, out: Path) -> None:
    paths.write_json(out / "bench_select.json", report)
    paths.write_text(out / "bench_select.md", markdown(report))


def run_searches(report: dict, names: list[str], make_ctx, out: Path) -> None:
    """Each strategy on fresh caches: kept layers, steps, seconds and layer-forward counters."""
    order = report["speed"].get("scoring", {}).get("order")
    for name in names:
        if name == "ranked" and order is None:
            raise click.UsageError("ranked needs scores: include the score part or pass --scores-from")
        steps, seconds, cache = timed_strategy(name, make_ctx, order)
        report["searches"][name] = {"kept": steps[-1].layers, "seconds": round(seconds, 1), "cache": cache, "users": report["search_users"],
                                    "steps": [{"layers": s.layers, "val_loss": s.val_loss, "ndcg10": s.ndcg10} for s in steps]}
        _save(report, out)


def fill_table(report: dict, table, *, keep: int, num_layers: int, out: Path) -> None:
    """Quality rows (a)-(e) on the table probe, then the best on validation loss."""
    wanted = {"full model (all layers)": list(range(num_layers)), f"(a) first {keep} layers": list(range(keep))}
    scoring = report["speed"].get("scoring")
    if scoring:
        wanted["(b) block influence alone (ShortGPT, top k)"] = sorted(_order(scoring["scores"]["block-influence"])[:keep])
        for name, scores in scoring["scores"].items():  # ranked with --keep k ends with the top k of the order
            wanted[f"(c) {name} alone, ranked"] = sorted(_order(scores)[:keep])
        wanted["(d) fused ranking, ranked"] = sorted(scoring["order"][:keep])
        if "shapley" in scoring["scores"]:
            fused = mean_rank({k: v for k, v in scoring["scores"].items() if k != "shapley"})
            wanted["(d) fused ranking without shapley, ranked"] = sorted(_order(fused)[:keep])
        if len(PRUNE_METHODS) > 1 and set(PRUNE_METHODS) <= set(scoring["scores"]):
            fused = mean_rank({k: scoring["scores"][k] for k in PRUNE_METHODS})
            wanted[f"(d) fused {'+'.join(PRUNE_METHODS)} (prune's default), ranked"] = sorted(_order(fused)[:keep])
    for name, found in report["searches"].items():
        if name != "ranked":
            wanted[f"(e) {name}" if name == "backward" else name] = found["kept"]
    rows = report["quality"]
    for name, layers in wanted.items():
        if name not in rows or rows[name]["layers"] != layers:  # rows of --quality-from are reused
            rows[name] = quality(table, layers)
            _save(report, out)
    candidates = {k: v for k, v in rows.items() if not k.startswith("full")}
    by_loss = sorted(candidates, key=lambda k: candidates[k]["val_loss"])
    others = [k for k in by_loss if candidates[k]["layers"] != candidates[by_loss[0]]["layers"]]  # the same set under another name is no rival
    report["best"], report["runner_up"] = by_loss[0], others[0]
    report["best_same_set"] = [k for k in by_loss[1:] if k not in others]
    report["best_margin"] = candidates[by_loss[1]]["val_loss"] - candidates[by_loss[0]]["val_loss"]
    _save(report, out)


@click.command()
@click.option("--model", default="smollm2:135m", show_default=True)
@click.option("--data", default=str(DEFAULT_DATA), show_default=True)
@click.option("--calib-users", default=64, show_default=True)
@click.option("--shapley-permutations", default=8, show_default=True)
@click.option("--search-users", default=64, show_default=True, help="Validation users the searches evaluate on.")
@click.option("--table-users", default=200, show_default=True, help="Validation users of the quality table.")
@click.option("--keep", default=10, show_default=True)
@click.option("--parts", default="score,ranked,backward,table", show_default=True, help="Parts to run: score, ranked, backward, forward, table.")
@click.option("--scores-from", type=click.Path(exists=True, path_type=Path), help="Reuse the scoring part of an earlier bench_select.json.")
@click.option("--searches-from", type=click.Path(exists=True, path_type=Path), multiple=True, help="Reuse the searches of an earlier bench_select.json.")
@click.option("--quality-from", type=click.Path(exists=True, path_type=Path), help="Reuse the table rows of an earlier bench_select.json (same --table-users).")
@click.option("--dtype", default="auto", show_default=True,
              help="Weights and compute of scoring and searches (auto: bfloat16 where the CPU has bf16 matmuls, ~1.9x float32 with avx512_bf16; float32 elsewhere).")
@click.option("--table-dtype", default="float32", show_default=True, help="Weights and compute of the quality table.")
@click.option("--out", default="runs/bench-select", show_default=True, type=click.Path(path_type=Path))
def main(model: str, data: str, calib_users: int, shapley_permutations: int, search_users: int, table_users: int, keep: int, parts: str,
         scores_from: Path | None, searches_from: tuple[Path, ...], quality_from: Path | None, dtype: str, table_dtype: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dtype = auto_dtype(dtype)
    wanted = [p for p in parts.split(",") if p]
    report: dict = {"model": model, "data": data, "keep": keep, "dtype": dtype, "table_dtype": table_dtype, "search_users": search_users, "table_users": table_users, "speed": {}, "searches": {}, "quality": {}}
    for earlier in searches_from:
        report["searches"].update(paths.read_json(earlier)["searches"])
    if quality_from:
        report["quality"].update(paths.read_json(quality_from)["quality"])
    if scores_from:
        report["speed"]["scoring"] = paths.read_json(scores_from)["speed"]["scoring"]
    elif "score" in wanted:
        methods = tuple(m for m in METHODS if m != "shapley") + (("shapley",) if shapley_permutations > 0 else ())
        report["speed"]["scoring"] = run_scoring(model, data, calib_users, shapley_permutations, methods, out / "run", dtype)
        _save(report, out)
    searches = [p for p in wanted if p in STRATEGIES]
    search = SelectConfig(source=model, keep=keep, val_users=search_users, dtype=dtype)
    if searches:
        net, tokenizer, report["num_layers"] = open_model(model, hf=None, dtype=dtype, device_map=None)
        make_ctx = lambda order: _search_context(search, net, tokenizer, data, report["num_layers"], order, _say)  # noqa: E731
        run_searches(report, searches, make_ctx, out)
        del net
    if "table" in wanted:
        net, tokenizer, num_layers = open_model(model, hf=None, dtype=table_dtype, device_map=None)
        report["num_layers"] = num_layers
        table = _search_context(replace(search, val_users=table_users, dtype=table_dtype), net, tokenizer, data, num_layers, None, None)
        report["chance"] = table.chance
        fill_table(report, table, keep=keep, num_layers=num_layers, out=out)
    print(markdown(report))


if __name__ == "__main__":
    main()
