"""The package's data tables (``ollama_slim/_data/*.json``), read through one loader.

Keys starting with ``_`` are comments or abstract entries: :func:`table` leaves them
out unless ``private=True``. An entry may say ``"extends": "<other key>"``; it is then
the other entry deep-merged with its own fields (dicts merge key by key, anything else
replaces, ``null`` deletes), resolved recursively, cycles refused.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def _raw(name: str) -> dict[str, Any]:
    return json.loads(resources.files("ollama_slim").joinpath(f"_data/{name}.json").read_text(encoding="utf-8"))


def table(name: str, *, private: bool = False) -> dict[str, Any]:
    """``_data/<name>.json``, with ``extends`` resolved (a copy: callers may not mutate the cache)."""
    return copy.deepcopy(_resolved(name, private))


def raw_table(name: str) -> dict[str, Any]:
    """``_data/<name>.json`` as written, ``extends`` unresolved (a copy)."""
    return copy.deepcopy(_raw(name))


def text(path: str) -> str:
    """A text file under ``_data/`` (a licence text...)."""
    return resources.files("ollama_slim").joinpath(f"_data/{path}").read_text(encoding="utf-8")


@cache
def _resolved(name: str, private: bool) -> dict[str, Any]:
    raw = _raw(name)
    out = {}
    for key in raw:
        if key.startswith("_") and not private:
            continue
        value = raw[key]
        out[key] = resolve_extends(raw, key) if isinstance(value, dict) and "extends" in value else value
    return out


def resolve_extends(entries: dict[str, Any], key: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Entry ``key`` of ``entries`` with its ``extends`` chain merged in (raises ValueError on a cycle or a missing parent)."""
    if key in _seen:
        raise ValueError(f"'extends' cycle: {' -> '.join((*_seen, key))}")
    if key not in entries:
        raise ValueError(f"{_seen[-1] if _seen else '?'} extends {key!r}, which is not in the table")
    entry = dict(entries[key])
    parent = entry.pop("extends", None)
    if parent is None:
        return entry
    return deep_merge(resolve_extends(entries, parent, (*_seen, key)), entry)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: dicts merge, other values replace, ``None`` deletes."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
