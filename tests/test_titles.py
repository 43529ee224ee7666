"""The title matcher of the generation-mode measure, and the user phrasings, on hand-made cases."""

from __future__ import annotations

import pytest

from ollama_slim.recsys.phrasings import DOMAINS, PHRASINGS, TEST_PHRASINGS, TRAIN_PHRASINGS, domain_for, pick_phrasing, user_message
from ollama_slim.recsys.titles import TitleIndex, answer_line, name_key, split_year

CATALOGUE = {
    1: "Toy Story (1995)", 2: "Usual Suspects, The (1995)", 3: "Seven (Se7en) (1995)", 4: "Postino, Il (1994)",
    5: "Mr. Holland's Opus (1995)", 6: "Toy Story (1995)", 7: "Amélie (2001)", 8: "12 Angry Men (1957)",
    9: "Hamlet (1948)", 10: "Hamlet (1996)", 11: "Land Before Time III: The Time of the Great Giving (1995) (V)",
    12: "Sony wireless noise cancelling headphones with a long battery life for travel, black", 13: "Wallace & Gromit: The Best of Aardman Animation (1996)",
}


@pytest.fixture(scope="module")
def index() -> TitleIndex:
    return TitleIndex(CATALOGUE, words=6)


@pytest.mark.parametrize(("answer", "items"), [
    ("Toy Story", {1, 6}),  # two items share a title: both match
    ("toy story (1995).", {1, 6}),
    ("TOY STORY!", {1, 6}),
    ("1. The Usual Suspects (1995)", {2}),  # a list number and a leading article
    ("Usual Suspects, The (1995)", {2}),  # the catalogue's own spelling
    ('"The Usual Suspects"', {2}),
    ("**Seven (1995)**", {3}),
    ("Se7en", {3}),  # a parenthesised alternate title
    ("Il Postino", {4}),  # a foreign article, moved and dropped
    ("Mr Hollands Opus", {5}),  # punctuation and apostrophes
    ("amelie", {7}),  # accents
    ("12 Angry Men", {8}),  # a title that starts with a number keeps it
    ("2) 12 Angry Men (1957)\nA courtroom classic.", {8}),  # first line only, list marker stripped
    ("- Hamlet", {9, 10}),
    ("Hamlet (1996)", {10}),  # a year picks the item
    ("Land Before Time III: The Time of the Great Giving", {11}),
    ("Sony wireless noise cancelling headphones with", {12}),  # the title as the prompt cut it (6 words)
    ("Wallace and Gromit: The Best of Aardman Animation", {13}),
])
def test_answers_that_name_a_title(index: TitleIndex, answer: str, items: set[int]) -> None:
    assert set(index.match(answer).items) == items


@pytest.mark.parametrize("answer", [
    "Toy Story (1996)",  # a year, when given, must be right
    "The Usual Suspects (1994)",
    "Toy Story is a great movie",  # a sentence is not a title
    "Toy Story 2",
    "Sony wireless",
    "",
    "   \n  ",
    "12. Angry Men",  # "12." is read as a list number
])
def test_answers_that_do_not(index: TitleIndex, answer: str) -> None:
    assert not index.match(answer).items


def test_an_alternate_many_titles_share_describes_and_names_none() -> None:
    """Amazon's ``(Black)`` is on 1,375 items and ``hdmi`` in hundreds of titles: "The Black"
    and "The HDMI" name none of them, while an item called Black, and an alternate whose words
    only a few titles have, still name their items."""
    colours = {i: f"Cable {i} (Black)" for i in range(1, 6)}
    index = TitleIndex({**colours, 6: "Black (1990)", 7: "Speaker (Pair) (Model X2)", 8: "Stand (Model X2)",
                        9: "Roku Stick (HDMI)", **{i: f"HDMI Switch {i}" for i in range(10, 14)}})
    assert set(index.match("The Black").items) == {6}
    assert set(index.match("Cable 3").items) == set(index.match("Cable 3 (Black)").items) == {3}
    assert set(index.match("Model X2").items) == {7, 8} and set(index.match("Pair").items) == {7}
    assert not index.match("The HDMI").items and set(index.match("Roku Stick").items) == {9}
    assert not TitleIndex(colours).match("Black").items


def test_normalisation_pieces() -> None:
    assert split_year("Land Before Time III (1995) (V)") == ("Land Before Time III  (V)", 1995)
    assert split_year("Heat") == ("Heat", None)
    assert name_key("Usual Suspects, The") == name_key("the usual suspects") == "usual suspects"
    assert name_key("Postino, Il") == "postino" and name_key("Amélie") == "amelie"
    assert answer_line('\n  3. "Heat (1995)".\nmore') == "Heat (1995)"
    assert answer_line("#2: *Heat*") == "Heat"
    assert index_label("The Usual Suspects (1995)") == "usual suspects (1995)" and index_label("Heat") == "heat"


def index_label(answer: str) -> str:
    return TitleIndex({}).match(answer).label


def test_phrasings_train_and_test_apart_and_seeded_per_user() -> None:
    assert not set(TRAIN_PHRASINGS) & set(TEST_PHRASINGS) and set(TRAIN_PHRASINGS) | set(TEST_PHRASINGS) == set(PHRASINGS)
    picks = [pick_phrasing(TEST_PHRASINGS, user=u, seed=0) for u in range(30)]
    assert picks == [pick_phrasing(TEST_PHRASINGS, user=u, seed=0) for u in range(30)] and set(picks) == set(TEST_PHRASINGS)
    assert pick_phrasing(("inline",), user=5, seed=3) == "inline"
    movie = domain_for("ml-100k")
    assert movie == DOMAINS["movie"] and domain_for("amazon-electronics") == DOMAINS["item"]
    titles = ["Heat (1995)", "Casino (1995)", "Fargo (1996)"]
    assert user_message("inline", titles, movie) == "I watched Heat (1995), Casino (1995) and Fargo (1996). Which movie should I watch next? Give only the title."
    assert user_message("after", titles, DOMAINS["item"]) == "Recommend one more item after: Heat (1995); Casino (1995); Fargo (1996)"
    assert user_message("prompt", titles, movie).startswith("A customer bought these items, most recent last:\n1. Heat (1995)\n")
