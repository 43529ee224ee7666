"""The recommendation prompt and title encoding shared by scoring, evaluation and healing.

One prompt format for every model and backend (transformers or llama.cpp), so numbers
compare. Two task formats (``TASK_FORMATS``):

- ``completion``: a raw prompt listing the history titles, the candidate title as its
  continuation;
- ``chat``: the prompt as ``ollama run`` renders it (the model's chat TEMPLATE with the
  SYSTEM task statement and the history in a user message, worded in one of several
  phrasings drawn per user), the candidate title as the assistant's answer (without its
  trailing year), closed by the template's end-of-turn
  token: what the shipped model is asked.
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


TASK_FORMATS = ("completion", "chat")


@dataclass(frozen=True)
class ChatPrompt:
    """The shipped chat format: Ollama ``template`` (Go), the ``end`` of an answer's turn
    (:func:`end_of_turn`), the ``system`` message, the user ``phrasings`` drawn per user with
    ``seed``, and the ``domain`` words (``auto``: from the data set)."""

    template: str
    end: str
    system: str = SYSTEM_PROMPT
    phrasings: tuple[str, ...] = ("prompt", "numbered", "after")
    domain: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class PromptConfig:
    """``history`` items in the prompt, each title cut to ``title_words`` words;
    candidates scored on at most ``title_tokens`` tokens; ``chat``: the chat task format
    (None: the completion format)."""

    history: int = 10
    title_words: int = 12
    title_tokens: int = 16
    chat: ChatPrompt | None = None


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


def encode_items(tokenizer: Any, dataset: Dataset, example: Example, items: tuple[int, ...] | list[int], config: PromptConfig) -> tuple[list[int], list[list[int]]]:
    """``(prompt_ids, [candidate_ids per item])`` of ``example`` in the task format of ``config``."""
    if config.chat is None:
        ids = encode_prompt(tokenizer, prompt_text(dataset, example, config))
        return ids, encode_candidates(tokenizer, [candidate_text(dataset, item, config) for item in items], config)
    chat = config.chat
    text = chat_prompt_text(dataset, example, config)
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    end = list(tokenizer(chat.end, add_special_tokens=False)["input_ids"])
    titles = [answer_text(dataset, item, config) for item in items]
    answers = [list(a)[: config.title_tokens] for a in tokenizer(titles, add_special_tokens=False)["input_ids"]]
    return ids, [a + end for a in answers]


def answer_text(dataset: Dataset, item: int, config: PromptConfig) -> str:
    """The chat answer naming ``item``: its title without the trailing year
    (:func:`~ollama_slim.recsys.titles.answer_title`), cut to ``config.title_words``."""
    from ollama_slim.recsys.titles import answer_title

    return short_title(answer_title(dataset.title(item)), config.title_words)


def chat_prompt_text(dataset: Dataset, example: Example, config: PromptConfig) -> str:
    """The rendered chat prompt of ``example`` (``config.chat`` set): what ``ollama run`` sends."""
    from ollama_slim.ollama.chat import chat_messages, render_prompt
    from ollama_slim.recsys.phrasings import domain_for, pick_phrasing, user_message

    chat = config.chat
    titles = [short_title(dataset.title(i), config.title_words) for i in shown_items(example, config)]
    phrasing = pick_phrasing(chat.phrasings, user=example.user, seed=chat.seed)
    user = user_message(phrasing, titles, domain_for(dataset.name, chat.domain))
    return render_prompt(chat.template, chat_messages(user, system=chat.system))


def end_of_turn(template: str, stops: tuple[str, ...] = ()) -> str:
    """What ends an assistant answer: of what the template writes right after an answer that is
    not the last message, the stop string it starts with (``<|im_end|>`` for chatml,
    ``<|eot_id|>`` for llama3, ``<end_of_turn>`` for gemma), else the text up to the line break."""
    from ollama_slim.ollama.chat import Message, render_prompt

    mark = "\x00ANSWER\x00"
    text = render_prompt(template, [Message("user", "q"), Message("assistant", mark), Message("user", "r")])
    after = text.split(mark, 1)[1] if mark in text else ""
    return next((s for s in sorted(stops, key=len, reverse=True) if s and after.startswith(s)), after.split("\n", 1)[0])


def encode_example(tokenizer: Any, dataset: Dataset, example: Example, config: PromptConfig) -> tuple[list[int], list[int]]:
    """``(prompt_ids, target_ids)`` for teacher forcing on the target title."""
    prompt, (target,) = encode_items(tokenizer, dataset, example, (example.target,), config)
    return prompt, target
