"""GGUF scoring speed: the llama.cpp scorer's one batched decode per user against one decode per
candidate on the prompt's KV cache (its earlier path), in the same run.

    python tools/bench_gguf_scorer.py GGUF [--data DIR] [--users 10] [--repeats 3] [--threads N]

For each user (design §3 protocol: 1 + 19 candidates, history 5, titles cut to 10 words) both
paths score the same token ids, interleaved after a warm-up user so that machine load hits
both alike:
- batched (``LlamaCppScorer``): the prompt's tokens in every candidate's sequence, each
  candidate's tokens in its own, one ``llama_decode`` over the unified KV cache;
- one by one: the prompt decoded once, then each candidate decoded on its KV cache, cut back
  to the prompt in between.
Reported: seconds per user (median of the repeats, averaged over users), the ratio, and the
mean and largest |score difference| between the paths (both run the GGUF's quantized matmuls; the KV
cache is f16). Prints JSON on stdout and a table on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ollama_slim.models.lm import mean_token_logprob  # noqa: E402
from ollama_slim.recsys.data import load_dataset  # noqa: E402
from ollama_slim.recsys.evaluate import EvalConfig, encode_case, prepare_cases  # noqa: E402
from ollama_slim.recsys.scorers import LlamaCppScorer, ScorerOptions  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "amazon-electronics-2014"


class OneByOne:
    """The earlier path: the prompt once, then every candidate on its KV cache, one decode each."""

    def __init__(self, gguf: Path, *, threads: int, context: int = 1024) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=context, n_batch=512, logits_all=True, n_threads=threads, n_threads_batch=threads, verbose=False)

    def score(self, prompt: list[int], candidates: list[list[int]]) -> np.ndarray:
        llm, p = self.llm, len(prompt)
        llm.reset()
        llm.eval(prompt)
        first = torch.tensor(llm.scores[p - 1 : p], dtype=torch.float64)
        out = np.empty(len(candidates))
        for row, cand in enumerate(candidates):
            llm.n_tokens = p
            logits = first
            if len(cand) > 1:
                llm.eval(cand[:-1])
                logits = torch.cat([first, torch.tensor(llm.scores[p : p + len(cand) - 1], dtype=torch.float64)])
            out[row] = float(mean_token_logprob(logits, torch.tensor(cand, dtype=torch.long)))
        return out


def _timed(scorer, prompt: list[int], cands: list[list[int]]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    scores = scorer.score(prompt, cands)
    return scores, time.perf_counter() - start


@click.command()
@click.argument("gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", default=str(DEFAULT_DATA), show_default=True)
@click.option("--users", type=int, default=10, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
def main(gguf: Path, data: str, users: int, repeats: int, threads: int) -> None:
    from rich.console import Console
    from rich.table import Table

    dataset = load_dataset(data)
    config = EvalConfig(data=data, users=users + 1, history=5, title_words=10)
    batched, one = LlamaCppScorer(gguf, options=ScorerOptions(threads=threads)), OneByOne(gguf, threads=threads)
    encoded = [encode_case(batched.tokenizer, dataset, case, config.prompt_config()) for case in prepare_cases(dataset, config)]
    warm, encoded = encoded[0], encoded[1:]
    batched.score(*warm), one.score(*warm)
    times: dict[str, list[float]] = {"batched": [], "one_by_one": []}
    diffs: list[np.ndarray] = []
    for prompt, cands in encoded:
        runs: dict[str, list[float]] = {"batched": [], "one_by_one": []}
        for _ in range(repeats):
            a, t = _timed(batched, prompt, cands)
            runs["batched"].append(t)
            b, t = _timed(one, prompt, cands)
            runs["one_by_one"].append(t)
            diffs.append(np.abs(a - b))
        for key, values in runs.items():
            times[key].append(float(np.median(values)))
    per_user = {key: sum(values) / len(values) for key, values in times.items()}
    diff, mean_diff = float(np.max([d.max() for d in diffs])), float(np.mean(np.concatenate(diffs)))
    report = {"gguf": str(gguf), "data": data, "users": len(encoded), "repeats": repeats, "threads": threads,
              "seconds_per_user": per_user, "speedup": per_user["one_by_one"] / per_user["batched"], "max_abs_score_diff": diff, "mean_abs_score_diff": mean_diff}
    print(json.dumps(report, indent=2))
    table = Table(title=f"llama.cpp scoring, {gguf.name}, {len(encoded)} users x 20 candidates")
    for column in ("path", "s / user", "vs one by one"):
        table.add_column(column)
    table.add_row("one decode per candidate (earlier)", f"{per_user['one_by_one']:.3f}", "1.00x")
    table.add_row("one batched decode per user", f"{per_user['batched']:.3f}", f"{report['speedup']:.2f}x")
    Console(stderr=True).print(table)
    Console(stderr=True).print(f"|score difference| between the paths: mean {mean_diff:.2e}, largest {diff:.2e}")


if __name__ == "__main__":
    main()
