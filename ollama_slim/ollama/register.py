"""Register a GGUF in Ollama through the official client (design §7).

``create_blob`` uploads the GGUF (content-addressed; the server checks its sha256), then
``create(model=, files={name: digest}, template=, parameters=)`` makes the model, with the
template and stop tokens of the Modelfile beside the GGUF (written first when missing).
An existing model is never replaced without ``force``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ollama_slim import paths
from ollama_slim.errors import ExportError, OllamaError, RunError, UsageError
from ollama_slim.ollama.modelfile import ModelfileSpec, chat_for, modelfile_path_for, modelfile_spec_for, read_modelfile, write_modelfile
from ollama_slim.ollama.api import ApiOptions, call, client, find_model, host_url
from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.models.tags import parse_name

BLOB_NAME = "model.gguf"  # the file name sent in `files`: a relative path Ollama always accepts


@dataclass(frozen=True)
class RegisterResult:
    """A model registered in Ollama, and what it was made from."""

    name: str
    host: str
    gguf: Path
    modelfile: Path | None  # None when the GGUF's directory is read-only
    digest: str
    size_bytes: int
    replaced: bool
    template_source: str
    stops: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(gguf=str(self.gguf), modelfile=str(self.modelfile) if self.modelfile else None, stops=list(self.stops))
        return d


@dataclass(frozen=True)
class RegisterConfig:
    """Register the GGUF ``source`` (a file, or a run directory holding one) in Ollama as ``name``."""

    source: Path
    name: str
    force: bool = False  # replace a model of that name
    host: str | None = None
    chat: str | None = None  # a chat-template family instead of the original's
    run_dir: Path | None = None  # where register.json goes (default: ``source``, when it is a directory)


def register(*, source: str | Path, name: str, force: bool = False, host: str | None = None, api: ApiOptions | None = None, chat: str | None = None) -> RegisterResult:
    """:func:`register_model` with keyword arguments."""
    return register_model(RegisterConfig(source=Path(source), name=name, force=force, host=host, chat=chat), api=api)


def register_model(config: RegisterConfig, *, api: ApiOptions | None = None) -> RegisterResult:
    """Register ``config.source`` as ``config.name``; the result is also the run's ``register.json``.

    Raises :class:`UsageError` for a name Ollama would refuse, :class:`OllamaError` when the
    server is down, slow or refuses, or when the name exists and ``force`` is not set.
    """
    name = config.name
    parse_name(name)  # Ollama's name rules, before any upload
    options = api or ApiOptions()
    options = replace(options, host=config.host) if config.host is not None else options
    gguf = find_gguf(Path(config.source))
    modelfile, spec, template_source = modelfile_for(gguf, chat=config.chat, options=options)
    ollama = client(options)
    call(ollama.list, action="list its models", options=options, safe=True)  # one clear line if no server
    replaced = find_model(ollama, name, options=options) is not None
    if replaced and not config.force:
        raise OllamaError(f"model {name!r} already exists in Ollama at {host_url(options.host)}", hint="pass --force to replace it, or choose another --name")
    digest = call(lambda: ollama.create_blob(gguf), action=f"upload {gguf.name}", options=options, safe=True)
    call(lambda: _create(ollama, name=name, digest=digest, spec=spec), action=f"create model {name!r}", options=options, safe=False)
    if find_model(ollama, name, options=options) is None:
        raise OllamaError(f"Ollama at {host_url(options.host)} accepted model {name!r} but does not list it", hint="see the server log and rerun")
    result = RegisterResult(
        name=name, host=host_url(options.host), gguf=gguf, modelfile=modelfile, digest=digest, size_bytes=gguf.stat().st_size,
        replaced=replaced, template_source=template_source, stops=spec.stops,
    )
    run_dir = config.run_dir or (Path(config.source) if Path(config.source).is_dir() else None)
    if run_dir is not None:
        paths.write_json(RunLayout(Path(run_dir)).register, result.to_json())
    return result


def record_not_registered(run_dir: Path, *, reason: str) -> Path:
    """``register.json`` of a run whose model was deliberately not registered."""
    return paths.write_json(RunLayout(Path(run_dir)).register, {"registered": False, "reason": reason})


def _create(ollama: Any, *, name: str, digest: str, spec: ModelfileSpec) -> Any:
    """One ``create`` call: ``files`` and never ``from`` (Ollama would ignore the files)."""
    parameters: dict[str, Any] = {key: typed(value) for key, value in spec.parameters}
    if spec.stops:
        parameters["stop"] = list(spec.stops)
    return ollama.create(
        model=name, files={BLOB_NAME: digest}, template=spec.template or None, system=spec.system,
        license=spec.license, parameters=parameters or None, stream=False,
    )


def typed(value: str) -> Any:
    """A Modelfile parameter value as JSON wants it: ``"4096"`` -> 4096, ``"0.7"`` -> 0.7."""
    for kind in (int, float):
        try:
            number = kind(value)
        except ValueError:
            continue
        if math.isfinite(number):
            return number
    return {"true": True, "false": False}.get(value.lower(), value)


def find_gguf(source: Path) -> Path:
    """The GGUF to register: ``source`` itself, or the one GGUF of a run directory."""
    if source.is_dir():
        layout = RunLayout(source)
        found = [layout.gguf] if layout.gguf.is_file() else sorted(source.glob("*.gguf"))
        if not found:
            raise RunError(f"{source} holds no GGUF", hint="export one first: ollama-slim export DIR --outtype q8_0")
        if len(found) > 1:
            raise UsageError(f"{source} holds {len(found)} GGUF files", hint=f"name one: {', '.join(p.name for p in found[:4])}")
        source = found[0]
    if not source.is_file():
        raise UsageError(f"{source} does not exist", hint="pass a GGUF file or a run directory")
    with source.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ExportError(f"{source} is not a GGUF file", hint="export the model first: ollama-slim export DIR")
    return source


def modelfile_for(gguf: Path, *, chat: str | None, options: ApiOptions) -> tuple[Path | None, ModelfileSpec, str]:
    """``(Modelfile path, its contents, where the template came from)`` for ``gguf``.

    An existing Modelfile beside the GGUF is used as is (unless ``chat`` forces a family);
    otherwise one is written there. A read-only directory does not stop registration.
    """
    path = modelfile_path_for(gguf)
    if chat is None and path.is_file():
        spec = read_modelfile(path)
        target = Path(spec.from_) if Path(spec.from_).is_absolute() else (path.parent / spec.from_).resolve()
        if target != gguf.resolve():
            raise ExportError(f"{path} says FROM {spec.from_}, not {gguf.name}", hint="fix its FROM line, or delete the Modelfile to have it written again")
        return path, spec, "Modelfile"
    found = chat_for(gguf=gguf, chat=chat, options=options)
    spec = modelfile_spec_for(gguf, chat=found, out=path)
    try:
        write_modelfile(path, spec)
    except OSError:
        return None, spec, found.source
    return path, spec, found.source
