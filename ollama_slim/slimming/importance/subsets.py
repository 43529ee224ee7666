"""Hidden states of layer subsets, cached by layer prefix (design §4, issue 3).

No rebuilt model: :class:`~ollama_slim.models.lm.LayerRunner` calls the embedding, the kept
layers (in model order) and the head one by one. Two subsets that agree on their layers
below layer ``j`` share the hidden states up to ``j``: :class:`PrefixCache` keys states by
the tuple of layers applied so far, so evaluating ``(0, 1, 5)`` after ``(0, 1, 4)`` costs
one layer forward, not three.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from ollama_slim.models.lm import LayerRunner, PackedBatch

Key = tuple[int, ...]


class PrefixCache:
    """Hidden states of layer prefixes, keyed by the layers applied so far.

    ``final(layers)`` returns the states after applying ``sorted(layers)``, starting
    from the longest cached prefix. Entries that are prefixes of the ``pin``-ned set
    are evicted last; others go least-recently-used first once ``max_bytes`` is passed.
    ``layer_forwards`` counts layer applications done (one per layer and subset, all
    batches together); ``naive_forwards`` what running every subset whole would cost.
    """

    def __init__(self, runner: LayerRunner, batches: list[PackedBatch], *, max_bytes: float = 2e9) -> None:
        self.runner, self.batches, self.max_bytes = runner, batches, max_bytes
        self.states: OrderedDict[Key, list[torch.Tensor]] = OrderedDict()
        self.pinned: set[Key] = {()}
        self.layer_forwards = 0
        self.naive_forwards = 0
        self.evaluations = 0
        self._bytes = 0

    def pin(self, layers: Any) -> None:
        """Keep the prefixes of ``layers`` (the set a search step works around) longest."""
        key = tuple(sorted(layers))
        self.pinned = {key[:j] for j in range(len(key) + 1)}

    @torch.no_grad()
    def final(self, layers: Any) -> list[torch.Tensor]:
        """States after ``layers`` (any order; applied in model order): [B, S, d] per batch."""
        key = tuple(sorted(layers))
        self.naive_forwards += len(key)
        self.evaluations += 1
        j = next(j for j in range(len(key), -1, -1) if key[:j] in self.states or j == 0)
        if key[:j] in self.states:
            self.states.move_to_end(key[:j])
            hidden = self.states[key[:j]]
        else:
            hidden = [self.runner.embed_batch(b) for b in self.batches]
            self._store((), hidden)
        for n in range(j, len(key)):
            hidden = [self.runner.layer(key[n], h, b) for h, b in zip(hidden, self.batches)]
            self.layer_forwards += 1
            self._store(key[: n + 1], hidden)
        return hidden

    def _store(self, key: Key, hidden: list[torch.Tensor]) -> None:
        if key in self.states:
            return
        self.states[key] = hidden
        self._bytes += _nbytes(hidden)
        while self._bytes > self.max_bytes:
            victim = self._victim(keep=key)
            if victim is None:
                break
            self._bytes -= _nbytes(self.states.pop(victim))

    def _victim(self, *, keep: Key) -> Key | None:
        """The least recently used entry, unpinned ones first; None if only ``keep`` is left."""
        for spare_pinned in (False, True):
            for k in self.states:
                if k != keep and (spare_pinned or k not in self.pinned):
                    return k
        return None

    def stats(self) -> dict[str, int]:
        """Counters: layer forwards done, those a naive search would do, subsets evaluated."""
        return {"layer_forwards": self.layer_forwards, "naive_layer_forwards": self.naive_forwards, "evaluations": self.evaluations}


def _nbytes(hidden: list[torch.Tensor]) -> int:
    return sum(h.numel() * h.element_size() for h in hidden)
