"""Evaluation speed: the shared-prefix path against the naive path, in the same run.

    python tools/bench_eval.py [--model smollm2:135m] [--data DIR] [--users 6] [--repeats 2]

For each user (design §3 protocol: 1 + 19 candidates, history 10) both paths score the
same token ids, interleaved so that machine load hits both alike:
- shared prefix: the prompt once, then all candidates in one batch on its KV cache;
- naive: every candidate with its full prompt, all candidates in one padded batch.
Tokens/s counts the evaluation's tokens (prompt + every candidate's tokens), the same
for both paths. Also reported: the max |score difference| against the batched naive
path and against an unpadded naive run of each candidate alone (the exact reference).
Prints JSON on stdout and a table on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ollama_slim.recsys.data import load_dataset  # noqa: E402
from ollama_slim.recsys.evaluate import EvalConfig, encode_case, prepare_cases  # noqa: E402
from ollama_slim.models.modeling import load  # noqa: E402
from ollama_slim.models.lm import score_naive, score_shared_prefix  # noqa: E402
from ollama_slim.models.sources import resolve  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "amazon-electronics-2014"


def _timed(fn, *args, **kwargs) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out.double().numpy(), time.perf_counter() - start


def bench_user(model, prompt: list[int], cands: list[list[int]], *, pad: int, repeats: int) -> dict:
    """Both paths on one user, ``repeats`` times interleaved; best time of each."""
    shared_t, naive_t = [], []
    for _ in range(repeats):
        shared, t = _timed(score_shared_prefix, model, prompt, cands, pad_id=pad)
        shared_t.append(t)
        naive, t = _timed(score_naive, model, prompt, cands, pad_id=pad)
        naive_t.append(t)
    alone = np.concatenate([score_naive(model, prompt, [c], pad_id=pad).double().numpy() for c in cands])
    return {
        "tokens": len(prompt) + sum(map(len, cands)), "prompt_tokens": len(prompt), "candidate_tokens": sum(map(len, cands)),
        "shared_s": min(shared_t), "naive_s": min(naive_t),
        "diff_batched": float(np.abs(shared - naive).max()), "diff_alone": float(np.abs(shared - alone).max()),
        "diff_batched_vs_alone": float(np.abs(naive - alone).max()),
    }


def summarise(rows: list[dict], *, model: str, users: int, config: EvalConfig) -> dict:
    tokens = sum(r["tokens"] for r in rows)
    shared_s, naive_s = sum(r["shared_s"] for r in rows), sum(r["naive_s"] for r in rows)
    return {
        "model": model, "users": users, "candidates": config.negatives + 1, "history": config.history, "title_tokens": config.title_tokens,
        "dtype": "float32", "torch_threads": torch.get_num_threads(), "load_average_1m": round(os.getloadavg()[0], 2),
        "prompt_tokens_mean": float(np.mean([r["prompt_tokens"] for r in rows])),
        "candidate_tokens_mean": float(np.mean([r["candidate_tokens"] for r in rows])),
        "shared_prefix": {"seconds": shared_s, "tokens_per_s": tokens / shared_s},
        "naive": {"seconds": naive_s, "tokens_per_s": tokens / naive_s},
        "speedup": naive_s / shared_s,
        "max_abs_diff_vs_batched_naive": max(r["diff_batched"] for r in rows),
        "max_abs_diff_vs_unpadded_naive": max(r["diff_alone"] for r in rows),
        "max_abs_diff_batched_vs_unpadded_naive": max(r["diff_batched_vs_alone"] for r in rows),
    }


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"eval speed: {result['model']}, {result['users']} users, 1+{result['candidates'] - 1} candidates, history {result['history']}")
    for col in ("path", "seconds", "tokens/s"):
        table.add_column(col, justify="right")
    for path in ("shared_prefix", "naive"):
        table.add_row(path, f"{result[path]['seconds']:.2f}", f"{result[path]['tokens_per_s']:.0f}")
    table.add_row("speedup", f"{result['speedup']:.2f}x", "")
    table.add_row("max |diff|", f"{result['max_abs_diff_vs_batched_naive']:.2e} (batched)", f"{result['max_abs_diff_vs_unpadded_naive']:.2e} (unpadded)")
    Console(stderr=True).print(table)


@click.command()
@click.option("--model", default="smollm2:135m", show_default=True)
@click.option("--data", default=str(DEFAULT_DATA), show_default=True)
@click.option("--users", default=6, show_default=True)
@click.option("--repeats", default=2, show_default=True, help="Timed runs per user and path (the best counts).")
@click.option("--threads", type=int, help="torch CPU threads (default: torch's; 1 is faster on an oversubscribed machine).")
def main(model: str, data: str, users: int, repeats: int, threads: int | None) -> None:
    torch.manual_seed(0)
    if threads:
        torch.set_num_threads(threads)
    resolved = resolve(model)
    net, tokenizer = load(resolved.model_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    config = EvalConfig(data=data, users=users)
    dataset = load_dataset(data)
    encoded = [encode_case(tokenizer, dataset, case, config.prompt_config()) for case in prepare_cases(dataset, config)]
    score_shared_prefix(net, *encoded[0], pad_id=pad)  # warm-up
    score_naive(net, *encoded[0], pad_id=pad)
    rows = []
    for n, (prompt, cands) in enumerate(encoded, start=1):
        rows.append(bench_user(net, prompt, cands, pad=pad, repeats=repeats))
        print(f"user {n}/{len(encoded)}: shared {rows[-1]['shared_s']:.2f}s, naive {rows[-1]['naive_s']:.2f}s", file=sys.stderr)
    result = summarise(rows, model=model, users=users, config=config)
    print(json.dumps(result, indent=2))
    print_table(result)


if __name__ == "__main__":
    main()
