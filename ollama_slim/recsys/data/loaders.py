"""Data set loaders, registered by format; ``load_dataset`` picks one by name or by files.

Formats: the plain ``interactions.tsv`` + ``items.jsonl`` of the shared benchmark;
further formats (Amazon 2014/2023 official files, MovieLens GroupLens, RecBole atomic
files) register themselves in this table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ollama_slim.errors import DataError
from ollama_slim.recsys.data.core import Dataset, make_dataset


@dataclass(frozen=True)
class Loader:
    """A data format: ``detect(dir)`` says whether a directory holds it, ``load`` reads it."""

    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path], Dataset]


LOADERS: dict[str, Loader] = {}
# named data sets -> a function returning their directory (e.g. one a package carries)
NAMED: dict[str, Callable[[], Path]] = {}


def register_loader(name: str, detect: Callable[[Path], bool]) -> Callable[[Callable[[Path], Dataset]], Callable[[Path], Dataset]]:
    def wrap(fn: Callable[[Path], Dataset]) -> Callable[[Path], Dataset]:
        LOADERS[name] = Loader(name=name, detect=detect, load=fn)
        return fn

    return wrap


def find_dataset(name_or_path: str | Path) -> tuple[Path, Loader]:
    """Where a data set by name or path lies and the loader of its format, without reading it (a cheap
    check before hours of work); a one-line :class:`DataError` when there is none."""
    key = str(name_or_path)
    if key in NAMED:
        path = NAMED[key]()
    else:
        path = Path(key).expanduser()
        if not path.exists():
            names = ", ".join(sorted(NAMED)) or "none"
            raise DataError(f"data set {key!r} not found", hint=f"pass a directory or one of: {names}")
    for loader in LOADERS.values():
        if loader.detect(path):
            return path, loader
    raise DataError(f"{path} holds no data set in a known format", hint=f"known formats: {', '.join(LOADERS)}")


def load_dataset(name_or_path: str | Path) -> Dataset:
    """A data set by name (``movielens-100k``) or by path (a directory of a known format)."""
    path, loader = find_dataset(name_or_path)
    return loader.load(path)


def open_text(path: Path):
    """Open a text file as UTF-8, with a clear error when it is not."""
    if not path.is_file():
        raise DataError(f"data file {path} is missing", hint="check the data directory")
    return path.open(encoding="utf-8", newline="")


def read_lines(path: Path) -> list[str]:
    try:
        with open_text(path) as f:  # split on newlines only: U+2028 or U+0085 inside a title is text
            lines = [line.rstrip("\r") for line in f.read().split("\n")]
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 (byte {err.start})", hint="re-encode the file as UTF-8") from None
    if not any(line.strip() for line in lines):
        raise DataError(f"{path} is empty", hint="check the data file")
    return lines


def _is_plain(path: Path) -> bool:
    return path.is_dir() and (path / "interactions.tsv").is_file() and (path / "items.jsonl").is_file()


@register_loader("plain", _is_plain)
def load_plain(path: Path) -> Dataset:
    """``interactions.tsv`` (``user_id item_id timestamp``, grouped by user, in order) + ``items.jsonl``."""
    titles = read_items_jsonl(path / "items.jsonl")
    lines = read_lines(path / "interactions.tsv")
    header = lines[0].split("\t")
    missing = {"user_id", "item_id"} - set(header)
    if missing:
        raise DataError(f"{path / 'interactions.tsv'} line 1: missing column(s) {', '.join(sorted(missing))}", hint="the header must be: user_id<TAB>item_id<TAB>timestamp")
    u_col, i_col = header.index("user_id"), header.index("item_id")
    sequences: dict[int, list[int]] = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            user, item = int(fields[u_col]), int(fields[i_col])
        except (ValueError, IndexError):
            raise DataError(f"{path / 'interactions.tsv'} line {n}: expected integer user_id and item_id, got {line[:60]!r}", hint="fix or remove that line") from None
        sequences.setdefault(user, []).append(item)  # file order is chronological order
    return make_dataset(path.name, sequences, titles, source=str(path))


def read_items_jsonl(path: Path) -> dict[int, str]:
    """``{"item_id": int, "title": str}`` a line -> ``{item_id: title}``."""
    titles: dict[int, str] = {}
    for n, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            titles[int(row["item_id"])] = str(row["title"])
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path} line {n}: expected {{\"item_id\": int, \"title\": str}}, got {line[:60]!r}", hint="fix or remove that line") from None
    return titles
