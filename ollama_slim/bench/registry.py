"""The benchmark backends, registered by name; the built-in ones load when the registry is first asked.

A backend module calls :func:`register_backend` for each backend it defines. The modules
of :data:`BUILTIN` are imported by :func:`backends` (and so by every lookup below), never
by an import at the bottom of another module, so ``bench.speed`` and its backends import
each other in one direction only: backends -> speed, speed -> registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Callable

from ollama_slim.errors import UsageError

if TYPE_CHECKING:
    from ollama_slim.bench.speed import BenchConfig, Session

BUILTIN = ("ollama_slim.bench.backends",)  # in `auto` order: ollama, then llama-cpp


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    available: Callable[[BenchConfig], bool]
    open: Callable[[BenchConfig], Session]


BACKENDS: dict[str, Backend] = {}  # read through backends(), which loads the built-in ones first
_loaded = False


def register_backend(name: str, description: str, *, available: Callable[[BenchConfig], bool]) -> Callable[[Callable[[BenchConfig], Session]], Callable[[BenchConfig], Session]]:
    """Register a backend: ``open(config)`` returns a :class:`~ollama_slim.bench.speed.Session` for both models."""

    def wrap(open_fn: Callable[[BenchConfig], Session]) -> Callable[[BenchConfig], Session]:
        BACKENDS[name] = Backend(name=name, description=description, available=available, open=open_fn)
        return open_fn

    return wrap


def backends() -> dict[str, Backend]:
    """Every registered backend, the built-in ones first (imported on the first call)."""
    global _loaded
    if not _loaded:
        for module in BUILTIN:
            import_module(module)
        _loaded = True
    return BACKENDS


def backend_names() -> list[str]:
    """The ``--backend`` choices: ``auto`` first, then the registered backends."""
    return ["auto", *backends()]


def pick_backend(config: BenchConfig) -> Backend:
    """The named backend, or for ``auto`` the first registered one that is available."""
    known = backends()
    if config.backend == "auto":
        for backend in known.values():
            if backend.available(config):
                return backend
        raise UsageError("no benchmark backend is available", hint="start Ollama, or install llama-cpp-python")
    if config.backend not in known:
        raise UsageError(f"unknown backend {config.backend!r}", hint=f"choose one of: {', '.join(backend_names())}")
    return known[config.backend]
