"""Task quality of a layer subset: the next-item title loss and NDCG@10 (design §3).

A probe is a set of examples encoded once and packed (:func:`ollama_slim.models.lm.pack`): for the
title loss each row is a prompt and its target title; for ranking, the prompt and its
1 + 19 seeded candidates (target first), all scored in one row. Calibration probes come
from the train split, selection probes from the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ollama_slim.recsys.data import CandidateSampler, Dataset, Example, examples, select_users
from ollama_slim.recsys.metrics import per_user_metrics, random_baseline
from ollama_slim.recsys.prompt import PromptConfig, encode_items
from ollama_slim.models.lm import LayerRunner, PackedBatch, Row, pack
from ollama_slim.slimming.importance.subsets import PrefixCache


@dataclass
class Probe:
    """Packed examples: ``batches`` cover ``examples`` rows of ``conts`` continuations each."""

    batches: list[PackedBatch]
    examples: int
    conts: int


def probe_examples(dataset: Dataset, *, split: str, users: int | None, seed: int = 0, history: int = 10) -> list[Example]:
    """One example per user: the last train item (``split="train"``) or the validation item."""
    chosen = select_users(dataset, users, seed=seed)
    return examples(dataset, split=split, history=history, users=chosen, last_only=True)


def probe_rows(tokenizer: Any, dataset: Dataset, items: list[Example], *, sampler: CandidateSampler | None = None,
               prompt: PromptConfig = PromptConfig()) -> list[Row]:
    """Encoded rows of ``items``: the prompt and the target title alone, or all ``sampler`` candidates."""
    return [encode_items(tokenizer, dataset, example, sampler(example) if sampler is not None else (example.target,), prompt) for example in items]


def pack_probe(tokenizer: Any, rows: list[Row], *, batch_size: int = 8, dtype: torch.dtype = torch.float32) -> Probe:
    """Pack encoded ``rows`` (from one data set or several, with as many continuations each) into a probe."""
    rows = sorted(rows, key=lambda r: len(r[0]) + sum(len(c) for c in r[1]))  # less padding per batch
    pad = tokenizer.pad_token_id or 0
    batches = [pack(rows[i : i + batch_size], dtype=dtype, pad_id=pad, first_example=i) for i in range(0, len(rows), batch_size)]
    return Probe(batches=batches, examples=len(rows), conts=len(rows[0][1]))


def build_probe(tokenizer: Any, dataset: Dataset, items: list[Example], *, sampler: CandidateSampler | None = None,
                prompt: PromptConfig = PromptConfig(), batch_size: int = 8, dtype: torch.dtype = torch.float32) -> Probe:
    """Encode and pack ``items``: the target title alone, or all ``sampler`` candidates."""
    return pack_probe(tokenizer, probe_rows(tokenizer, dataset, items, sampler=sampler, prompt=prompt), batch_size=batch_size, dtype=dtype)


def target_nll(loglik: torch.Tensor) -> float:
    """Mean next-item title NLL from ``loglik`` [U, C] (column 0 is the target): the title loss of
    :func:`ollama_slim.models.lm.title_nll`, from length-normalised scores."""
    return float(-loglik[:, 0].mean())


def ndcg_at(loglik: torch.Tensor) -> float:
    """Mean NDCG@10 of the target (column 0) over rows of ``loglik`` [U, C], tie-aware."""
    return float(per_user_metrics(loglik.double().numpy())["ndcg@10"].mean())


def random_ndcg(candidates: int) -> float:
    """Expected NDCG@10 of a random ranking of ``candidates`` items (0.227 for 1 + 19)."""
    return random_baseline(candidates)["ndcg@10"]


class SubsetEvaluator:
    """Log-likelihoods of a probe under any layer subset, through one :class:`PrefixCache`."""

    def __init__(self, runner: LayerRunner, probe: Probe, *, max_bytes: float = 2e9) -> None:
        self.runner, self.probe = runner, probe
        self.cache = PrefixCache(runner, probe.batches, max_bytes=max_bytes)

    def loglik(self, layers: Any) -> torch.Tensor:
        """Length-normalised log-likelihood of each continuation: [examples, conts]."""
        hidden = self.cache.final(layers)
        with torch.no_grad():
            return self.runner.scores(hidden, self.probe.batches, examples=self.probe.examples, conts=self.probe.conts)

    def loss(self, layers: Any) -> float:
        """Mean title loss of the subset (needs a probe whose column 0 is the target)."""
        return target_nll(self.loglik(layers))
