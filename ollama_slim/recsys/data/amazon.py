"""Amazon review data in its official formats (2014 and 2023 releases).

2014 (McAuley et al.): ``reviews_<Cat>_5.json.gz`` (one JSON object a line:
``reviewerID``, ``asin``, ``unixReviewTime`` in seconds) and ``meta_<Cat>.json.gz``
(one dict a line, usually a Python literal with single quotes: ``asin``, ``title``).
2023 (Hou et al.): ``<Cat>.jsonl(.gz)`` (``user_id``, ``parent_asin``, ``timestamp`` in
milliseconds) and ``meta_<Cat>.jsonl(.gz)`` (``parent_asin``, ``title``).

Pass the directory (one category in it) or the reviews file itself. String ids become
ints in order of first appearance; items without a title are left out by
:func:`make_dataset` (and users left with fewer than 3 items are dropped and counted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ollama_slim.errors import DataError
from ollama_slim.recsys.data.core import Dataset, make_dataset
from ollama_slim.recsys.data.loaders import register_loader
from ollama_slim.recsys.data.records import IdMap, Interactions, clean_title, get_field, iter_lines, parse_record, to_number

_REVIEWS_2014 = re.compile(r"^reviews_(?P<cat>.+?)(?:_5)?\.json(?:\.gz)?$")
_REVIEWS_2023 = re.compile(r"^(?!meta_)(?P<cat>.+?)\.jsonl(?:\.gz)?$")
# the item key of a meta line, read before the (slow) full parse so lines of items nobody
# interacted with are skipped; only plain ASIN-like keys are trusted, others get a full parse
_KEY = re.compile(r"""['"](?:parent_asin|asin)['"]\s*:\s*(['"])([A-Za-z0-9_-]+)\1""")


@dataclass(frozen=True)
class AmazonFormat:
    """Field names and file patterns of one Amazon release."""

    release: str
    reviews: re.Pattern[str]
    meta_suffix: str  # meta file = f"meta_{cat}{meta_suffix}" (+ ".gz" when present)
    user: str
    item: str
    item_fallback: str | None
    time: str
    time_scale: float  # to seconds


AMAZON_2014 = AmazonFormat("2014", _REVIEWS_2014, ".json", "reviewerID", "asin", None, "unixReviewTime", 1.0)
AMAZON_2023 = AmazonFormat("2023", _REVIEWS_2023, ".jsonl", "user_id", "parent_asin", "asin", "timestamp", 1e-3)


def _reviews_files(path: Path, fmt: AmazonFormat) -> list[Path]:
    """The reviews files of ``fmt`` that ``path`` names (itself, or those in a directory)."""
    if path.is_file():
        return [path] if fmt.reviews.match(path.name) else []
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and fmt.reviews.match(p.name))
    return []


def _meta_file(reviews: Path, fmt: AmazonFormat) -> Path:
    cat = fmt.reviews.match(reviews.name)["cat"]
    base = reviews.parent / f"meta_{cat}{fmt.meta_suffix}"
    for path in (base.with_name(base.name + ".gz"), base):
        if path.is_file():
            return path
    raise DataError(f"{base.name}(.gz) is missing beside {reviews}", hint="download the meta file of the category too: it holds the item titles")


def _single_reviews(path: Path, fmt: AmazonFormat) -> Path:
    files = _reviews_files(path, fmt)
    if len(files) > 1:
        names = ", ".join(p.name for p in files)
        raise DataError(f"{path} holds several Amazon {fmt.release} categories ({names})", hint="pass the reviews file of one category")
    return files[0]


def read_amazon_reviews(path: Path, fmt: AmazonFormat, *, users: IdMap, items: IdMap) -> Interactions:
    """Interactions of a reviews file, ids mapped through ``users``/``items``."""
    out = Interactions()
    for n, line in iter_lines(path):
        row = parse_record(path, n, line)
        key = row.get(fmt.item) or (row.get(fmt.item_fallback) if fmt.item_fallback else None)
        if key is None:
            get_field(row, fmt.item, path, n)  # raises: names the missing field
        user = str(get_field(row, fmt.user, path, n))
        ts = to_number(get_field(row, fmt.time, path, n), fmt.time, path, n) * fmt.time_scale
        out.add(users(user), items(str(key)), ts)
    return out


def read_amazon_meta(path: Path, *, items: IdMap) -> dict[int, str]:
    """Titles of the items in ``items`` from a meta file; other items' lines are skipped unparsed."""
    titles: dict[int, str] = {}
    for n, line in iter_lines(path):
        found = _KEY.search(line)
        if found is not None and items.get(found[2]) is None:
            continue
        row = parse_record(path, n, line)
        key = row.get("parent_asin") or row.get("asin")
        if key is None:
            raise DataError(f"{path} line {n}: missing field 'asin' (or 'parent_asin')", hint="fix or remove that line")
        item = items.get(str(key))
        title = clean_title(str(row.get("title") or ""))
        if item is not None and title:
            titles[item] = title
    return titles


def load_amazon(path: Path, fmt: AmazonFormat) -> Dataset:
    """An Amazon data set of release ``fmt`` from a directory or a reviews file."""
    reviews = _single_reviews(path, fmt)
    users, items = IdMap(), IdMap()
    interactions = read_amazon_reviews(reviews, fmt, users=users, items=items)
    titles = read_amazon_meta(_meta_file(reviews, fmt), items=items)
    cat = fmt.reviews.match(reviews.name)["cat"]
    return make_dataset(f"amazon{fmt.release}-{cat}", interactions.sequences(), titles, source=str(reviews))


@register_loader("amazon-2014", lambda p: bool(_reviews_files(p, AMAZON_2014)))
def load_amazon_2014(path: Path) -> Dataset:
    """``reviews_<Cat>_5.json.gz`` + ``meta_<Cat>.json.gz`` (2014 release)."""
    return load_amazon(path, AMAZON_2014)


@register_loader("amazon-2023", lambda p: bool(_reviews_files(p, AMAZON_2023)))
def load_amazon_2023(path: Path) -> Dataset:
    """``<Cat>.jsonl(.gz)`` + ``meta_<Cat>.jsonl(.gz)`` (2023 release)."""
    return load_amazon(path, AMAZON_2023)
