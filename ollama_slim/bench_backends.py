"""The built-in benchmark backends: ``ollama`` (its API timings) and ``llama-cpp`` (GGUF files).

``auto`` tries them in this order: Ollama when a server answers, else llama.cpp.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from .bench import BenchConfig, Sample, Target, param_counts, register_backend
from .errors import OllamaError, SlimError, SourceError, UsageError
from .ollama_api import ApiOptions, call, client, find_model, host_url, server_answers
from .register import find_gguf
from .runs import RunLayout
from .tags import parse_name

# --------------------------------------------------------------------------- ollama


def ollama_name(ref: str) -> str:
    """An Ollama model name for ``ref``: the name itself, or the one a run directory registered."""
    path = Path(ref)
    record = RunLayout(path).register
    if path.is_dir() and record.is_file():
        return json.loads(record.read_text(encoding="utf-8"))["name"]
    if path.exists():
        raise UsageError(f"{ref} is a file, and the ollama backend measures models registered in Ollama", hint=f"register it first (ollama-slim register {ref} --name NAME), or use --backend llama-cpp")
    parse_name(ref)
    return ref


class OllamaSession:
    """Both models through the Ollama API; speeds from its nanosecond timing fields."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.api = ApiOptions(host=config.host, timeout_s=600.0)
        self.client = client(self.api)
        self.refs = (config.original, config.slim)
        self.names = tuple(ollama_name(ref) for ref in self.refs)
        for name in self.names:
            if find_model(self.client, name, options=self.api) is None:
                raise OllamaError(f"model {name!r} is not in Ollama at {host_url(self.api.host)}", hint="pull it (ollama pull NAME) or register it (ollama-slim register GGUF --name NAME)")
        self.peaks: list[int | None] = [None, None]

    def run(self, index: int, prompt: str) -> Sample:
        name = self.names[index]
        options: dict[str, Any] = {"num_predict": self.config.n_predict, "temperature": 0, "seed": 0, "num_ctx": self.config.n_ctx}
        if self.config.threads:
            options["num_thread"] = self.config.threads
        answer = call(lambda: self.client.generate(model=name, prompt=prompt, options=options, stream=False, keep_alive="10m"),
                      action=f"generate with {name}", options=self.api, safe=True)
        if not (answer.eval_count and answer.eval_duration and answer.prompt_eval_count and answer.prompt_eval_duration):
            raise OllamaError(f"Ollama returned no timings for {name}", hint="update Ollama; the benchmark reads eval_count/eval_duration and prompt_eval_count/prompt_eval_duration")
        self._note_memory(index)
        return Sample(prompt_tokens=answer.prompt_eval_count, prompt_s=answer.prompt_eval_duration / 1e9, gen_tokens=answer.eval_count, gen_s=answer.eval_duration / 1e9)

    def _note_memory(self, index: int) -> None:
        running = call(self.client.ps, action="list running models", options=self.api, safe=True)
        for model in running.models:
            if _same_name(model.model or model.name or "", self.names[index]) and model.size:
                self.peaks[index] = max(self.peaks[index] or 0, int(model.size))

    def target(self, index: int) -> Target:
        name = self.names[index]
        listed = call(self.client.list, action="list its models", options=self.api, safe=True)
        size = next((int(m.size) for m in listed.models if _same_name(m.model or "", name) and m.size), None)
        return Target(ref=self.refs[index], target=name, size_bytes=size, params=_store_params(name))

    def peak_memory(self, index: int) -> int | None:
        return self.peaks[index]

    def close(self) -> None:
        pass


def _same_name(a: str, b: str) -> bool:
    try:
        return parse_name(a).short == parse_name(b).short
    except SlimError:
        return False


def _store_params(name: str) -> Any:
    """Parameter counts from the model's GGUF when the Ollama store is on this machine."""
    from .sources import ollama_blob

    try:
        blob = ollama_blob(parse_name(name))
    except SlimError:
        return None
    return param_counts(blob) if blob is not None else None


@register_backend("ollama", "the Ollama API's timings (prompt_eval_count/_duration, eval_count/_duration)",
                  available=lambda config: server_answers(ApiOptions(host=config.host)))
def _open_ollama(config: BenchConfig) -> OllamaSession:
    return OllamaSession(config)


# --------------------------------------------------------------------------- llama-cpp


def gguf_for(ref: str) -> Path:
    """The GGUF of ``ref``: a file, a run directory, or an Ollama tag (store, package, resolve)."""
    from .sources import ollama_blob, package_gguf, resolve
    from .tags import lookup

    path = Path(ref)
    if path.exists():
        return find_gguf(path)
    if ref.endswith(".gguf"):
        raise UsageError(f"{ref} does not exist", hint="check the path")
    name = parse_name(ref)
    found = ollama_blob(name)
    entry = lookup(name)
    if found is None and entry is not None and entry.package:
        found = package_gguf(entry.package)
    if found is None:
        found = resolve(ref).gguf_path
    if found is None:
        raise SourceError(f"{ref} resolves to Hugging Face weights, not a GGUF", hint="export it first (ollama-slim build/export) and bench the .gguf")
    return found


class LlamaSession:
    """One llama.cpp worker process per model, so each model's peak memory is its own."""

    def __init__(self, config: BenchConfig) -> None:
        import multiprocessing

        self.config = config
        self.refs = (config.original, config.slim)
        self.paths = tuple(gguf_for(ref) for ref in self.refs)
        spawn = multiprocessing.get_context("spawn")
        self.workers = []
        for path in self.paths:
            conn, child = spawn.Pipe()
            proc = spawn.Process(target=llama_worker, args=(child, str(path), config.n_ctx, config.threads), daemon=True)
            proc.start()
            self.workers.append((proc, conn))
        try:
            for index in (0, 1):
                self._reply(index)  # "ready"
        except SlimError:
            self.close()
            raise

    def _reply(self, index: int) -> Any:
        proc, conn = self.workers[index]
        try:
            kind, value = conn.recv()
        except (EOFError, OSError):
            raise SourceError(f"llama.cpp stopped while running {self.paths[index]}", hint="the GGUF may be damaged; check that it loads: ollama-slim export checks every export") from None
        if kind == "error":
            raise SourceError(f"llama.cpp cannot run {self.paths[index]}: {value}", hint="check that the file is a complete GGUF of a supported architecture")
        return value

    def run(self, index: int, prompt: str) -> Sample:
        self.workers[index][1].send(("run", prompt, self.config.n_predict))
        return Sample(*self._reply(index))

    def target(self, index: int) -> Target:
        path = self.paths[index]
        return Target(ref=self.refs[index], target=str(path), size_bytes=path.stat().st_size, params=param_counts(path))

    def peak_memory(self, index: int) -> int | None:
        self.workers[index][1].send(("memory",))
        return int(self._reply(index))

    def close(self) -> None:
        for proc, conn in self.workers:
            try:
                conn.send(("stop",))
            except OSError:
                pass
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        self.workers = []


def llama_worker(conn: Any, path: str, n_ctx: int, threads: int | None) -> None:
    """Worker process: load ``path`` once, then answer ``run`` / ``memory`` / ``stop`` messages."""
    try:
        from llama_cpp import Llama

        llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
        conn.send(("ready", None))
    except Exception as err:  # noqa: BLE001 - reported to the parent as one line
        conn.send(("error", f"{type(err).__name__}: {err}".splitlines()[0]))
        return
    while True:
        message = conn.recv()
        if message[0] == "stop":
            return
        try:
            value = _peak_rss() if message[0] == "memory" else _generate(llm, message[1], message[2])
            conn.send(("ok", value))
        except Exception as err:  # noqa: BLE001
            conn.send(("error", f"{type(err).__name__}: {err}".splitlines()[0]))


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _generate(llm: Any, prompt: str, n_predict: int) -> tuple[int, float, int, float]:
    """Prompt pass, then ``n_predict`` greedy decode steps (past end-of-text, so every run
    decodes the same number of tokens). Returns the fields of a :class:`Sample`."""
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
    return len(tokens), prompt_s, n_predict, time.perf_counter() - start


@register_backend("llama-cpp", "llama-cpp-python on the GGUF files (a worker process per model)",
                  available=lambda config: importlib.util.find_spec("llama_cpp") is not None)
def _open_llama(config: BenchConfig) -> LlamaSession:
    return LlamaSession(config)

