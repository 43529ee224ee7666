"""Does a bridge earn its place? (issue 7, point 2)

For each bridge kind at a fixed selection (keep 10 of SmolLM2's 30 layers by default):
KL divergence from the original model's next-token distribution and top-1 agreement on
held-out validation prompts + titles, the validation title loss, and validation NDCG@10
(design §3 protocol, 1+19 uniform candidates). Writes JSON and a Markdown table.

Full configuration (documented command; hours on 2 CPU cores, minutes on a GPU):
    python tools/bench_bridges.py --selection runs/smollm2/selection.json \
        --calib-tokens 8192 --kl-users 200 --eval-users 200 --out bench/bridges
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ollama_slim.slimming import bridges as br
from ollama_slim.slimming.build import read_selection, slice_model
from ollama_slim.recsys.data import examples, load_dataset, select_users
from ollama_slim.models.modeling import load
from ollama_slim.recsys.prompt import PromptConfig, encode_example
from ollama_slim.models.lm import title_nll
from ollama_slim.models.sources import resolve

DEFAULT_KEPT = "0,1,2,3,4,11,19,24,28,29"  # `select --keep 10` (ranked, defaults) on SmolLM2 + Amazon in this project


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2:135m")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/amazon-electronics-2014"))
    p.add_argument("--kept", default=DEFAULT_KEPT, help="layers to keep (ignored with --selection)")
    p.add_argument("--selection", type=Path, help="a selection.json written by `ollama-slim select`")
    p.add_argument("--kinds", default=",".join(br.BRIDGES), help="bridge kinds, comma-separated")
    p.add_argument("--calib-tokens", type=int, default=8192)
    p.add_argument("--kl-users", type=int, default=200)
    p.add_argument("--eval-users", type=int, default=200)
    p.add_argument("--history", type=int, default=5)
    p.add_argument("--title-words", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("bench-bridges"), help="writes OUT.json and OUT.md")
    return p.parse_args(argv)


def held_out(tokenizer, dataset, *, users: int, prompt: PromptConfig) -> list[tuple[list[int], list[int]]]:
    """Validation (prompt, title) pairs of ``users`` seeded users (seed 1, apart from calibration)."""
    chosen = select_users(dataset, users, seed=1)
    return [encode_example(tokenizer, dataset, ex, prompt) for ex in examples(dataset, split="valid", history=prompt.history, users=chosen)]


@torch.no_grad()
def mean_title_loss(model, pairs: list[tuple[list[int], list[int]]], *, pad_id: int) -> float:
    losses = [title_nll(model, pairs[i : i + 8], pad_id=pad_id) for i in range(0, len(pairs), 8)]
    return float(torch.cat(losses).mean())


def val_ndcg(model, tokenizer, dataset, args: argparse.Namespace) -> dict:
    from ollama_slim.recsys.evaluate import EvalConfig, evaluate
    from ollama_slim.recsys.scorers import TransformersScorer

    config = EvalConfig(data=args.data, split="valid", users=args.eval_users, history=args.history, title_words=args.title_words, regime="uniform", resamples=1000)
    result = evaluate(TransformersScorer(model=model, tokenizer=tokenizer), config, dataset=dataset)
    return {"ndcg10": result.metrics["ndcg@10"].to_json(), "popularity_ndcg10": result.popularity["ndcg@10"].to_json(), "random_ndcg10": result.random["ndcg@10"]}


def measure(name: str, model, original, tokenizer, dataset, held, args) -> dict:
    start = time.perf_counter()
    sequences = [p + t for p, t in held]
    row = {"kind": name, **br.next_token_agreement(original=original, compact=model, sequences=sequences)}
    row["val_title_loss"] = mean_title_loss(model, held, pad_id=tokenizer.pad_token_id or 0)
    if args.eval_users > 0:
        row.update(val_ndcg(model, tokenizer, dataset, args))
    row["measure_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [
        f"# Bridges at keep {len(report['kept'])} of {report['num_layers']} ({cfg['model']})", "",
        f"Kept layers: {report['kept']}. Calibration: {report['calibration_tokens']} train tokens ({report['calibration_sequences']} prompts). "
        f"KL / top-1 / title loss on {report['held_out_prompts']} validation prompts ({report['held_out_tokens']} tokens); "
        f"NDCG@10 on {cfg['eval_users']} validation users, 1+19 uniform candidates.", "",
        "| model | KL(orig ‖ model) | top-1 agreement | val title loss | val NDCG@10 [95% CI] | fit s |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in report["rows"]:
        nd = row.get("ndcg10")
        ndcg = f"{nd['mean']:.3f} [{nd['low']:.3f}, {nd['high']:.3f}]" if nd else "-"
        lines.append(f"| {row['kind']} | {row['kl']:.3f} | {row['top1']:.3f} | {row['val_title_loss']:.3f} | {ndcg} | {row.get('fit_seconds', '-')} |")
    first = report["rows"][0]
    if "random_ndcg10" in first:
        lines += ["", f"Random NDCG@10 {first['random_ndcg10']:.3f}; popularity {first['popularity_ndcg10']['mean']:.3f} on the same candidates."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    original, tokenizer = load(resolve(args.model).model_dir)
    num_layers = len(original.model.layers)
    kept = read_selection(args.selection)["kept"] if args.selection else [int(i) for i in args.kept.split(",")]
    dataset = load_dataset(args.data)
    prompt = PromptConfig(history=args.history, title_words=args.title_words)
    calibration = br.calibration_batches(tokenizer=tokenizer, dataset=dataset, max_tokens=args.calib_tokens, history=args.history)
    held = held_out(tokenizer, dataset, users=args.kl_users, prompt=prompt)
    targets = br.gap_targets(original, kept=kept, calibration=calibration)
    rows = []
    for kind in args.kinds.split(","):
        compact = slice_model(original, kept)
        start = time.perf_counter()
        bridge = br.fit_bridge(kind, original=original, compact=compact, kept=kept, calibration=calibration, targets=targets)
        br.fold_bridge(compact, bridge)
        fit_seconds = round(time.perf_counter() - start, 1)
        rows.append({**measure(kind, compact, original, tokenizer, dataset, held, args), "fit_seconds": fit_seconds})
    report = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "kept": kept, "num_layers": num_layers,
        "calibration_tokens": sum(map(len, calibration)), "calibration_sequences": len(calibration),
        "held_out_prompts": len(held), "held_out_tokens": sum(len(p) + len(t) for p, t in held), "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
