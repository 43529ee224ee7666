"""Publish a model registered in Ollama to Ollama's registry, the official way.

``copy`` the registered model (``smollm2-slim``) to a name in the user's namespace
(``USER/NAME``), then ``push`` that name, forwarding the server's streamed progress. Ollama
itself talks to the registry and signs the request with its key; this module only drives it
through the official client, so every failure takes the one path of :mod:`ollama_api`.

A push is recorded (``{dest, digest, host}``) in ``record``: rerunning with the same model is a
no-op, and a different model is pushed over a recorded one only with ``force``. Digests are
the ones Ollama lists for a model (``sha256:`` + the hex of ``list()``), which ``copy`` keeps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ollama_slim import paths
from ollama_slim.errors import OllamaError, RunError, UsageError
from ollama_slim.ollama.api import ApiOptions, call, client, find_model, host_url
from ollama_slim.models.tags import OllamaName, parse_name

DEFAULT_REGISTRY = "registry.ollama.ai"
_KEY_HINT = (
    "push to your own ollama.com user name, and add your Ollama public key (~/.ollama/id_ed25519.pub; "
    "for the Linux service /usr/share/ollama/.ollama/id_ed25519.pub) at https://ollama.com/settings/keys"
)


@dataclass(frozen=True)
class PushProgress:
    """One line of a push stream: a step (``status`` only) or a layer's bytes sent so far.

    ``digest`` names the layer (``sha256:...``); ``completed`` counts up to ``total`` bytes
    (Ollama may step it back when it retries a part).
    """

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


@dataclass(frozen=True)
class OllamaPublishResult:
    """What ``publish_ollama`` did: ``pushed`` now, or ``unchanged`` since the recorded push."""

    source: str
    dest: str
    host: str  # the Ollama server that copied and pushed
    digest: str  # sha256:... of the model, as Ollama lists it
    pushed: bool
    unchanged: bool
    copied: bool  # False when source and dest are one name
    replaced: bool  # a different model was under dest (locally, or in the recorded push)
    layers: int  # layers the push stream reported (0 when nothing was pushed)
    size_bytes: int  # their total size
    page: str | None  # https://ollama.com/USER/NAME for the default registry

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def publish_ollama(
    *, source: str, dest: str, force: bool = False, host: str | None = None, api: ApiOptions | None = None,
    record: Path | None = None, progress: Callable[[PushProgress], None] | None = None,
) -> OllamaPublishResult:
    """Copy the Ollama model ``source`` to ``dest`` (``USER/NAME[:TAG]``) and push it.

    With ``record``, a push of the model recorded there for ``dest`` from this server is
    skipped (``unchanged``); ``force`` replaces a different model under ``dest`` and pushes
    even an unchanged one. ``progress`` gets every line of the push stream.

    Raises :class:`UsageError` for a ``dest`` outside the user's namespace, :class:`OllamaError`
    when the server is down or refuses, ``source`` is missing, the push fails or stops early, or
    ``dest`` holds a different model (locally or in ``record``) and ``force`` is not set, and
    :class:`RunError` for a ``record`` that is not one.
    """
    target = push_name(dest)
    parse_name(source)
    options = replace(api or ApiOptions(), host=host) if host is not None else (api or ApiOptions())
    url = host_url(options.host)
    ollama = client(options)
    listed = _source_listed(ollama, source, options=options)
    digest = listed[_key(source)]
    prior = read_record(record) if record is not None else None
    done = dict(source=source, dest=dest, host=url, digest=digest, page=_page(target))
    if not force and prior is not None and _same_push(prior, dest=dest, digest=digest, host=url):
        return OllamaPublishResult(**done, pushed=False, unchanged=True, copied=False, replaced=False, layers=0, size_bytes=0)
    replaced = _check_replace(prior, listed.get(_key(dest)), dest=dest, digest=digest, url=url, force=force)
    copied = _key(source) != _key(dest)
    if copied:
        call(lambda: ollama.copy(source, dest), action=f"copy {source!r} to {dest!r}", options=options, safe=False)
    sizes = push(ollama, dest, options=options, progress=progress)
    if record is not None:
        paths.write_json(record, {"dest": dest, "digest": digest, "host": url})
    return OllamaPublishResult(**done, pushed=True, unchanged=False, copied=copied, replaced=replaced, layers=len(sizes), size_bytes=sum(sizes.values()))


def push_name(dest: str) -> OllamaName:
    """``dest`` parsed as Ollama does; a :class:`UsageError` unless it has the user's namespace."""
    name = parse_name(dest)
    if name.namespace.casefold() == "library":
        raise UsageError(f"push needs a name in your namespace, e.g. USER/NAME, not {dest!r}", hint="USER is your ollama.com user name")
    return name


def _key(name: str) -> tuple[str, ...]:
    """``name`` as Ollama compares names: all four parts, case-insensitively."""
    return tuple(part.casefold() for part in parse_name(name).manifest_parts())


def _source_listed(ollama: Any, source: str, *, options: ApiOptions) -> dict[tuple[str, ...], str]:
    """``{name key: digest}`` of the server's models, after checking that ``source`` is one."""
    url = host_url(options.host)
    if find_model(ollama, source, options=options) is None:
        raise OllamaError(f"model {source!r} to push is not in Ollama at {url}", hint=f"register it first: ollama-slim register RUN --name {source}")
    listed = listed_digests(ollama, options=options)
    if _key(source) not in listed:
        raise OllamaError(f"Ollama at {url} shows model {source!r} but does not list it", hint="see the server log and rerun")
    return listed


def listed_digests(ollama: Any, *, options: ApiOptions) -> dict[tuple[str, ...], str]:
    """``{name key: "sha256:<hex>"}`` for every model ``list()`` returns (unparsable names skipped)."""
    response = call(ollama.list, action="list its models", options=options, safe=True)
    found: dict[tuple[str, ...], str] = {}
    for model in response.models:
        if not model.model or not model.digest:
            continue
        try:
            key = _key(model.model)
        except UsageError:
            continue
        found[key] = model.digest if model.digest.startswith("sha256:") else f"sha256:{model.digest}"
    return found


def _same_push(prior: dict[str, str], *, dest: str, digest: str, host: str) -> bool:
    """True when ``prior`` recorded pushing this very model to ``dest`` from ``host``."""
    return _key(prior["dest"]) == _key(dest) and prior["digest"] == digest and prior["host"] == host


def _check_replace(prior: dict[str, str] | None, local: str | None, *, dest: str, digest: str, url: str, force: bool) -> bool:
    """True when the push replaces a different model under ``dest``; refused without ``force``."""
    was = prior["digest"] if prior is not None and _key(prior["dest"]) == _key(dest) else None
    pushed_other = was is not None and was != digest
    local_other = local is not None and local != digest
    if force or not (pushed_other or local_other):
        return pushed_other or local_other
    if pushed_other:
        raise OllamaError(f"{dest!r} was last pushed from a different model ({_short(was)}, now {_short(digest)})", hint="pass --force to replace it, or choose another name")
    raise OllamaError(f"model {dest!r} already exists in Ollama at {url} and is a different model", hint="pass --force to replace it, or choose another name")


def _short(digest: str | None) -> str:
    """The first 12 hex digits of a digest, as Ollama shows them."""
    return (digest or "").split(":")[-1][:12]


def push(ollama: Any, dest: str, *, options: ApiOptions, progress: Callable[[PushProgress], None] | None = None) -> dict[str, int]:
    """Push ``dest`` with a streamed response; return ``{layer digest: size}`` of what was pushed.

    Each stream line goes to ``progress``. An error line, a cut stream or a stream that ends
    without ``success`` is one :class:`OllamaError`.
    """
    sizes: dict[str, int] = {}

    def stream() -> str | None:
        last = None
        for part in _refusal_mapped(ollama, dest):
            update = PushProgress(status=part.status or "", digest=part.digest, total=part.total, completed=part.completed)
            if update.digest and update.total:
                sizes[update.digest] = update.total
            if progress is not None:
                progress(update)
            last = update.status
        return last

    last = call(stream, action=f"push {dest!r}", options=options, safe=False)
    if last != "success":
        raise OllamaError(
            f"Ollama at {host_url(options.host)} stopped pushing {dest!r} before it finished (last status: {last or 'none'})",
            hint="see the server log and rerun; layers already pushed are not sent again",
        )
    return sizes


def _refusal_mapped(ollama: Any, dest: str) -> Any:
    """The push stream, with the registry's 'unauthorized' turned into the line ``ollama push`` prints."""
    import ollama as ollama_module

    try:
        yield from ollama.push(dest, stream=True)
    except ollama_module.ResponseError as err:
        text = str(err.error)
        if "unauthorized" in text.lower() or "access denied" in text.lower():
            raise OllamaError(f"the registry refused to take {dest!r}: {text.strip()}", hint=_KEY_HINT) from None
        raise


def read_record(path: Path) -> dict[str, str] | None:
    """The last push recorded at ``path`` (``{dest, digest, host}``), or None when there is none."""
    if not path.is_file():
        return None
    bad = RunError(f"{path} is not a push record", hint="delete it and rerun; it is written again after the next push")
    try:
        data = paths.read_json(path)
    except (OSError, ValueError):
        raise bad from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("dest", "digest", "host")):
        raise bad
    try:
        _key(data["dest"])
    except UsageError:
        raise bad from None
    return {k: data[k] for k in ("dest", "digest", "host")}


def _page(name: OllamaName) -> str | None:
    """The model's page on ollama.com, when it goes to the default registry."""
    if name.host != DEFAULT_REGISTRY:
        return None
    return f"https://ollama.com/{name.namespace}/{name.model}"
