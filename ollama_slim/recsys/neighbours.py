"""Item-to-item collaborative filtering over the train parts: what users took soon after what.

A classical recommender beside the language model: item ``b`` scores, for a history, the
number of times ``b`` followed one of the history's items within ``window`` positions in
some user's train part, divided by ``b``'s train count to the power ``alpha`` (0: raw
co-occurrence, which favours popular items; 1: a lift-like score that favours rare ones).
With ``vocab`` > 0 it answers only among the ``vocab`` items most taken in the train parts:
still a personal answer per history, from a set of answers small enough for a small model
to learn which history leads to which. ``vocab_skip`` > 0 leaves the ``vocab_skip`` most taken
items out of that set, so that its answers are items popularity-weighted negatives rarely draw (on
Amazon that did not spare a model trained on them the ranking under those negatives).
Its top items are personal (they follow from the user's own items), which makes them the
teacher for sequence-level distillation of a recommender's answers (``finetune
--cf-answers``): a deterministic answer per history, where the data's next items are not.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class ItemNeighbours:
    """Follower counts within ``window`` positions over every user's train part (all but the
    last two items, design §3), so no valid or test item is ever counted."""

    dataset: Any
    window: int = 5
    alpha: float = 0.5
    vocab: int = 0  # answer only among the vocab most taken train items (0: every item)
    vocab_skip: int = 0  # ... after the vocab_skip most taken ones
    followers: dict[int, Counter] = field(default_factory=dict, init=False, repr=False)
    counts: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be 1 or more, got {self.window}")
        if self.vocab < 0:
            raise ValueError(f"vocab must be 0 or more, got {self.vocab}")
        if self.vocab_skip < 0 or (self.vocab_skip and not self.vocab):
            raise ValueError(f"vocab_skip must be 0, or positive with a vocab, got {self.vocab_skip}")
        from ollama_slim.recsys.data import train_popularity

        self.counts = train_popularity(self.dataset)
        followers: dict[int, Counter] = defaultdict(Counter)
        for seq in self.dataset.sequences.values():
            train = seq[:-2]
            for a, item in enumerate(train):
                followers[item].update(train[a + 1 : a + 1 + self.window])
        if self.vocab > 0:
            ranked = sorted(self.counts, key=lambda i: (-self.counts[i], i))
            answers = set(ranked[self.vocab_skip : self.vocab_skip + self.vocab])
            followers = {item: Counter({b: n for b, n in after.items() if b in answers}) for item, after in followers.items()}
        self.followers = dict(followers)

    def scores(self, history: Iterable[int]) -> Counter:
        """Each item's score for ``history`` (items that never followed it are absent)."""
        total: Counter = Counter()
        for item in history:
            total.update(self.followers.get(int(item), {}))
        return Counter({b: n / max(1, self.counts.get(b, 0)) ** self.alpha for b, n in total.items()})

    def top(self, history: Iterable[int], *, exclude: Iterable[int] = (), count: int = 1) -> tuple[int, ...]:
        """The ``count`` best-scored items for ``history`` outside ``exclude`` (ties: the smaller
        id first); fewer when fewer items ever followed the history."""
        history = tuple(history)
        banned = set(int(i) for i in exclude) | set(history)
        ranked = sorted(((-s, b) for b, s in self.scores(history).items() if b not in banned))
        return tuple(b for _, b in ranked[:count])
