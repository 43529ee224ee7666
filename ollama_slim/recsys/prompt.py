"""The recommendation prompt and title encoding shared by scoring, evaluation and healing.

One prompt format for every model and backend (transformers or llama.cpp), so
numbers compare: the history titles listed, then the candidate title as continuation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ollama_slim.recsys.data import Dataset, Example


# The task, stated as the SYSTEM message that a slim model's Modelfile carries (design §3).
SYSTEM_PROMPT = (
    "You are a recommender. The user lists items they interacted with, most recent last. "
    "Answer with the title of the one item they are most likely to want next, and nothing else."
)


@dataclass(frozen=True)
class PromptConfig:
    """``history`` items in the prompt, each title cut to ``title_words`` words;
    candidates scored on at most ``title_tokens`` tokens."""

    history: int = 10
    title_words: int = 12
    title_tokens: int = 16


def short_title(title: str, words: int) -> str:
    return " ".join(title.split()[:words])


def shown_items(example: Example, config: PromptConfig) -> tuple[int, ...]:
    """The history items a prompt lists: the last ``config.history``, most recent last."""
    return example.history[-config.history:] if config.history > 0 else ()


def listing_prompt(titles: list[str]) -> str:
    """The prompt text that lists ``titles`` (numbered, most recent last)."""
    lines = [f"{n}. {title}" for n, title in enumerate(titles, start=1)]
    return "A customer bought these items, most recent last:\n" + "\n".join(lines) + "\nThe next item they buy is:"


def prompt_text(dataset: Dataset, example: Example, config: PromptConfig) -> str:
    """The prompt listing the last ``config.history`` titles, most recent last."""
    return listing_prompt([short_title(dataset.title(i), config.title_words) for i in shown_items(example, config)])


def candidate_text(dataset: Dataset, item: int, config: PromptConfig) -> str:
    return " " + short_title(dataset.title(item), config.title_words)


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Prompt token ids; a BOS is prepended when the tokenizer defines one."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + list(ids)


def encode_candidates(tokenizer: Any, texts: list[str], config: PromptConfig) -> list[list[int]]:
    """Candidate title ids, each cut to ``config.title_tokens`` (at least one token)."""
    out = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids = list(ids)[: config.title_tokens]
        out.append(ids or [tokenizer.eos_token_id])
    return out


def encode_example(tokenizer: Any, dataset: Dataset, example: Example, config: PromptConfig) -> tuple[list[int], list[int]]:
    """``(prompt_ids, target_ids)`` for teacher forcing on the target title."""
    prompt = encode_prompt(tokenizer, prompt_text(dataset, example, config))
    target = encode_candidates(tokenizer, [candidate_text(dataset, example.target, config)], config)[0]
    return prompt, target
