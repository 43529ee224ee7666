"""The in-memory data set and the design §3 protocol (splits, history, candidates)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ollama_slim.errors import DataError

MIN_INTERACTIONS = 3  # train + valid + test
SPLITS = ("train", "valid", "test")
REGIMES = ("uniform", "popularity")


@dataclass(frozen=True)
class Dataset:
    """Users' chronological item sequences and item titles.

    ``sequences[user]`` is the user's items in order; users with fewer than
    ``MIN_INTERACTIONS`` are dropped at construction and counted in ``dropped_users``.
    """

    name: str
    sequences: dict[int, tuple[int, ...]]
    titles: dict[int, str]
    dropped_users: int = 0
    source: str = ""

    @cached_property
    def items(self) -> np.ndarray:
        """All item ids with a title, sorted: shape [num_items]."""
        return np.array(sorted(self.titles), dtype=np.int64)

    @cached_property
    def users(self) -> list[int]:
        return sorted(self.sequences)

    def title(self, item: int) -> str:
        return self.titles[item]

    def summary(self) -> dict:
        n = sum(len(s) for s in self.sequences.values())
        return {"name": self.name, "users": len(self.sequences), "items": len(self.titles), "interactions": n, "dropped_users": self.dropped_users}


def make_dataset(name: str, sequences: dict[int, list[int]], titles: dict[int, str], *, source: str = "") -> Dataset:
    """Build a :class:`Dataset`, dropping (and counting) short users and untitled items."""
    kept: dict[int, tuple[int, ...]] = {}
    dropped = 0
    for user, items in sequences.items():
        seq = tuple(i for i in items if i in titles)
        if len(seq) < MIN_INTERACTIONS:
            dropped += 1
            continue
        kept[user] = seq
    if not kept:
        raise DataError(f"data set {name} has no usable user (each needs >= {MIN_INTERACTIONS} interactions with titled items)", hint="check the interactions and titles files")
    return Dataset(name=name, sequences=kept, titles=dict(titles), dropped_users=dropped, source=source)


@dataclass(frozen=True)
class Example:
    """One next-item prediction: the last ``H`` items before ``target``."""

    user: int
    history: tuple[int, ...]
    target: int
    position: int = -1  # the target's index in the user's sequence (-1: not known)


def select_users(dataset: Dataset, n: int | None, *, seed: int = 0, exclude: Collection[int] = ()) -> list[int]:
    """``n`` users drawn with a fixed seed (all users, sorted, when ``n`` is None), none of
    ``exclude`` (the draw among the others; without ``exclude``, every call draws as before)."""
    left = set(exclude)
    users = [u for u in dataset.users if u not in left] if left else dataset.users
    if not users:
        raise DataError(f"data set {dataset.name} has no users besides the {len(left)} held out", hint="hold out fewer users")
    if n is None or n >= len(users):
        return users
    if n <= 0:
        raise DataError(f"--users must be positive, got {n}")
    rng = np.random.default_rng(seed)
    return sorted(int(u) for u in rng.choice(users, size=n, replace=False))


def examples(dataset: Dataset, *, split: str, history: int = 10, users: list[int] | None = None, last_only: bool = False) -> list[Example]:
    """Leave-one-out examples of ``split`` for ``users`` (all users by default).

    ``train`` yields every position after the first of the train part (or only its
    last item with ``last_only``); ``valid`` and ``test`` one example per user.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}", hint=f"use one of {', '.join(SPLITS)}")
    out: list[Example] = []
    for user in users if users is not None else dataset.users:
        seq = dataset.sequences[user]
        if split == "test":
            targets = [len(seq) - 1]
        elif split == "valid":
            targets = [len(seq) - 2]
        else:
            train_end = len(seq) - 2
            targets = [train_end - 1] if last_only else list(range(1, train_end))
        for t in targets:
            out.append(Example(user=user, history=seq[max(0, t - history):t], target=seq[t], position=t))
    return out


def train_popularity(dataset: Dataset) -> dict[int, int]:
    """Interaction counts of each item over the train parts only."""
    counts: dict[int, int] = {}
    for seq in dataset.sequences.values():
        for item in seq[:-2]:
            counts[item] = counts.get(item, 0) + 1
    return counts


@dataclass
class CandidateSampler:
    """Seeded negatives per user: the same candidates for every model (design §3)."""

    dataset: Dataset
    negatives: int = 19
    regime: str = "uniform"
    seed: int = 0
    _probs: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise DataError(f"unknown negative sampling {self.regime!r}", hint=f"use one of {', '.join(REGIMES)}")
        if self.regime == "popularity":
            pop = train_popularity(self.dataset)
            weights = np.array([pop.get(int(i), 0) for i in self.dataset.items], dtype=np.float64)
            self._probs = weights / weights.sum()

    def __call__(self, example: Example) -> tuple[int, ...]:
        """``(target, neg_1, ..., neg_k)``: the target first, negatives in draw order."""
        seen = set(self.dataset.sequences[example.user])
        available = ~np.isin(self.dataset.items, list(seen))
        if self._probs is not None:
            available &= self._probs > 0
        if self.negatives > int(available.sum()):
            raise DataError(f"--negatives {self.negatives} is more than the {int(available.sum())} items user {example.user} never interacted with", hint="lower --negatives")
        rng = np.random.default_rng([self.seed, example.user, REGIMES.index(self.regime)])
        chosen: list[int] = []
        chosen_set: set[int] = set()
        while len(chosen) < self.negatives:
            draw = rng.choice(self.dataset.items, size=2 * self.negatives, p=self._probs)
            for item in draw.tolist():
                if item not in seen and item not in chosen_set:
                    chosen.append(item)
                    chosen_set.add(item)
                    if len(chosen) == self.negatives:
                        break
        return (example.target, *chosen)


def sample_candidates(dataset: Dataset, example: Example, *, negatives: int = 19, regime: str = "uniform", seed: int = 0) -> tuple[int, ...]:
    """One-shot form of :class:`CandidateSampler` (build a sampler for many examples)."""
    return CandidateSampler(dataset, negatives=negatives, regime=regime, seed=seed)(example)
