"""Talking to an Ollama server through the official ``ollama`` client, with one error path.

Every failure becomes one :class:`OllamaError` line: no server, a slow server, a refusal
(4xx), a server failure (5xx) or a cut-off transfer. Calls that are safe to repeat
(reads, and blob uploads, which are content-addressed and digest-checked by the server)
are retried with exponential backoff; others are retried only when the request never
reached the server.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from ollama_slim.errors import OllamaError

T = TypeVar("T")
DEFAULT_HOST = "http://127.0.0.1:11434"
_SERVER_LOG_HINT = "see the server log (`journalctl -u ollama`, or ~/.ollama/logs/server.log) and rerun"


@dataclass(frozen=True)
class ApiOptions:
    """Where the server is and how patient to be with it."""

    host: str | None = None  # None: $OLLAMA_HOST, else 127.0.0.1:11434
    timeout_s: float = 120.0
    retries: int = 3  # attempts for calls that are safe to repeat
    backoff_s: float = 0.25  # first wait; doubles after each failed attempt


def host_url(host: str | None) -> str:
    """The URL the client will use for ``host`` (parsed by the ``ollama`` client's own rules)."""
    from ollama._client import _parse_host

    return _parse_host(host or os.environ.get("OLLAMA_HOST"))


def client(options: ApiOptions) -> Any:
    """An ``ollama.Client`` for ``options`` (connect timeout kept short: a local server answers fast)."""
    import httpx
    import ollama

    timeout = httpx.Timeout(options.timeout_s, connect=min(options.timeout_s, 5.0))
    return ollama.Client(host=host_url(options.host), timeout=timeout)


class Failure(Exception):
    """An internal classification of a failed call (never leaves this module)."""

    def __init__(self, kind: str, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.status = kind, detail, status


def classify(err: BaseException) -> Failure | None:
    """``down`` / ``slow`` / ``cut`` / ``refused`` / ``failed``, or None for a foreign error."""
    import httpx
    import ollama

    if type(err) is ConnectionError or isinstance(err, httpx.ConnectError):  # the client's own, or a stream's
        return Failure("down", "no connection")
    if isinstance(err, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
        return Failure("cut", type(err).__name__)
    if isinstance(err, httpx.TimeoutException):
        return Failure("slow", type(err).__name__)
    if isinstance(err, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.NetworkError)):
        return Failure("cut", str(err) or type(err).__name__)
    if isinstance(err, ollama.ResponseError):
        status = err.status_code
        kind = "failed" if status == -1 or status >= 500 else "refused"
        return Failure(kind, str(err.error).strip() or "no reason given", status)
    return None


def _retryable(failure: Failure, *, safe: bool) -> bool:
    if failure.kind == "down":
        return True  # the request never reached a server
    return safe and failure.kind in ("slow", "cut", "failed")


def call(fn: Callable[[], T], *, action: str, options: ApiOptions, safe: bool) -> T:
    """Run ``fn`` (one client call); retry with backoff where safe; raise one OllamaError line."""
    attempts = max(1, options.retries)
    wait = options.backoff_s
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - classified below, foreign errors re-raised
            failure = classify(err)
            if failure is None:
                raise
            if attempt == attempts or not _retryable(failure, safe=safe):
                raise to_error(failure, action=action, options=options, tries=attempt) from None
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def to_error(failure: Failure, *, action: str, options: ApiOptions, tries: int) -> OllamaError:
    """The one line a user sees for ``failure`` while doing ``action``."""
    url = host_url(options.host)
    times = f" (tried {tries} times)" if tries > 1 else ""
    if failure.kind == "down":
        return OllamaError(f"no Ollama server answers at {url}{times}", hint="start it with `ollama serve`, or pass --host URL (or set OLLAMA_HOST)")
    if failure.kind == "slow":
        return OllamaError(f"Ollama at {url} did not answer within {options.timeout_s:g} s while trying to {action}{times}", hint="the server is busy or stuck; check it and rerun")
    if failure.kind == "cut":
        return OllamaError(f"the connection to Ollama at {url} was cut off while trying to {action}{times}", hint="check the server (free disk space, restarts) and the network, then rerun")
    if failure.kind == "refused":
        return OllamaError(f"Ollama refused to {action}: {failure.detail} (HTTP {failure.status})", hint="fix the request as the message says")
    code = f"HTTP {failure.status}" if failure.status and failure.status > 0 else "error"
    return OllamaError(f"Ollama at {url} failed to {action}: {failure.detail} ({code}){times}", hint=_SERVER_LOG_HINT)


def is_not_found(err: BaseException) -> bool:
    """True for the 404 Ollama answers for a model it does not have."""
    import ollama

    return isinstance(err, ollama.ResponseError) and err.status_code == 404


def server_answers(options: ApiOptions) -> bool:
    """True when an Ollama server answers at the host (one quick try, no retries)."""
    import httpx

    try:
        response = httpx.get(f"{host_url(options.host)}/api/version", timeout=min(options.timeout_s, 2.0))
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def find_model(api: Any, name: str, *, options: ApiOptions) -> Any | None:
    """``show(name)`` of the model, or None when Ollama does not have it."""
    import ollama

    def show() -> Any:
        try:
            return api.show(name)
        except ollama.ResponseError as err:
            if is_not_found(err):
                return None
            raise

    return call(show, action=f"look up model {name!r}", options=options, safe=True)
