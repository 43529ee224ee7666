"""A fast, read-only look at a GGUF header: string metadata and tensor shapes.

``gguf.GGUFReader`` builds every field (the vocabulary included) and takes seconds on a
real model; this reads the header only, skipping arrays, in milliseconds.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # fixed-size value types
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFHeader:
    """String metadata (``general.name``, ``tokenizer.chat_template``...) and tensor shapes."""

    strings: dict[str, str]
    tensors: dict[str, tuple[int, ...]]

    def numel(self, name: str) -> int:
        n = 1
        for dim in self.tensors.get(name, (0,)):
            n *= dim
        return n


def read_header(path: str | Path) -> GGUFHeader | None:
    """The header of the GGUF at ``path``; None when it is not a readable GGUF (v2 or later)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm[:4] != b"GGUF":
                return None
            n_tensors, n_kv = struct.unpack_from("<QQ", mm, 8)
            strings, pos = _metadata(mm, 24, n_kv)
            tensors = {}
            for _ in range(n_tensors):
                name, pos = _string(mm, pos)
                (n_dims,) = struct.unpack_from("<I", mm, pos)
                tensors[name] = struct.unpack_from(f"<{n_dims}Q", mm, pos + 4)
                pos += 4 + 8 * n_dims + 4 + 8  # dims, type, offset
            return GGUFHeader(strings=strings, tensors=tensors)
    except (OSError, ValueError, KeyError, struct.error, UnicodeDecodeError):
        return None


def _metadata(mm: Any, pos: int, count: int) -> tuple[dict[str, str], int]:
    out = {}
    for _ in range(count):
        key, pos = _string(mm, pos)
        (vtype,) = struct.unpack_from("<I", mm, pos)
        if vtype == _STRING:
            out[key], pos = _string(mm, pos + 4)
        else:
            pos = _skip(mm, pos + 4, vtype)
    return out, pos


def _string(mm: Any, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", mm, pos)
    return mm[pos + 8 : pos + 8 + n].decode("utf-8"), pos + 8 + n


def _skip(mm: Any, pos: int, vtype: int) -> int:
    """The position after a value of ``vtype`` at ``pos``."""
    if vtype in _SIZES:
        return pos + _SIZES[vtype]
    if vtype == _STRING:
        return pos + 8 + struct.unpack_from("<Q", mm, pos)[0]
    if vtype != _ARRAY:
        raise ValueError(f"GGUF value type {vtype}")
    etype, n = struct.unpack_from("<IQ", mm, pos)
    pos += 12
    if etype in _SIZES:
        return pos + n * _SIZES[etype]
    for _ in range(n):
        pos = _skip(mm, pos, etype)
    return pos
