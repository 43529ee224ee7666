"""Is a model's answer a catalogue title? A forgiving, exact-after-normalisation matcher.

An answer is read from its first non-empty line: leading list markers (``1.``, ``2)``,
``#3``, ``-``, ``*``, bullets) and surrounding quotes or markdown emphasis are stripped,
then a trailing year ``(1995)`` is split off. Titles and answers are normalised the same
way: accents dropped, case-folded, ``&`` read as ``and``, apostrophes removed, other
punctuation as spaces, a trailing article moved to the front (MovieLens writes
``Usual Suspects, The (1995)``) and a leading article dropped. A catalogue item is indexed
under its whole title, its main title without parenthesised alternates (``Seven (Se7en)``),
each alternate, and its title cut to the words a prompt shows. An alternate whose words are in
more than :data:`ALTERNATE_ITEMS` titles is a description, not a name (Amazon's ``(Black)``,
``(HDMI)``, ``(6 Feet)``), and names none of them; MovieLens' ``(Se7en)`` stays a name. An
answer matches the items indexed under its normalised text; when it gives a year, only items
of that year match.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

_ARTICLES = ("the", "a", "an", "la", "le", "les", "il", "el", "los", "las", "lo", "der", "die", "das", "den", "det")
_LEADING_MARK = re.compile(r"^\s*(?:(?:\d{1,3}[.)]|#\d{1,3}[.:)]?|[-*+\u2022\u2013\u2014>])\s+)+")
_QUOTES = "\"'`*_\u201c\u201d\u2018\u2019\u00ab\u00bb"
_YEAR = re.compile(r"\((\d{4})\)")
_PARENS = re.compile(r"\(([^()]*)\)")
_TRAILING_ARTICLE = re.compile(r"^(.*\S),\s*(" + "|".join(_ARTICLES) + r")'?$")
_LEADING_ARTICLE = re.compile(r"^(?:" + "|".join(_ARTICLES) + r")\s+(?=\S)")
ALTERNATE_ITEMS = 3  # an alternate whose words more titles than this have describes (colour, connector, length)


def fold(text: str) -> str:
    """Accents dropped, case-folded, ``&`` -> ``and``, apostrophes removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    text = text.replace("&", " and ").replace("'", "").replace("\u2019", "")
    return " ".join(text.split())


def name_key(name: str) -> str:
    """The comparable form of a title without its year: ``Usual Suspects, The`` -> ``usual suspects``."""
    text = fold(name)
    m = _TRAILING_ARTICLE.match(text)
    if m:
        text = f"{m.group(2)} {m.group(1)}"
    text = " ".join(re.sub(r"[\W_]+", " ", text).split())
    return _LEADING_ARTICLE.sub("", text)


def split_year(title: str) -> tuple[str, int | None]:
    """``("Toy Story", 1995)`` from ``Toy Story (1995)``; the last ``(YYYY)`` is the year."""
    found = list(_YEAR.finditer(title))
    if not found:
        return title.strip(), None
    last = found[-1]
    return (title[: last.start()] + title[last.end() :]).strip(), int(last.group(1))


_TRAILING_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")


def answer_title(title: str) -> str:
    """A catalogue title as a chat answer names it: its trailing release year dropped
    (``Usual Suspects, The (1995)`` -> ``Usual Suspects, The``), otherwise as the catalogue
    writes it, as the user's list shows it.

    What a chat answer trains on: a small model names the right film far more often than
    its right year, and a wrong year makes the answer a wrong title. The article stays where
    the catalogue puts it: put in front, ``The`` becomes the likeliest first token of every
    answer and greedy decoding opens every answer with it.
    """
    return _TRAILING_YEAR.sub("", title).strip() or title.strip()


def answer_line(answer: str) -> str:
    """The title part of an answer: its first non-empty line, list markers and quotes stripped."""
    line = next((ln for ln in answer.splitlines() if ln.strip()), "")
    line = _LEADING_MARK.sub("", line).strip()
    for _ in range(3):  # nested quotes and emphasis: **"Title"**
        line = line.strip().rstrip(".!?,;:").strip().strip(_QUOTES).strip()
    return line


def _aliases(title: str, words: int | None) -> tuple[set[str], set[str]]:
    """The names an item answers to (without its year): its own names, and its parenthesised alternates."""
    name, _ = split_year(title)
    names = {name, _PARENS.sub(" ", name)}
    if words:
        names.add(split_year(" ".join(title.split()[:words]))[0])
    alternates = {alt for alt in _PARENS.findall(name) if len(alt.strip()) > 2}
    keys = {k for k in map(name_key, names) if k}
    return keys, {k for k in map(name_key, alternates) if k} - keys


@dataclass(frozen=True)
class TitleMatch:
    """What an answer names: its normalised ``key`` and ``year`` and the matching ``items`` (empty: no title)."""

    text: str
    key: str
    year: int | None
    items: frozenset[int]

    @property
    def label(self) -> str:
        """The answer's identity across users: normalised name and year."""
        return f"{self.key} ({self.year})" if self.year is not None else self.key


class TitleIndex:
    """The catalogue's titles by normalised name, with each item's year."""

    def __init__(self, titles: dict[int, str], *, words: int | None = None) -> None:
        self.years = {item: split_year(title)[1] for item, title in titles.items()}
        self.by_key: dict[str, set[int]] = {}
        alternates: dict[str, set[int]] = {}
        having: dict[str, set[int]] = {}  # word -> the items whose title has it
        for item, title in titles.items():
            names, alts = _aliases(title, words)
            for key in names:
                self.by_key.setdefault(key, set()).add(item)
            for key in alts:
                alternates.setdefault(key, set()).add(item)
            for word in {word for key in names for word in key.split()}:  # the whole title's key has every word
                having.setdefault(word, set()).add(item)
        for key, items in alternates.items():
            if len(set.intersection(*(having.get(word, set()) for word in key.split()))) <= ALTERNATE_ITEMS:
                self.by_key.setdefault(key, set()).update(items)

    def match(self, answer: str) -> TitleMatch:
        """The catalogue items ``answer`` names (a given year must be the item's)."""
        text = answer_line(answer)
        name, year = split_year(text)
        key = name_key(name)
        items = self.by_key.get(key, set()) if key else set()
        if year is not None:
            items = {i for i in items if self.years[i] == year}
        return TitleMatch(text=text, key=key, year=year, items=frozenset(items))


def same_items(match: TitleMatch, items: Iterable[int]) -> bool:
    """Whether ``match`` names any of ``items``."""
    return not match.items.isdisjoint(items)
