"""Token ids to model inputs: right-padding, and packing a prompt with its continuations.

Padding gives one row per sequence; packing gives one row per prompt, the prompt followed
by each continuation, with an attention mask that lets a continuation token see the prompt
and the earlier tokens of its own continuation only (positions continue the prompt's), so
one forward pass scores every candidate of a user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

Row = tuple[list[int], list[list[int]]]  # (prompt_ids, [continuation_ids, ...])


def target_positions(rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row [T], column [T])``: where the logits predicting each row's first continuation
    (the target) sit, token by token: the prompt's last position, then the target's tokens
    but its last. ``T`` = the targets' tokens, row after row.

    The same in both layouts: padded ``prompt + target`` rows (:func:`pad_right`) and packed
    rows (:func:`pack`), where the first continuation follows its prompt directly.
    """
    row, col = [], []
    for b, (prompt, conts) in enumerate(rows):
        start = len(prompt) - 1
        row += [b] * len(conts[0])
        col += range(start, start + len(conts[0]))
    return torch.tensor(row, dtype=torch.long), torch.tensor(col, dtype=torch.long)


def pad_right(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``seqs`` -> ``(ids [B, L], mask [B, L])``, ``L`` the longest sequence."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


@dataclass
class PackedBatch:
    """Prompts with their continuations packed side by side in one row per example.

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


def pack(rows: list[Row], *, dtype: torch.dtype, pad_id: int = 0, first_example: int = 0) -> PackedBatch:
    """Pack ``(prompt_ids, [continuation_ids, ...])`` rows (same number of continuations).

    ``dtype`` is the attention mask's (the dtype attention runs in); ``first_example``
    offsets ``group`` so that batches of one probe index one score table.
    """
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
