"""A stand-in Ollama server for the tests: Ollama's documented API on 127.0.0.1.

It keeps blobs and manifests in Ollama's on-disk layout, checks what Ollama checks
(sha256 of uploaded blobs, digest format, model names, ``files`` paths, GGUF magic,
template syntax), answers ``/api/generate`` and ``/api/chat`` with llama-cpp-python on the
registered GGUF (nanosecond timing fields as Ollama reports them), copies models and pushes
them to an in-memory "remote registry" (``registry``: pushed name -> digest) with Ollama's
streamed progress, and can simulate failures: refuse connections (stopped), answer slowly,
answer 5xx, cut uploads off, or break a push mid-stream (an error line, or a cut connection).

Written from Ollama's docs/api.md and server code (routes.go, create.go, types/model/name.go);
no code of theirs is copied.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

VERSION = "0.12.6"
_DIGEST = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
_MEDIA = {
    "model": "application/vnd.ollama.image.model",
    "template": "application/vnd.ollama.image.template",
    "params": "application/vnd.ollama.image.params",
    "config": "application/vnd.docker.container.image.v1+json",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class CutStream(Exception):
    """Raised inside a streamed answer: drop the connection without finishing the stream."""


# --------------------------------------------------------------------------- names, as Ollama reads them


def parse_name(text: str) -> tuple[str, str, str, str] | None:
    """``(host, namespace, model, tag)`` of a name Ollama accepts, else None."""
    s, tag = text, ""
    if s.rfind(":") > s.rfind("/"):
        s, tag = s.rsplit(":", 1)
        tag = tag or "!"
    parts = s.rsplit("/", 2)
    host, namespace = "registry.ollama.ai", "library"
    if len(parts) == 3:
        host, namespace, model = parts
        host = host.split("://", 1)[-1]
    elif len(parts) == 2:
        namespace, model = parts
    else:
        model = parts[0]
    name = (host, namespace, model, tag or "latest")
    return name if all(_valid_part(k, p) for k, p in zip(("host", "namespace", "model", "tag"), name)) else None


def _valid_part(kind: str, part: str) -> bool:
    if not 1 <= len(part) <= (350 if kind == "host" else 80):
        return False
    if not (part[0].isascii() and (part[0].isalnum() or part[0] == "_")):
        return False
    for ch in part[1:]:
        if ch.isascii() and (ch.isalnum() or ch in "_-"):
            continue
        if ch == "." and kind != "namespace":
            continue
        if ch == ":" and kind == "host":
            continue
        return False
    return True


def display(name: tuple[str, str, str, str]) -> str:
    host, namespace, model, tag = name
    if host != "registry.ollama.ai":
        return f"{host}/{namespace}/{model}:{tag}"
    return f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"


# --------------------------------------------------------------------------- Go templates (the subset Ollama's chat templates use)

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)


def parse_template(text: str) -> list[Any]:
    """A tree of text / output / if / range nodes; ValueError for a template Go would refuse."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(text):
        chunk = text[pos : m.start()]
        if m.group(1):
            chunk = chunk.rstrip()
        if tokens and tokens[-1][0] == "trim":
            chunk = chunk.lstrip()
            tokens.pop()
        tokens.append(("text", chunk))
        tokens.append(("action", m.group(2)))
        if m.group(3):
            tokens.append(("trim", ""))
        pos = m.end()
    rest = text[pos:]
    if tokens and tokens[-1][0] == "trim":
        rest = rest.lstrip()
        tokens.pop()
    if "{{" in rest:
        raise ValueError("unclosed action")
    tokens.append(("text", rest))
    body, end = _nodes(tokens, 0)
    if end != len(tokens):
        raise ValueError(f"unexpected {{{{{tokens[end][1]}}}}}")
    return body


def _nodes(tokens: list[tuple[str, str]], i: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            out.append(("text", value))
        elif value in ("end", "else"):
            return out, i
        elif value.startswith(("if ", "range ")):
            word, expr = value.split(None, 1)
            body, i = _nodes(tokens, i + 1)
            other: list[Any] = []
            if i < len(tokens) and tokens[i][1] == "else":
                other, i = _nodes(tokens, i + 1)
            if i >= len(tokens) or tokens[i][1] != "end":
                raise ValueError(f"missing {{{{end}}}} for {word}")
            out.append((word, _expr(expr), body, other))
        else:
            out.append(("out", _expr(value)))
        i += 1
    return out, i


def _expr(text: str) -> tuple[str, Any]:
    if text.startswith('"'):
        return ("const", json.loads(text))
    if text == ".":
        return ("dot", None)
    if re.fullmatch(r"(\.[A-Za-z_][A-Za-z0-9_]*)+", text):
        return ("field", text[1:].split("."))
    raise ValueError(f"unsupported expression {text!r}")


def render_template(nodes: list[Any], dot: Any) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(str(_value(node[1], dot) or ""))
        elif node[0] == "if":
            out.append(render_template(node[2] if _value(node[1], dot) else node[3], dot))
        else:
            items = _value(node[1], dot) or []
            out.append("".join(render_template(node[2], item) for item in items) if items else render_template(node[3], dot))
    return "".join(out)


def _value(expr: tuple[str, Any], dot: Any) -> Any:
    kind, arg = expr
    if kind == "const":
        return arg
    if kind == "dot":
        return dot
    for part in arg:
        dot = dot.get(part) if isinstance(dot, dict) else None
    return dot


# --------------------------------------------------------------------------- the store


@dataclass
class Model:
    name: tuple[str, str, str, str]
    gguf: Path
    digest: str
    template: str
    params: dict[str, Any]
    modified: str


@dataclass
class Faults:
    """Failures to simulate. Paths are prefixes such as ``/api/blobs``."""

    delay_s: dict[str, float] = field(default_factory=dict)
    fail: dict[str, list[int]] = field(default_factory=dict)  # statuses to answer, consumed in order
    cut_uploads: int = 0  # the next N blob uploads are cut off half-way
    push_errors: list[str] = field(default_factory=list)  # the next pushes end with these error lines after one layer
    cut_pushes: int = 0  # the next N pushes lose their connection after one layer


class Store:
    """Blobs and manifests in Ollama's layout under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.models: dict[tuple[str, str, str, str], Model] = {}
        self.lock = threading.RLock()

    def blob(self, digest: str) -> Path:
        return self.blobs / digest.replace(":", "-")

    def put_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blob(digest).write_bytes(data)
        return digest

    def find(self, text: str) -> Model | None:
        name = parse_name(text)
        if name is None:
            raise ApiError(400, "invalid model name")
        for key, model in self.models.items():
            if tuple(p.lower() for p in key) == tuple(p.lower() for p in name):
                return model
        return None

    def save(self, name: tuple[str, str, str, str], digest: str, template: str, params: dict[str, Any]) -> Model:
        with self.lock:
            existing = self.find(display(name))
            if existing is not None:
                del self.models[existing.name]
                name = existing.name  # Ollama keeps the stored spelling
            model = Model(name, self.blob(digest), digest, template, params, datetime.now(timezone.utc).isoformat())
            self.models[name] = model
            self._write_manifest(model)
            return model

    def _write_manifest(self, model: Model) -> None:
        layers = [{"mediaType": _MEDIA["model"], "digest": model.digest, "size": model.gguf.stat().st_size}]
        if model.template:
            d = self.put_blob(model.template.encode())
            layers.append({"mediaType": _MEDIA["template"], "digest": d, "size": len(model.template.encode())})
        if model.params:
            raw = json.dumps(model.params).encode()
            layers.append({"mediaType": _MEDIA["params"], "digest": self.put_blob(raw), "size": len(raw)})
        config = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
        manifest = {"schemaVersion": 2, "mediaType": _MANIFEST_TYPE, "config": {"mediaType": _MEDIA["config"], "digest": self.put_blob(config), "size": len(config)}, "layers": layers}
        path = self.root / "manifests" / Path(*model.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest))

    def manifest(self, model: Model) -> dict[str, Any]:
        return json.loads((self.root / "manifests" / Path(*model.name)).read_text())

    def delete(self, model: Model) -> None:
        with self.lock:
            del self.models[model.name]
            (self.root / "manifests" / Path(*model.name)).unlink(missing_ok=True)


# --------------------------------------------------------------------------- generation


class Runner:
    """llama-cpp-python on registered GGUFs, one loaded model per digest."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.loaded: dict[str, Any] = {}
        self.lock = threading.Lock()

    def generate(self, model: Model, prompt: str, options: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Yield ``{"piece": str}`` per token, then the final counts and durations."""
        with self.lock:
            start = time.perf_counter_ns()
            llm = self._load(model)
            load_ns = time.perf_counter_ns() - start
            tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
            llm.reset()
            t0 = time.perf_counter_ns()
            llm.eval(tokens)
            prompt_ns = time.perf_counter_ns() - t0
            stops = list(model.params.get("stop", [])) + list(options.get("stop") or [])
            yield from self._decode(llm, options, stops, load_ns=load_ns, prompt=(len(tokens), prompt_ns), start=start)

    def _decode(self, llm: Any, options: dict[str, Any], stops: list[str], *, load_ns: int, prompt: tuple[int, int], start: int) -> Iterator[dict[str, Any]]:
        limit = int(options.get("num_predict", 128))
        limit = 128 if limit < 0 else limit
        temp = float(options.get("temperature", 0.8))
        text, count, reason = "", 0, "length"
        t0 = time.perf_counter_ns()
        while count < limit:
            token = llm.sample(temp=temp, top_k=40, top_p=0.9)
            count += 1
            if token == llm.token_eos():
                reason = "stop"
                break
            piece = llm.detokenize([token], special=True).decode("utf-8", "replace")
            text += piece
            if any(s in text for s in stops):
                reason = "stop"
                break
            yield {"piece": piece}
            llm.eval([token])
        eval_ns = time.perf_counter_ns() - t0
        yield {"done": True, "done_reason": reason, "total_duration": time.perf_counter_ns() - start, "load_duration": load_ns,
               "prompt_eval_count": prompt[0], "prompt_eval_duration": prompt[1], "eval_count": count, "eval_duration": eval_ns}

    def _load(self, model: Model) -> Any:
        if model.digest not in self.loaded:
            from llama_cpp import Llama

            self.loaded[model.digest] = Llama(model_path=str(model.gguf), n_ctx=1024, n_threads=self.threads, n_threads_batch=self.threads, n_batch=512, verbose=False, seed=0)
        return self.loaded[model.digest]


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        app = self.server.app
        app.requests.append((method, self.path))
        if self._fault(app.faults):
            return
        route = app.route(method, self.path)
        if route is None:
            self._drain()
            return self._json(404 if method != "HEAD" else 404, {"error": "404 page not found"})
        try:
            route(self)
        except ApiError as err:
            self._json(err.status, {"error": err.message})

    def _fault(self, faults: Faults) -> bool:
        for prefix, delay in faults.delay_s.items():
            if self.path.startswith(prefix):
                time.sleep(delay)
        for prefix, statuses in faults.fail.items():
            if self.path.startswith(prefix) and statuses:
                self._drain()
                self._json(statuses.pop(0), {"error": "simulated server failure"})
                return True
        return False

    # body helpers
    def body_chunks(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    def _drain(self) -> None:
        for _ in self.body_chunks():
            pass

    def read_json(self) -> dict[str, Any]:
        raw = b"".join(self.body_chunks())
        if not raw:
            raise ApiError(400, "missing request body")
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise ApiError(400, str(err)) from None
        self.server.app.bodies.append((self.path, data))
        return data

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def stream(self, items: Iterator[dict[str, Any]]) -> None:
        """NDJSON with chunked transfer encoding, as Ollama streams; an error mid-way is a line."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for item in items:
                self._chunk(json.dumps(item).encode() + b"\n")
        except ApiError as err:
            self._chunk(json.dumps({"error": err.message}).encode() + b"\n")
        except CutStream:
            return self.cut()
        self._chunk(b"")

    def empty(self, status: int) -> None:
        """A status with no body (what gin's ``c.Status`` sends)."""
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def cut(self) -> None:
        """Drop the connection without an answer (a cut-off upload)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: "OllamaStandIn"


class OllamaStandIn:
    """The stand-in server: ``with OllamaStandIn(models_dir) as server: server.url``."""

    def __init__(self, models_dir: Path, *, threads: int = 1) -> None:
        self.store = Store(models_dir)
        self.runner = Runner(threads)
        self.faults = Faults()
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.uploads = 0
        self.registry: dict[str, str] = {}  # the remote registry: name as `display` writes it -> digest (sha256:...)
        self.remote_blobs: set[str] = set()  # layers the registry holds (a push sends them again at once)
        self.pushes: list[str] = []  # names pushed to the end, in order
        self._httpd: _Server | None = None
        self.port = 0

    # lifecycle
    def start(self) -> "OllamaStandIn":
        self._httpd = _Server(("127.0.0.1", self.port), _Handler)
        self._httpd.app = self
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "OllamaStandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_model(self, name: str, gguf: Path, *, template: str = "", params: dict[str, Any] | None = None) -> Model:
        """Seed a model as if it had been pulled (copies the GGUF into the blob store)."""
        digest = self.store.put_blob(Path(gguf).read_bytes())
        parsed = parse_name(name)
        assert parsed is not None, name
        return self.store.save(parsed, digest, template, params or {})

    # routing
    def route(self, method: str, path: str) -> Any:
        path = path.split("?", 1)[0]
        table = {
            ("GET", "/"): self._root, ("HEAD", "/"): self._root,
            ("GET", "/api/version"): self._version, ("HEAD", "/api/version"): self._version,
            ("GET", "/api/tags"): self._tags, ("GET", "/api/ps"): self._ps,
            ("POST", "/api/create"): self._create, ("POST", "/api/show"): self._show,
            ("DELETE", "/api/delete"): self._delete, ("POST", "/api/generate"): self._generate,
            ("POST", "/api/chat"): self._chat,
            ("POST", "/api/copy"): self._copy, ("POST", "/api/push"): self._push,
        }
        if path.startswith("/api/blobs/") and method in ("HEAD", "POST"):
            return self._head_blob if method == "HEAD" else self._post_blob
        return table.get((method, path))

    def _root(self, h: _Handler) -> None:
        data = b"Ollama is running"
        h.send_response(200)
        h.send_header("Content-Type", "text/plain; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def _version(self, h: _Handler) -> None:
        h._json(200, {"version": VERSION})

    # blobs
    def _digest(self, h: _Handler) -> str:
        digest = h.path.split("?", 1)[0].rsplit("/", 1)[-1]
        if not _DIGEST.match(digest):
            h._drain()
            raise ApiError(400, "invalid digest format")
        return digest

    def _head_blob(self, h: _Handler) -> None:
        digest = self._digest(h)
        if not self.store.blob(digest).is_file():
            raise ApiError(404, f'blob "{digest}" not found')
        h._json(200, {})

    def _post_blob(self, h: _Handler) -> None:
        digest = self._digest(h)
        self.uploads += 1
        if self.store.blob(digest).is_file():
            h._drain()
            return h._json(200, {})
        if self.faults.cut_uploads > 0:
            self.faults.cut_uploads -= 1
            wanted = int(h.headers.get("Content-Length") or 0) // 2
            h.rfile.read(wanted)
            return h.cut()
        sha, tmp = hashlib.sha256(), self.store.blobs / f".upload-{threading.get_ident()}"
        with tmp.open("wb") as out:
            for chunk in h.body_chunks():
                sha.update(chunk)
                out.write(chunk)
        got = "sha256:" + sha.hexdigest()
        if got != digest.replace("-", ":", 1):
            tmp.unlink()
            raise ApiError(400, f'digest mismatch, expected "{digest}", got "{got}"')
        tmp.replace(self.store.blob(digest))
        h._json(201, {})

    # models
    def _create(self, h: _Handler) -> None:
        req = h.read_json()
        files = req.get("files") or {}
        for path, digest in files.items():
            if path in ("", ".") or path.startswith("/") or any(p in ("", ".", "..") for p in path.split("/")) or any(c in path for c in "\\:"):
                raise ApiError(400, f"file path must be relative: {path}")
            if not digest or not _DIGEST.match(digest):
                raise ApiError(400, "invalid digest format")
        name = parse_name(req.get("model") or req.get("name") or "")
        if name is None:
            raise ApiError(400, "invalid model name")
        if req.get("quantize"):
            raise ApiError(400, "create-time quantization is only supported for safetensors imports")
        digest, template, params = self._create_source(req, files)
        if template:
            try:
                parse_template(template)
            except ValueError as err:
                raise ApiError(400, f"template error: {err}") from None
        steps = [{"status": "parsing GGUF"}, {"status": f"using existing layer {digest}"}, {"status": "writing manifest"}, {"status": "success"}]
        self.store.save(name, digest, template, params)
        if req.get("stream", True):
            return h.stream(iter(steps))
        h._json(200, steps[-1])

    def _create_source(self, req: dict[str, Any], files: dict[str, str]) -> tuple[str, str, dict[str, Any]]:
        """(model blob digest, template, parameters) from ``from`` or ``files``, as Ollama picks."""
        params = dict(req.get("parameters") or {})
        if req.get("from"):
            base = self.store.find(req["from"])
            if base is None:
                raise ApiError(404, f"model '{req['from']}' not found")
            return base.digest, req.get("template") or base.template, {**base.params, **params}
        if not files:
            raise ApiError(400, "neither 'from' or 'files' was specified")
        models = []
        for path, digest in sorted(files.items()):
            blob = self.store.blob(digest)
            if not blob.is_file():
                raise ApiError(400, f"blob not found for {path} (digest {digest})")
            with blob.open("rb") as f:
                if f.read(4) != b"GGUF":
                    raise ApiError(400, "supplied file was not in GGUF format")
            models.append(digest)
        return models[0], req.get("template") or "", params

    def _show(self, h: _Handler) -> None:
        req = h.read_json()
        text = req.get("model") or req.get("name")
        if not text:
            raise ApiError(400, "model is required")
        model = self.store.find(text)
        if model is None:
            raise ApiError(404, f"model '{text}' not found")
        h._json(200, self._show_body(model))

    def _show_body(self, model: Model) -> dict[str, Any]:
        params = []
        for key, value in model.params.items():
            for item in value if isinstance(value, list) else [value]:
                params.append(f"{key:<30} {json.dumps(item, ensure_ascii=False)}")
        modelfile = f"# Modelfile generated by \"ollama show\"\nFROM {model.gguf}\nTEMPLATE \"\"\"{model.template}\"\"\"\n"
        return {
            "modelfile": modelfile, "parameters": "\n".join(params), "template": model.template,
            "details": self._details(model), "model_info": {"general.architecture": "llama"},
            "capabilities": ["completion"], "modified_at": model.modified,
        }

    def _details(self, model: Model) -> dict[str, Any]:
        return {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"], "parameter_size": "", "quantization_level": ""}

    def _tags(self, h: _Handler) -> None:
        models = [{"name": display(m.name), "model": display(m.name), "modified_at": m.modified, "size": m.gguf.stat().st_size,
                   "digest": m.digest.split(":", 1)[1], "details": self._details(m)} for m in self.store.models.values()]
        h._json(200, {"models": models})

    def _ps(self, h: _Handler) -> None:
        loaded = [m for m in self.store.models.values() if m.digest in self.runner.loaded]
        h._json(200, {"models": [{"name": display(m.name), "model": display(m.name), "size": m.gguf.stat().st_size, "size_vram": 0,
                                  "digest": m.digest.split(":", 1)[1], "details": self._details(m)} for m in loaded]})

    def _delete(self, h: _Handler) -> None:
        req = h.read_json()
        text = req.get("model") or req.get("name") or ""
        model = self.store.find(text)
        if model is None:
            raise ApiError(404, f"model '{text}' not found")
        self.store.delete(model)
        h._json(200, {})

    def _copy(self, h: _Handler) -> None:
        """``/api/copy``: a second manifest for the same layers; 200 with no body."""
        req = h.read_json()
        src_text, dst_text = req.get("source") or "", req.get("destination") or ""
        if parse_name(src_text) is None:
            raise ApiError(400, f"source {json.dumps(src_text)} is invalid")
        dst = parse_name(dst_text)
        if dst is None:
            raise ApiError(400, f"destination {json.dumps(dst_text)} is invalid")
        with self.store.lock:
            src = self.store.find(src_text)
            if src is None:
                raise ApiError(404, f"model {json.dumps(src_text)} not found")
            self.store.save(dst, src.digest, src.template, src.params)
        h.empty(200)

    # the remote registry
    def _push(self, h: _Handler) -> None:
        """``/api/push``: streamed progress (or only the last line); errors after the first line are lines."""
        req = h.read_json()
        text = req.get("model") or req.get("name")
        if not text:
            raise ApiError(400, "model is required")
        steps = self._push_steps(text)
        if req.get("stream", True):
            return h.stream(steps)
        final: dict[str, Any] = {}
        try:
            for final in steps:
                pass
        except ApiError as err:
            return h._json(500, {"error": err.message})
        except CutStream:
            return h.cut()
        h._json(200, final)

    def _push_steps(self, text: str) -> Iterator[dict[str, Any]]:
        yield {"status": "retrieving manifest"}
        model = self.store.find(text)
        if model is None:
            yield {"status": "couldn't retrieve manifest"}
            raise ApiError(500, f"open {self.store.root / 'manifests' / Path(*parse_name(text))}: no such file or directory")
        if model.name[:2] == ("registry.ollama.ai", "library"):
            raise ApiError(401, "unauthorized: access denied")  # the registry's answer to a namespace you do not own
        manifest = self.store.manifest(model)
        for i, layer in enumerate([*manifest["layers"], manifest["config"]]):
            yield from self._push_layer(layer["digest"], layer["size"])
            if i == 0:
                self._push_fault()
        yield {"status": "pushing manifest"}
        self.registry[display(model.name)] = model.digest
        self.pushes.append(display(model.name))
        yield {"status": "success"}

    def _push_layer(self, digest: str, size: int, parts: int = 4) -> Iterator[dict[str, Any]]:
        """A layer's progress as Ollama reports it: all at once when the registry has it."""
        head = {"status": f"pushing {digest[7:19]}", "digest": digest, "total": size}
        if digest in self.remote_blobs:
            yield {**head, "completed": size}
            return
        for k in range(parts + 1):
            yield {**head, "completed": size * k // parts}
        self.remote_blobs.add(digest)

    def _push_fault(self) -> None:
        if self.faults.push_errors:
            raise ApiError(500, self.faults.push_errors.pop(0))
        if self.faults.cut_pushes > 0:
            self.faults.cut_pushes -= 1
            raise CutStream()

    # inference
    def _generate(self, h: _Handler) -> None:
        req = h.read_json()
        model = self._loaded_model(req)
        if not req.get("prompt"):
            return h._json(200, {"model": req["model"], "created_at": _now(), "response": "", "done": True, "done_reason": "load"})
        if req.get("raw"):
            prompt = req["prompt"]
        else:
            system = req.get("system") or ""
            messages = ([{"Role": "system", "Content": system}] if system else []) + [{"Role": "user", "Content": req["prompt"]}]
            prompt = self._render(req.get("template") or model.template, system, messages, req["prompt"])
        self._answer(h, req, model, prompt, key="response")

    def _chat(self, h: _Handler) -> None:
        req = h.read_json()
        model = self._loaded_model(req)
        msgs = req.get("messages") or []
        system = "\n\n".join(m.get("content", "") for m in msgs if m.get("role") == "system")
        messages = [{"Role": m.get("role", "user"), "Content": m.get("content", "")} for m in msgs]  # as Ollama: system messages stay in .Messages
        prompt = self._render(model.template, system, messages, messages[-1]["Content"] if messages else "")
        self._answer(h, req, model, prompt, key="message")

    def _loaded_model(self, req: dict[str, Any]) -> Model:
        model = self.store.find(req.get("model") or "")
        if model is None:
            raise ApiError(404, f'model "{req.get("model")}" not found, try pulling it first')
        return model

    def _render(self, template: str, system: str, messages: list[dict[str, str]], prompt: str) -> str:
        if not template:
            return prompt
        return render_template(parse_template(template), {"System": system, "Messages": messages, "Prompt": prompt, "Response": ""})

    def _answer(self, h: _Handler, req: dict[str, Any], model: Model, prompt: str, *, key: str) -> None:
        events = self.runner.generate(model, prompt, req.get("options") or {})
        wrap = (lambda s: {"role": "assistant", "content": s}) if key == "message" else (lambda s: s)
        head = {"model": req["model"], "created_at": _now()}
        if req.get("stream", True):
            return h.stream({**head, key: wrap(e["piece"]), "done": False} if "piece" in e else {**head, key: wrap(""), **e} for e in events)
        pieces, final = [], {}
        for event in events:
            pieces.append(event.get("piece", ""))
            final = event
        h._json(200, {**head, key: wrap("".join(pieces)), **final})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture()
def ollama_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OllamaStandIn]:
    """A running stand-in whose store is this test's ``$OLLAMA_MODELS``; stops by itself."""
    models = tmp_path / "ollama-server-models"
    monkeypatch.setenv("OLLAMA_MODELS", str(models))
    with OllamaStandIn(models) as server:
        monkeypatch.setenv("OLLAMA_HOST", server.url)
        yield server


def free_port() -> int:
    """A port nothing listens on (for 'server down')."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def real_ollama(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The URL of a real ``ollama serve`` with its store in a temp dir; skips without the binary."""
    binary = shutil.which("ollama")
    if binary is None:
        pytest.skip("no ollama binary on PATH")
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(tmp_path / "real-models")}
    proc = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
