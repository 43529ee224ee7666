"""The training data of a fine-tuning run: train examples, seeded batches and negatives, encoded like evaluation.

Every draw is a pure function of the seed and the step, so a resumed run sees exactly the
batches and negatives of an uninterrupted one.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ollama_slim.errors import UsageError
from ollama_slim.models.lm import Row
from ollama_slim.slimming.finetune.config import FinetuneConfig


def train_examples(config: FinetuneConfig, dataset: Any) -> list[Any]:
    """The train-split examples of ``config``'s users (a :class:`UsageError` if there are none)."""
    from ollama_slim.recsys.data import examples, select_users

    users = select_users(dataset, config.users, seed=config.seed)
    found = examples(dataset, split="train", history=config.history, users=users)
    if not found:
        raise UsageError(f"data set {dataset.name} has no train examples", hint="each user needs at least 4 interactions to train on")
    return found


def check_negatives(config: FinetuneConfig, dataset: Any, train: list[Any]) -> None:
    """Every train user must have ``rank_negatives`` items they never interacted with."""
    if config.rank_negatives == 0:
        return
    fewest = len(dataset.items) - max(len(set(dataset.sequences[user])) for user in {e.user for e in train})
    if config.rank_negatives > fewest:
        raise UsageError(f"--rank-negatives {config.rank_negatives} is more than the {fewest} items some user never interacted with",
                         hint=f"use --rank-negatives {fewest} or fewer")


def batch_indices(*, step: int, batch_size: int, num_examples: int, seed: int) -> list[int]:
    """Example indices of optimizer step ``step`` (0-based): a seeded permutation per epoch.

    A pure function of its arguments, so a resumed run sees exactly the same batches.
    """
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, num_examples)
        out.append(int(_epoch_order(seed, epoch, num_examples)[offset]))
    return out


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order of the examples in ``epoch``: [num_examples]."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def negative_items(dataset: Any, example: Any, *, count: int, seed: int, step: int, index: int) -> tuple[int, ...]:
    """``count`` uniform negatives (items the user never interacted with) for train
    example ``index`` at optimizer step ``step``: a pure function of its arguments."""
    from ollama_slim.recsys.data import CandidateSampler

    draw_seed = int(np.random.SeedSequence([seed, step, index]).generate_state(1)[0])
    return CandidateSampler(dataset, negatives=count, seed=draw_seed)(example)[1:]


def prompt_config(config: FinetuneConfig) -> Any:
    """The :class:`~ollama_slim.recsys.prompt.PromptConfig` of ``config``."""
    from ollama_slim.recsys.prompt import PromptConfig

    return PromptConfig(history=config.history, title_words=config.title_words, title_tokens=config.title_tokens)


def encode_rows(tokenizer: Any, dataset: Any, batch: list[Any], config: FinetuneConfig, negatives: list[tuple[int, ...]] | None = None) -> list[Row]:
    """``(prompt_ids, [target_ids, negative_ids...])`` per example, encoded like evaluation."""
    from ollama_slim.recsys.prompt import candidate_text, encode_candidates, encode_prompt, prompt_text

    prompt = prompt_config(config)
    rows = []
    for example, negs in zip(batch, negatives or [()] * len(batch)):
        texts = [candidate_text(dataset, item, prompt) for item in (example.target, *negs)]
        rows.append((encode_prompt(tokenizer, prompt_text(dataset, example, prompt)), encode_candidates(tokenizer, texts, prompt)))
    return rows
