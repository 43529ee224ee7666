"""How a user asks a chat model for a recommendation: a small fixed list of wordings, by name.

Each phrasing turns the history titles (most recent last) into one user message. Training
and testing can use different ones (design §6, issue #11: train on several phrasings, test
on others): ``TRAIN_PHRASINGS`` and ``TEST_PHRASINGS`` do not overlap. ``prompt`` is the
evaluation and healing prompt itself. Wordings name the domain's things and verbs
(movies watched, items bought), taken from the data set's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ollama_slim.errors import UsageError
from ollama_slim.recsys.prompt import listing_prompt


@dataclass(frozen=True)
class Domain:
    """The words of a domain: ``noun`` (movie), ``did`` (watched), ``do`` (watch)."""

    noun: str
    did: str
    do: str


DOMAINS = {"movie": Domain("movie", "watched", "watch"), "item": Domain("item", "bought", "buy")}
_DOMAIN_BY_DATA = (("ml-", "movie"), ("movielens", "movie"))  # data set name prefix -> domain; else "item"


def domain_for(dataset_name: str, choice: str = "auto") -> Domain:
    """``choice`` (a key of ``DOMAINS``), or for ``auto`` the domain the data set's name implies."""
    if choice != "auto":
        if choice not in DOMAINS:
            raise UsageError(f"unknown domain {choice!r}", hint=f"use auto or one of {', '.join(DOMAINS)}")
        return DOMAINS[choice]
    name = dataset_name.lower()
    return DOMAINS[next((d for prefix, d in _DOMAIN_BY_DATA if name.startswith(prefix)), "item")]


def _inline(titles: list[str]) -> str:
    return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]


def _numbered(titles: list[str]) -> str:
    return "\n".join(f"{n}. {t}" for n, t in enumerate(titles, start=1))


PHRASINGS: dict[str, Callable[[list[str], Domain], str]] = {
    "prompt": lambda t, d: listing_prompt(t),
    "numbered": lambda t, d: f"Here are the {d.noun}s I {d.did}, most recent last:\n{_numbered(t)}\nWhat should I {d.do} next? Answer with the title only.",
    "after": lambda t, d: f"Recommend one more {d.noun} after: {'; '.join(t)}",
    "inline": lambda t, d: f"I {d.did} {_inline(t)}. Which {d.noun} should I {d.do} next? Give only the title.",
    "enjoyed": lambda t, d: f"Lately I enjoyed {_inline(t)}. Suggest one {d.noun} for me, just the title.",
    "bullets": lambda t, d: f"My {d.noun}s so far:\n" + "\n".join(f"- {x}" for x in t) + "\nWhat's next?",
}
TRAIN_PHRASINGS = ("prompt", "numbered", "after")
TEST_PHRASINGS = ("inline", "enjoyed", "bullets")
_SALT = 11  # keeps the phrasing draw apart from the user and candidate draws of the same seed


def check_phrasings(names: tuple[str, ...]) -> None:
    """A UsageError unless ``names`` is a non-empty list of known phrasings."""
    unknown = [n for n in names if n not in PHRASINGS]
    if not names or unknown:
        raise UsageError(f"unknown phrasing {unknown[0]!r}" if unknown else "no phrasing given", hint=f"choose from {', '.join(PHRASINGS)}")


def pick_phrasing(names: tuple[str, ...], *, user: int, seed: int) -> str:
    """The phrasing user ``user`` asks in: a seeded draw from ``names``, the same for every model."""
    return names[int(np.random.default_rng([seed, user, _SALT]).integers(len(names)))]


def user_message(name: str, titles: list[str], domain: Domain) -> str:
    """The user's message in phrasing ``name`` for ``titles`` (most recent last)."""
    check_phrasings((name,))
    return PHRASINGS[name](list(titles), domain)
