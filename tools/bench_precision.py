"""Healing precision: one training step (forward and backward) of the model in float32 against
the same step under torch's bf16 autocast (what accelerate's bf16 mixed precision runs on a CPU),
in the same run, on this machine's CPU.

    python tools/bench_precision.py [--model smollm2:135m] [--batch 4] [--tokens 64] [--repeats 3]

Why: ``bench_quality``'s healing defaulted to bf16 mixed precision, which is about twice as fast
as float32 on a CPU with bf16 matmuls (avx512_bf16 or AMX), and which torch emulates on an
AVX2-only CPU. ``--mixed-precision auto`` (now the default) picks bf16 only where
``bfloat16_native()`` says the hardware has it; this benchmark shows what the choice is worth here.
The two precisions alternate after a warm-up step of each, so that machine load hits both alike;
reported: seconds per step (median of the repeats), the ratio, and the loss of each (they agree
to bf16's precision). Prints JSON on stdout and a table on stderr.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import click
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ollama_slim.models.modeling import LoadOptions, bfloat16_native, load_model  # noqa: E402
from ollama_slim.models.sources import resolve  # noqa: E402

PRECISIONS = ("float32", "bf16 autocast")


def timed_step(model, ids: torch.Tensor, precision: str) -> tuple[float, float]:
    """``(seconds, loss)`` of one forward and backward pass of ``model`` on ``ids``."""
    model.zero_grad(set_to_none=True)
    began = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "float32"):
        loss = model(ids, labels=ids).loss
    loss.backward()
    return time.perf_counter() - began, float(loss)


@click.command(help=__doc__)
@click.option("--model", default="smollm2:135m", show_default=True, help="Model to time (an Ollama name or a local directory).")
@click.option("--batch", default=4, show_default=True, help="Sequences per step.")
@click.option("--tokens", default=64, show_default=True, help="Tokens per sequence.")
@click.option("--repeats", default=3, show_default=True, help="Timed steps of each precision, after one warm-up step each.")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's own).")
def main(model: str, batch: int, tokens: int, repeats: int, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    net = load_model(resolve(model).model_dir, LoadOptions(dtype="float32"))
    net.train()
    ids = torch.randint(0, net.config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    losses: dict[str, float] = {}
    for p in PRECISIONS:
        timed_step(net, ids, p)
    for _ in range(repeats):
        for p in PRECISIONS:
            s, losses[p] = timed_step(net, ids, p)
            seconds[p].append(s)
    median = {p: statistics.median(v) for p, v in seconds.items()}
    report = {
        "model": model, "batch": batch, "tokens": tokens, "repeats": repeats, "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bfloat16_native": bfloat16_native(),
        "seconds": seconds, "median_seconds": median, "loss": losses,
        "bf16_over_float32": median["bf16 autocast"] / median["float32"],
    }
    print(json.dumps(report, indent=2))

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"one training step, {batch} x {tokens} tokens, {report['threads']} threads, "
                        f"{report['cpu_capability']} (bf16 native: {report['bfloat16_native']})")
    for column in ("precision", "seconds per step (median)", "loss"):
        table.add_column(column)
    for p in PRECISIONS:
        table.add_row(p, f"{median[p]:.2f}", f"{losses[p]:.4f}")
    Console(stderr=True).print(table)
    Console(stderr=True).print(f"bf16 autocast takes {report['bf16_over_float32']:.1f}x the time of float32 here")


if __name__ == "__main__":
    main()
