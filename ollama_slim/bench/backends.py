"""The built-in benchmark backends: ``ollama`` (its API timings) and ``llama-cpp`` (GGUF files).

``auto`` tries them in this order: Ollama when a server answers and both models are
Ollama names (or run directories that registered one), else llama.cpp on the GGUFs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ollama_slim.bench.registry import register_backend
from ollama_slim.bench.speed import BenchConfig, Sample, Target, param_counts
from ollama_slim.errors import OllamaError, SlimError, SourceError, UsageError
from ollama_slim.ollama.api import ApiOptions, call, client, find_model, host_url, server_answers
from ollama_slim.ollama.register import find_gguf
from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.models.tags import parse_name

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # so `-m ollama_slim.bench.llama_worker` finds this copy

# --------------------------------------------------------------------------- ollama


def registered_name(run_dir: Path) -> str | None:
    """The Ollama name a run directory's ``register.json`` records, if it registered one."""
    record = RunLayout(run_dir).register
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("name") if isinstance(data, dict) and data.get("registered", True) else None
    return name if isinstance(name, str) and name else None


def ollama_name(ref: str) -> str:
    """An Ollama model name for ``ref``: the name itself, or the one a run directory registered."""
    path = Path(ref)
    if path.is_dir() and registered_name(path):
        return registered_name(path)
    if path.is_dir():
        raise UsageError(f"run directory {ref} has registered no model in Ollama", hint=f"register it first (ollama-slim register {ref} --name NAME), or use --backend llama-cpp")
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


def is_ollama_ref(ref: str) -> bool:
    """True for a model name, or a run directory that records a registered name."""
    path = Path(ref)
    return not path.exists() or (path.is_dir() and registered_name(path) is not None)


def _same_name(a: str, b: str) -> bool:
    try:
        return parse_name(a).short == parse_name(b).short
    except SlimError:
        return False


def _store_params(name: str) -> Any:
    """Parameter counts from the model's GGUF when the Ollama store is on this machine."""
    from ollama_slim.models.sources import ollama_blob

    try:
        blob = ollama_blob(parse_name(name))
    except SlimError:
        return None
    return param_counts(blob) if blob is not None else None


def _ollama_available(config: BenchConfig) -> bool:
    refs = (config.original, config.slim)
    return all(is_ollama_ref(r) for r in refs) and server_answers(ApiOptions(host=config.host))


@register_backend("ollama", "the Ollama API's timings (prompt_eval_count/_duration, eval_count/_duration)", available=_ollama_available)
def _open_ollama(config: BenchConfig) -> OllamaSession:
    return OllamaSession(config)


# --------------------------------------------------------------------------- llama-cpp


def gguf_for(ref: str) -> Path:
    """The GGUF of ``ref``: a file, a run directory, ``hf.co/USER/REPO[:QUANT]``, or an Ollama tag (store, package, resolve)."""
    from ollama_slim.sharing.hub import parse_hf_ref, ref_gguf
    from ollama_slim.models.sources import ollama_blob, package_gguf, resolve
    from ollama_slim.models.tags import lookup

    path = Path(ref)
    if path.exists():
        return find_gguf(path)
    if ref.endswith(".gguf"):
        raise UsageError(f"{ref} does not exist", hint="check the path")
    hf_ref = parse_hf_ref(ref)
    if hf_ref is not None:
        return ref_gguf(hf_ref)[0]
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


def _worker_env() -> dict[str, str]:
    """The environment of a worker: this copy of ollama_slim first on its path."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": _PACKAGE_ROOT + (os.pathsep + path if path else "")}


class LlamaSession:
    """One llama.cpp worker process per model (``ollama_slim.bench.llama_worker``), so each
    model's peak memory is its own process's."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.refs = (config.original, config.slim)
        self.paths = tuple(gguf_for(ref) for ref in self.refs)
        self.workers: list[subprocess.Popen] = []
        try:
            for path in self.paths:
                args = [sys.executable, "-m", "ollama_slim.bench.llama_worker", str(path), str(config.n_ctx), str(config.threads or 0)]
                self.workers.append(subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_worker_env()))
            for index in (0, 1):
                self._ask(index, None)  # "ready"
        except BaseException:
            self.close()
            raise

    def _ask(self, index: int, request: dict[str, Any] | None) -> Any:
        proc = self.workers[index]
        try:
            if request is not None:
                proc.stdin.write(json.dumps(request) + "\n")
                proc.stdin.flush()
            reply = json.loads(proc.stdout.readline() or "null")
        except (OSError, ValueError):
            reply = None
        if reply is None:
            raise SourceError(f"llama.cpp stopped while running {self.paths[index]}", hint="the GGUF may be damaged; `ollama-slim export` checks every export it writes")
        if "error" in reply:
            raise SourceError(f"llama.cpp cannot run {self.paths[index]}: {reply['error']}", hint="check that the file is a complete GGUF of a supported architecture")
        return reply["ok"]

    def run(self, index: int, prompt: str) -> Sample:
        return Sample(*self._ask(index, {"op": "run", "prompt": prompt, "n_predict": self.config.n_predict}))

    def target(self, index: int) -> Target:
        path = self.paths[index]
        return Target(ref=self.refs[index], target=str(path), size_bytes=path.stat().st_size, params=param_counts(path))

    def peak_memory(self, index: int) -> int | None:
        return int(self._ask(index, {"op": "memory"}))

    def close(self) -> None:
        for proc in self.workers:
            try:
                proc.stdin.write(json.dumps({"op": "stop"}) + "\n")
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.workers = []


@register_backend("llama-cpp", "llama-cpp-python on the GGUF files (a worker process per model)",
                  available=lambda config: importlib.util.find_spec("llama_cpp") is not None)
def _open_llama(config: BenchConfig) -> LlamaSession:
    return LlamaSession(config)

