"""The training data of a fine-tuning run: train examples, seeded batches and negatives, encoded like evaluation.

Every draw is a pure function of the seed and the step, so a resumed run sees exactly the
batches and negatives of an uninterrupted one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ollama_slim.errors import UsageError
from ollama_slim.models.lm import Row
from ollama_slim.slimming.finetune.config import FinetuneConfig


def heldout_users(config: FinetuneConfig, dataset: Any) -> set[int]:
    """The users healing never sees: those an evaluation of ``holdout_users`` users with the
    same seed ranks (:func:`ollama_slim.recsys.evaluate.prepare_cases`); none by default."""
    from ollama_slim.recsys.data import select_users

    if not config.holdout_users:
        return set()
    if config.holdout_users >= len(dataset.users):
        raise UsageError(f"holding out {config.holdout_users} users leaves none of the {len(dataset.users)} users of {dataset.name} to heal on",
                         hint="hold out fewer users (--holdout-users; prune holds out its --eval-users)")
    return set(select_users(dataset, config.holdout_users, seed=config.seed))


def train_examples(config: FinetuneConfig, dataset: Any) -> list[Any]:
    """The train-split examples of ``config``'s users, none of the held-out ones (a
    :class:`UsageError` if there are none)."""
    from ollama_slim.recsys.data import examples, select_users

    users = select_users(dataset, config.users, seed=config.seed, exclude=heldout_users(config, dataset))
    found = examples(dataset, split="train", history=config.history, users=users)
    if not found:
        raise UsageError(f"data set {dataset.name} has no train examples", hint="each user needs at least 4 interactions to train on")
    return found


def check_negatives(config: FinetuneConfig, dataset: Any, train: list[Any]) -> None:
    """Every train user must have ``rank_negatives`` items they never interacted with (in
    the popularity regime: among the items with train interactions)."""
    if config.rank_negatives == 0:
        return
    fewest = min(fewest_unseen(dataset, {e.user for e in train}, regime=r) for r in config.rank_regimes)
    if config.rank_negatives > fewest:
        raise UsageError(f"--rank-negatives {config.rank_negatives} is more than the {fewest} items some user never interacted with",
                         hint=f"use --rank-negatives {fewest} or fewer")


def fewest_unseen(dataset: Any, users: set[int], *, regime: str = "uniform") -> int:
    """The fewest items any of ``users`` never interacted with that ``regime`` can draw."""
    from ollama_slim.recsys.data import train_popularity

    pool = set(int(i) for i in dataset.items)
    if regime == "popularity":
        pool &= {item for item, count in train_popularity(dataset).items() if count > 0}
    return min(len(pool - set(dataset.sequences[user])) for user in users)


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


def draw_seed(*, seed: int, step: int, index: int, fixed: bool = False) -> int:
    """The seed of train example ``index``'s negatives at ``step`` (the same at every step when ``fixed``)."""
    entropy = [seed, index] if fixed else [seed, step, index]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


@dataclass
class Negatives:
    """How train negatives are drawn: ``count`` items the user never interacted with, per
    example and step (per example when ``fixed``), from one of ``regimes`` chosen with the
    seed (``uniform``, ``popularity``: design §3's two regimes). Every draw is a pure
    function of ``(seed, step, index)``."""

    dataset: Any
    count: int
    seed: int
    regimes: tuple[str, ...] = ("uniform",)
    fixed: bool = False
    _samplers: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        from ollama_slim.recsys.data import CandidateSampler

        self._samplers = {r: CandidateSampler(self.dataset, negatives=self.count, regime=r) for r in self.regimes}

    def regime(self, seed: int) -> str:
        """The regime of the draw seeded ``seed`` (the only one when there is one)."""
        if len(self.regimes) == 1:
            return self.regimes[0]
        return self.regimes[int(np.random.default_rng([seed, 1]).integers(len(self.regimes)))]

    def draw(self, example: Any, *, step: int, index: int) -> tuple[str, tuple[int, ...]]:
        """``(regime, negatives)`` of train example ``index`` at optimizer step ``step``."""
        seed = draw_seed(seed=self.seed, step=step, index=index, fixed=self.fixed)
        regime = self.regime(seed)
        sampler = copy.copy(self._samplers[regime])  # keeps the popularity weights, computed once
        sampler.seed = seed
        return regime, sampler(example)[1:]


def negative_items(dataset: Any, example: Any, *, count: int, seed: int, step: int, index: int) -> tuple[int, ...]:
    """``count`` uniform negatives (items the user never interacted with) for train
    example ``index`` at optimizer step ``step``: a pure function of its arguments."""
    return Negatives(dataset, count=count, seed=seed).draw(example, step=step, index=index)[1]


def prompt_config(config: FinetuneConfig) -> Any:
    """The :class:`~ollama_slim.recsys.prompt.PromptConfig` of ``config``."""
    from ollama_slim.recsys.prompt import PromptConfig

    if config.task_format == "chat" and config.chat is None:
        raise UsageError("--task-format chat needs the model's chat template", hint="fine-tune a model with a chat template, or use --task-format completion")
    chat = config.chat if config.task_format == "chat" else None
    return PromptConfig(history=config.history, title_words=config.title_words, title_tokens=config.title_tokens, chat=chat)


def answer_items(dataset: Any, example: Any, count: int) -> tuple[int, ...]:
    """``count`` answers to ``example``'s prompt: its target and the items the user took next
    within the train part, repeated from the start when the train part ends first."""
    if count == 1:
        return (example.target,)
    if example.position < 0:
        raise ValueError("answers beyond the target need the example's position in its sequence")
    seq = dataset.sequences[example.user]
    later = tuple(seq[example.position : max(example.position + 1, min(example.position + count, len(seq) - 2))])
    return tuple(later[i % len(later)] for i in range(count))


def cf_answer_items(neighbours: Any, dataset: Any, example: Any, count: int) -> tuple[int, ...]:
    """``count`` answers of the item-to-item recommender ``neighbours``
    (:class:`~ollama_slim.recsys.neighbours.ItemNeighbours`) for ``example``'s history, never an
    item the user took before the target; repeated when it has fewer, the target when it has none."""
    taken = dataset.sequences[example.user][: max(0, example.position)]
    top = neighbours.top(example.history, exclude=taken, count=count) or (example.target,)
    return tuple(top[i % len(top)] for i in range(count))


@dataclass
class AnswerWeights:
    """The weight of each answer's title loss, normalised to mean 1 over a batch's answers.

    Popularity debiasing: item ``i`` weighs ``max(1, train count) ** -beta``. With
    ``cf_answers`` > 0 the last ``cf_answers`` of each row are the recommender's, and
    together they carry ``cf_share`` of the row's weight (the data's answers the rest)."""

    dataset: Any
    beta: float = 0.0
    cf_answers: int = 0
    cf_share: float = 0.5
    counts: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        from ollama_slim.recsys.data import train_popularity

        self.counts = train_popularity(self.dataset)

    def __call__(self, answers: list[tuple[int, ...]]) -> torch.Tensor:
        """``[B, A]`` weights of the ``A`` answers of each of ``B`` examples."""
        w = torch.tensor([[float(max(1, self.counts.get(int(i), 0))) ** -self.beta for i in row] for row in answers])
        if self.cf_answers > 0:
            width, k = w.shape[1], self.cf_answers
            share = torch.full((width,), (1.0 - self.cf_share) / max(1, width - k))
            share[width - k :] = self.cf_share / k
            w = w * share
        return w / w.mean()


def encode_rows(tokenizer: Any, dataset: Any, batch: list[Any], config: FinetuneConfig, negatives: list[tuple[int, ...]] | None = None,
                answers: list[tuple[int, ...]] | None = None) -> list[Row]:
    """``(prompt_ids, [answer_ids..., negative_ids...])`` per example, encoded like evaluation:
    each example's ``answers`` (:func:`answer_items`, the target first), or its target alone."""
    from ollama_slim.recsys.prompt import encode_items

    prompt = prompt_config(config)
    answers = answers or [(example.target,) for example in batch]
    return [encode_items(tokenizer, dataset, example, (*items, *negs), prompt)
            for example, items, negs in zip(batch, answers, negatives or [()] * len(batch))]
