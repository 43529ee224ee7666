"""Running any subset of a model's decoder layers, with a hidden-state prefix cache.

No rebuilt model: the embedding, the kept layers (in model order) and the head are
called one by one (design §4, issue 3). Two subsets that agree on their layers below
layer ``j`` share the hidden states up to ``j``: :class:`PrefixCache` keys states by
the tuple of layers applied so far, so evaluating ``(0, 1, 5)`` after ``(0, 1, 4)``
costs one layer forward, not three. Layers may sit on different devices
(accelerate's ``device_map``): hidden states follow each layer to its device.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from ollama_slim.errors import UnsupportedArchitectureError
from ollama_slim.models.families import family_of, get_module

Key = tuple[int, ...]


@dataclass
class PackedBatch:
    """Prompts with their continuations packed side by side in one row per example.

    Row ``b`` holds a prompt then each continuation; a continuation token sees the
    prompt and the earlier tokens of its own continuation only, at positions that
    continue the prompt's, so one row scores all of a user's candidates.

    ``ids``, ``positions``: [B, S]; ``bias``: additive attention mask [B, 1, S, S];
    ``tokens``: [B, S] real (non-pad) tokens; ``src``: [M] flat indices into B*S of
    the positions whose logits predict ``tgt`` [M]; ``group``: [M] flat index into
    ``num_examples * num_continuations`` of the (example, continuation) each
    prediction belongs to; ``last``: [B] index of each prompt's last token.
    """

    ids: torch.Tensor
    positions: torch.Tensor
    bias: torch.Tensor
    tokens: torch.Tensor
    src: torch.Tensor
    tgt: torch.Tensor
    group: torch.Tensor
    last: torch.Tensor
    first_example: int
    _placed: dict[Any, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])


def _row(prompt: list[int], conts: list[list[int]]) -> tuple[list[int], list[int], list[tuple[int, int]], list[tuple[int, int, int]]]:
    """One packed row: ids, positions, segment spans, predictions ``(src, tgt, cont)``."""
    ids, pos = list(prompt), list(range(len(prompt)))
    spans, preds = [(0, len(prompt))], []
    for c, cont in enumerate(conts):
        start = len(ids)
        for k, tok in enumerate(cont):
            preds.append((len(prompt) - 1 if k == 0 else start + k - 1, tok, c))
        ids += cont
        pos += range(len(prompt), len(prompt) + len(cont))
        spans.append((start, start + len(cont)))
    return ids, pos, spans, preds


def pack(rows: list[tuple[list[int], list[list[int]]]], *, dtype: torch.dtype, pad_id: int = 0, first_example: int = 0) -> PackedBatch:
    """Pack ``(prompt_ids, [continuation_ids, ...])`` rows (same number of continuations)."""
    built = [_row(p, c) for p, c in rows]
    width = max(len(r[0]) for r in built)
    n, conts = len(rows), len(rows[0][1])
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    allowed = torch.zeros((n, width, width), dtype=torch.bool)
    tokens = torch.zeros((n, width), dtype=torch.bool)
    src, tgt, group = [], [], []
    for b, (row_ids, row_pos, spans, preds) in enumerate(built):
        ids[b, : len(row_ids)] = torch.tensor(row_ids)
        positions[b, : len(row_pos)] = torch.tensor(row_pos)
        tokens[b, : len(row_ids)] = True
        p = spans[0][1]
        allowed[b, :p, :p] = torch.ones(p, p, dtype=torch.bool).tril()
        for start, end in spans[1:]:
            allowed[b, start:end, :p] = True
            allowed[b, start:end, start:end] = torch.ones(end - start, end - start, dtype=torch.bool).tril()
        for s, t, c in preds:
            src.append(b * width + s)
            tgt.append(t)
            group.append((first_example + b) * conts + c)
    idx = torch.arange(width)
    allowed[:, idx, idx] = True  # padding rows see themselves: no empty softmax
    bias = torch.zeros((n, 1, width, width), dtype=dtype).masked_fill(~allowed.unsqueeze(1), torch.finfo(dtype).min)
    last = torch.tensor([r[2][0][1] - 1 for r in built])
    return PackedBatch(ids, positions, bias, tokens, torch.tensor(src), torch.tensor(tgt), torch.tensor(group), last, first_example)


class LayerRunner:
    """Calls a model's pieces (embedding, any decoder layer, final norm + head) directly."""

    def __init__(self, model: Any) -> None:
        fam = family_of(model)
        self.model = model
        self.layers = get_module(model, fam.layers)
        self.embed = get_module(model, fam.embed)
        self.norm = get_module(model, fam.final_norm)
        self.head = get_module(model, fam.lm_head)
        parent = get_module(model, fam.layers.rsplit(".", 1)[0])
        self.rotary = getattr(parent, "rotary_emb", None)
        if self.rotary is None:
            raise UnsupportedArchitectureError(f"{fam.name}: no rotary embedding beside {fam.layers}", hint="layer subsets need a rotary-position model")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @staticmethod
    def device_of(module: Any) -> torch.device:
        return next(module.parameters()).device

    def _placed(self, batch: PackedBatch, device: torch.device) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The batch's mask and rotary ``(cos, sin)`` on ``device``, computed once."""
        if device not in batch._placed:
            positions = batch.positions.to(device)
            probe = torch.zeros((), dtype=batch.bias.dtype, device=device)
            cos_sin = self.rotary(probe, position_ids=positions)
            batch._placed[device] = (batch.bias.to(device), cos_sin)
        return batch._placed[device]

    def embed_batch(self, batch: PackedBatch) -> torch.Tensor:
        """Token embeddings: [B, S, d]."""
        return self.embed(batch.ids.to(self.device_of(self.embed)))

    def layer(self, index: int, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Decoder layer ``index`` on ``hidden`` [B, S, d] -> [B, S, d], on that layer's device."""
        module = self.layers[index]
        device = self.device_of(module)
        bias, cos_sin = self._placed(batch, device)
        positions = batch.positions.to(device)
        return module(hidden.to(device), attention_mask=bias, position_ids=positions, position_embeddings=cos_sin)

    def logprobs(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Log-probabilities of the batch's predicted tokens: [M], float32 on the CPU."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        picked = flat[batch.src.to(flat.device)]
        device = self.device_of(self.norm)
        normed = self.norm(picked.to(device))
        logits = self.head(normed.to(self.device_of(self.head))).float()
        logp = torch.log_softmax(logits, dim=-1)
        return logp.gather(-1, batch.tgt.to(logp.device).unsqueeze(-1)).squeeze(-1).cpu()


def mean_logprobs(runner: LayerRunner, hiddens: list[torch.Tensor], batches: list[PackedBatch], *, examples: int, conts: int) -> torch.Tensor:
    """Length-normalised log-likelihood of each continuation: [examples, conts]."""
    total = torch.zeros(examples * conts)
    count = torch.zeros(examples * conts)
    for hidden, batch in zip(hiddens, batches):
        logp = runner.logprobs(hidden, batch)
        total.index_add_(0, batch.group, logp)
        count.index_add_(0, batch.group, torch.ones_like(logp))
    return (total / count.clamp(min=1)).reshape(examples, conts)


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
