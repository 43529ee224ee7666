"""Reading raw interaction files: lines with numbers, ids, titles and chronological order.

Shared by the official-format loaders (Amazon, MovieLens, RecBole). Every problem a
file can have becomes a :class:`DataError` naming the file (and the line, when one
line is at fault): a missing file, an empty one, bytes that are not in the file's
encoding, a broken gzip stream, a missing column or field, an unparsable value.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ollama_slim.errors import DataError

FIX_LINE = "fix or remove that line"


def clean_title(text: str) -> str:
    """HTML entities unescaped (``&amp;`` -> ``&``), whitespace runs -> one space, trimmed."""
    return " ".join(html.unescape(text).split())


def line_error(path: Path, n: int, problem: str) -> DataError:
    """The one-line error for line ``n`` of ``path``."""
    return DataError(f"{path} line {n}: {problem}", hint=FIX_LINE)


def iter_lines(path: Path, *, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of each non-blank line (gzip when the name ends ``.gz``).

    Raises DataError for a missing file, an empty one (no non-blank line), a line that
    is not ``encoding`` and a corrupt gzip stream.
    """
    if not path.is_file():
        raise DataError(f"data file {path} is missing", hint="check the data directory")
    seen = False
    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")) as f:
            for n, raw in enumerate(f, start=1):
                try:
                    text = raw.decode(encoding).rstrip("\r\n")
                except UnicodeDecodeError as err:
                    raise DataError(f"{path} line {n} is not {encoding.upper()} (byte {err.start} of the line)", hint=f"re-encode the file as {encoding.upper()}") from None
                if text.strip():
                    seen = True
                    yield n, text
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a valid gzip file ({type(err).__name__})", hint="download it again") from None
    if not seen:
        raise DataError(f"{path} is empty", hint="check the data file")


def parse_record(path: Path, n: int, line: str) -> dict[str, Any]:
    """One object a line: JSON, or a Python dict literal (Amazon 2014 meta; never ``eval``)."""
    try:
        row = json.loads(line)
    except ValueError:
        try:
            row = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise line_error(path, n, f"not a JSON object or Python dict literal: {line[:60]!r}") from None
    if not isinstance(row, dict):
        raise line_error(path, n, f"expected one object a line, got {type(row).__name__}")
    return row


def get_field(row: dict[str, Any], key: str, path: Path, n: int) -> Any:
    """``row[key]``, or a DataError naming the missing field."""
    if key not in row or row[key] is None:
        raise line_error(path, n, f"missing field {key!r}")
    return row[key]


def to_number(value: Any, what: str, path: Path, n: int) -> float:
    """A timestamp (or other number) read from text or JSON."""
    if isinstance(value, bool):
        raise line_error(path, n, f"{what} is not a number: {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise line_error(path, n, f"{what} is not a number: {str(value)[:40]!r}") from None


def to_int(text: str, what: str, path: Path, n: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise line_error(path, n, f"{what} is not an integer: {text[:40]!r}") from None


def split_fields(path: Path, n: int, line: str, sep: str, *, at_least: int) -> list[str]:
    """``line`` split on ``sep`` with at least ``at_least`` fields, else a DataError."""
    fields = line.split(sep)
    if len(fields) < at_least:
        raise line_error(path, n, f"expected at least {at_least} {sep!r}-separated fields, got {len(fields)}: {line[:60]!r}")
    return fields


@dataclass
class IdMap:
    """String ids -> consecutive ints from ``start``, in order of first appearance."""

    start: int = 0
    ids: dict[str, int] = field(default_factory=dict)

    def __call__(self, key: str) -> int:
        found = self.ids.get(key)
        if found is None:
            found = self.ids[key] = self.start + len(self.ids)
        return found

    def get(self, key: str) -> int | None:
        return self.ids.get(key)


@dataclass
class Interactions:
    """Interactions in file order; ``sequences()`` orders each user's by time, ties by file order."""

    rows: list[tuple[int, int, float]] = field(default_factory=list)  # (user, item, timestamp)

    def add(self, user: int, item: int, timestamp: float) -> None:
        self.rows.append((user, item, timestamp))

    def sequences(self) -> dict[int, list[int]]:
        """``{user: [item, ...]}`` chronological; a stable sort keeps same-time rows in file order."""
        per_user: dict[int, list[tuple[float, int]]] = {}
        for user, item, ts in self.rows:
            per_user.setdefault(user, []).append((ts, item))
        return {u: [item for _, item in sorted(rows, key=lambda r: r[0])] for u, rows in per_user.items()}
