"""A llama.cpp worker process for the benchmark: one GGUF, JSON lines on stdin/stdout.

    python -m ollama_slim.bench.llama_worker MODEL.gguf N_CTX THREADS

It imports only llama-cpp-python and numpy, so its peak memory (``ru_maxrss``) is the
model's own plus a small, equal interpreter baseline. Requests: ``{"op": "run",
"prompt": str, "n_predict": int}``, ``{"op": "memory"}``, ``{"op": "stop"}``; replies:
``{"ok": value}`` or ``{"error": "one line"}``. The first reply says whether it loaded.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any


def peak_rss() -> int:
    """Peak resident memory of this process in bytes.

    ``VmHWM`` where /proc has it: ``ru_maxrss`` survives ``exec`` on Linux and would carry
    the parent's peak. ``ru_maxrss`` (KiB on Linux, bytes on macOS) elsewhere.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def generate(llm: Any, prompt: str, n_predict: int) -> list[float]:
    """Prompt pass, then ``n_predict`` greedy decode steps (past end-of-text, so every run
    decodes the same number of tokens): ``[prompt tokens, prompt s, tokens, s]``."""
    import llama_cpp
    import numpy as np

    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    if len(tokens) + n_predict + 1 > llm.n_ctx():
        raise ValueError(f"prompt of {len(tokens)} tokens + {n_predict} to generate exceeds the context of {llm.n_ctx()}")
    vocab, ctx = llm.n_vocab(), llm._ctx.ctx

    def next_token() -> int:
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(vocab,))))

    llm.reset()
    start = time.perf_counter()
    llm.eval(tokens)
    token = next_token()
    prompt_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n_predict):
        llm.eval([token])
        token = next_token()
    return [len(tokens), prompt_s, n_predict, time.perf_counter() - start]


def _reply(**message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _one_line(err: BaseException) -> str:
    return (f"{type(err).__name__}: {err}".splitlines() or [type(err).__name__])[0]


def main(argv: list[str]) -> int:
    path, n_ctx, threads = argv[0], int(argv[1]), (int(argv[2]) or None)
    try:
        from llama_cpp import Llama

        llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    except Exception as err:  # noqa: BLE001 - reported to the parent as one line
        _reply(error=_one_line(err))
        return 1
    _reply(ok="ready")
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "stop":
            break
        try:
            _reply(ok=peak_rss() if request["op"] == "memory" else generate(llm, request["prompt"], int(request["n_predict"])))
        except Exception as err:  # noqa: BLE001
            _reply(error=_one_line(err))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
