"""Generation-mode quality (design §6, issue #11): asked in chat, does the shipped model answer with a title?

For each test user (the seeded users of :func:`ollama_slim.recsys.evaluate.prepare_cases`,
the same for every model), the history titles go to the shipped GGUF in one of several
phrasings (:mod:`ollama_slim.recsys.phrasings`, a seeded draw per user), rendered the way
``ollama run`` sends them (the Modelfile's TEMPLATE and SYSTEM, :mod:`ollama_slim.ollama.chat`),
and answered greedily through llama.cpp (temperature 0, at most ``max_tokens`` tokens, cut at
the Modelfile's stop strings). Each answer is matched against the catalogue
(:mod:`ollama_slim.recsys.titles`: normalised; a year, when given, must be right). Reported
as shares of users with 95% bootstrap intervals:

- ``title``: the answer is a catalogue title;
- ``new_title``: a catalogue title that is not one of the titles the user listed;
- ``target``: the user's held-out next item;
- ``target_or_top10`` (only given the per-user ranks of a ranking evaluation of the same model on
  the same users and candidates): the answer is the target, or the model ranks the target in
  its top 10 of the 1 + N candidates (HR@10 per user, ties counted as in the ranking metrics);

and ``distinct``, the number of distinct answers over the number of users (no interval),
``distinct_titles``, the number of distinct catalogue titles among the answers that name one the
user did not list, over the number of users (runs of made-up words are distinct answers but name
no title: this is the share that says the answers are personal recommendations), the most common
answer, and three example conversations.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ollama_slim import paths
from ollama_slim.errors import UsageError
from ollama_slim.ollama.chat import ChatFormat, Completion, GreedyChat, chat_format
from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.recsys.data import Dataset, load_dataset
from ollama_slim.recsys.evaluate import Case, EvalConfig, EvalResult, prepare_cases
from ollama_slim.recsys.metrics import Interval, bootstrap_interval
from ollama_slim.recsys.phrasings import TEST_PHRASINGS, Domain, check_phrasings, domain_for, pick_phrasing, user_message
from ollama_slim.recsys.prompt import SYSTEM_PROMPT, short_title, shown_items
from ollama_slim.recsys.titles import TitleIndex, TitleMatch, same_items

Progress = Callable[[int, int], None]
FIGURES = ("title", "new_title", "target", "target_or_top10")
_SAME_CANDIDATES = ("split", "negatives", "regime", "history", "seed")


class Answerer(Protocol):
    """What answers a rendered prompt: :class:`ollama_slim.ollama.chat.GreedyChat`, or a stand-in."""

    def complete(self, prompt: str, *, max_tokens: int, stops: tuple[str, ...] = ()) -> Completion:
        """The answer to ``prompt``."""


class CachedAnswers:
    """An :class:`Answerer` that keeps every answer in a JSON file beside a run, keyed by the rendered
    prompt and the answer's limits, and asks ``make()`` (a :class:`GreedyChat`, made on the first miss)
    only for prompts it has not seen. The answers are kept, not the figures, so every read judges them
    afresh: a change to the title match is seen without asking again. The file names the GGUF's size and
    modification time; a GGUF written since makes it start empty. Use as a context manager: leaving it
    writes the file (atomically) and closes what ``make`` made."""

    def __init__(self, path: Path, gguf: Path, make: Callable[[], Any]) -> None:
        self.path, self.make, self.inner = Path(path), make, None
        stat = Path(gguf).stat()
        self.source = {"gguf": str(gguf), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        saved = self._read()
        self.answers: dict[str, dict[str, Any]] = saved.get("answers", {}) if saved.get("source") == self.source else {}
        self.asked = 0  # prompts answered by the model in this session (not from the file)

    def _read(self) -> dict[str, Any]:
        try:
            data = paths.read_json(self.path)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def complete(self, prompt: str, *, max_tokens: int, stops: tuple[str, ...] = ()) -> Completion:
        key = f"{max_tokens}\t{chr(31).join(stops)}\t{prompt}"
        if key not in self.answers:
            if self.inner is None:
                self.inner = self.make()
            self.answers[key] = asdict(self.inner.complete(prompt, max_tokens=max_tokens, stops=stops))
            self.asked += 1
        return Completion(**self.answers[key])

    def __enter__(self) -> "CachedAnswers":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.asked:
                paths.write_json(self.path, {"source": self.source, "answers": self.answers})
        finally:
            close = getattr(self.inner, "close", None)  # GreedyChat frees llama.cpp; a stand-in may have nothing to free
            if close is not None:
                close()


@dataclass(frozen=True)
class GenerationConfig:
    """``cases``: users, split, history, seed and (for ``ranks``) candidates, as the ranking
    evaluation has them; ``phrasings`` users ask in; answers of at most ``max_tokens``;
    ``context`` of llama.cpp; ``modelfile``: TEMPLATE, SYSTEM and stops from this Modelfile
    instead of the model's own (to ask an original model the slim model's way); ``domain``
    words of the phrasings (``auto``: from the data set's name); ``examples`` conversations kept."""

    cases: EvalConfig
    phrasings: tuple[str, ...] = TEST_PHRASINGS
    max_tokens: int = 32
    context: int = 2048
    modelfile: Path | None = None
    domain: str = "auto"
    examples: int = 3

    def __post_init__(self) -> None:
        check_phrasings(tuple(self.phrasings))
        if self.max_tokens <= 0 or self.context <= self.max_tokens:
            raise UsageError(f"--max-tokens must be positive and below the context ({self.context}), got {self.max_tokens}", hint="32 is the default")
        domain_for("", self.domain)  # a known domain, or auto
        if self.examples < 0:
            raise UsageError("the number of examples cannot be negative", hint="3 is the default")

    def settings(self) -> dict[str, Any]:
        """What was measured on (JSON-able)."""
        keep = ("data", "split", "users", "negatives", "regime", "history", "title_words", "seed", "resamples")
        cases = {k: v for k, v in asdict(self.cases).items() if k in keep}
        mine = {"phrasings": list(self.phrasings), "max_tokens": self.max_tokens, "context": self.context, "domain": self.domain,
                "modelfile": str(self.modelfile) if self.modelfile is not None else None}
        return {**cases, **mine}


@dataclass(frozen=True)
class Turn:
    """One user's question and the model's answer."""

    user: int
    phrasing: str
    message: str
    answer: str
    tokens: int


@dataclass(frozen=True)
class GenerationResult:
    """The generation-mode figures of one model on one set of users."""

    model: str
    gguf: str
    chat: ChatFormat
    config: GenerationConfig
    data: dict[str, Any]
    users: list[int]
    figures: dict[str, Interval]
    distinct: float
    distinct_titles: float  # distinct catalogue titles the users did not list, over the users
    top_answer: tuple[str, int]  # the most common answer (as given) and how many users got it
    per_user: list[dict[str, Any]]
    examples: list[dict[str, Any]]
    tokens: int = 0
    seconds: float = field(default=0.0, compare=False)

    def to_json(self, *, per_user: bool = True) -> dict[str, Any]:
        """A JSON-able dict; timing is left out so reruns give identical output."""
        out = {
            "model": self.model, "gguf": self.gguf, "config": self.config.settings(), "data": self.data, "users": len(self.users),
            "chat": {"source": self.chat.source, "template": self.chat.template, "system": self.chat.system, "stops": list(self.chat.stops)},
            "figures": {k: v.to_json() for k, v in self.figures.items()}, "distinct": self.distinct, "distinct_titles": self.distinct_titles,
            "top_answer": {"answer": self.top_answer[0], "users": self.top_answer[1]}, "tokens": self.tokens, "examples": self.examples,
        }
        if per_user:
            out["per_user"] = self.per_user
        return out


# --------------------------------------------------------------------------- asking


def model_gguf(model: str | Path) -> Path:
    """The GGUF of ``model``: a ``.gguf`` file, a run directory (its ``model.gguf``), an ``hf.co/`` ref or an Ollama tag."""
    from ollama_slim.bench.backends import gguf_for

    return gguf_for(str(model))


def history_titles(dataset: Dataset, case: Case, config: EvalConfig) -> list[str]:
    """The titles a user lists: the evaluation's history, cut as its prompt cuts them."""
    return [short_title(dataset.title(i), config.title_words) for i in shown_items(case.example, config.prompt_config())]


def ask(answerer: Answerer, chat: ChatFormat, dataset: Dataset, cases: list[Case], config: GenerationConfig, *, progress: Progress | None = None) -> list[Turn]:
    """Every user's question, rendered with ``chat``, and the answer (one greedy completion each)."""
    domain: Domain = domain_for(dataset.name, config.domain)
    turns = []
    for done, case in enumerate(cases, start=1):
        user = case.example.user
        phrasing = pick_phrasing(tuple(config.phrasings), user=user, seed=config.cases.seed)
        message = user_message(phrasing, history_titles(dataset, case, config.cases), domain)
        answer = answerer.complete(chat.prompt(message), max_tokens=config.max_tokens, stops=chat.stops)
        turns.append(Turn(user=user, phrasing=phrasing, message=message, answer=answer.text, tokens=answer.tokens))
        if progress is not None:
            progress(done, len(cases))
    return turns


# --------------------------------------------------------------------------- judging


def _verdict(dataset: Dataset, case: Case, config: EvalConfig, match: TitleMatch) -> dict[str, Any]:
    """One user's flags: a title, a new one (not listed), the target; and the title it names."""
    listed = same_items(match, shown_items(case.example, config.prompt_config()))
    target = case.example.target in match.items
    named = case.example.target if target else min(match.items) if match.items else None
    return {"title": bool(match.items), "new_title": bool(match.items) and not listed, "target": target, "listed": listed,
            "match": dataset.title(named) if named is not None else None}


def judge(dataset: Dataset, cases: list[Case], turns: list[Turn], config: EvalConfig) -> tuple[list[dict[str, Any]], list[TitleMatch]]:
    """Per user: the answer, what it matched and the flags of :func:`_verdict`."""
    index = TitleIndex(dataset.titles, words=config.title_words)
    rows, matches = [], []
    for case, turn in zip(cases, turns):
        match = index.match(turn.answer)
        matches.append(match)
        rows.append({"user": turn.user, "phrasing": turn.phrasing, "answer": turn.answer, **_verdict(dataset, case, config, match),
                     "target_title": dataset.title(case.example.target)})
    return rows, matches


def _read_ranks(path: Path) -> Any:
    try:
        return paths.read_json(path)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read the ranking result {path} ({type(err).__name__})", hint="pass a run's eval_<label>.json") from None


def ranked_top10(ranks: EvalResult | dict[str, Any] | str | Path, *, users: list[int], dataset: Dataset, config: EvalConfig) -> np.ndarray:
    """HR@10 per user [U] from a ranking evaluation (its result, JSON, or JSON file) of the same users and candidates."""
    source = ranks if isinstance(ranks, (str, Path)) else "the ranking result"
    data = ranks.to_json() if isinstance(ranks, EvalResult) else _read_ranks(Path(ranks)) if isinstance(ranks, (str, Path)) else ranks
    per_user = data.get("per_user") if isinstance(data, dict) else None
    if not per_user or "hr@10" not in per_user or "user" not in per_user:
        raise UsageError(f"{source} holds no per-user ranks", hint="use a run's eval_<label>.json, or `ollama-slim eval MODEL --json --per-user`")
    settings, name = data.get("config", {}), data.get("data", {}).get("name")
    differ = [k for k in _SAME_CANDIDATES if settings.get(k) != getattr(config, k)] + (["data"] if name != dataset.name else [])
    if differ:
        raise UsageError(f"{source} ranked other candidates (different {', '.join(differ)})", hint="evaluate with the same --data, --split, --negatives, --regime, --history and --seed")
    hr10 = dict(zip(per_user["user"], per_user["hr@10"]))
    missing = [u for u in users if u not in hr10]
    if missing:
        raise UsageError(f"{source} lacks users of this measure ({len(missing)} of {len(users)})", hint="evaluate the ranking with the same --users and --seed")
    return np.array([hr10[u] for u in users], dtype=np.float64)


def pick_examples(rows: list[dict[str, Any]], turns: list[Turn], n: int) -> list[dict[str, Any]]:
    """``n`` conversations, the first of each phrasing first (in user order)."""
    firsts = {}
    for i, turn in enumerate(turns):
        firsts.setdefault(turn.phrasing, i)
    order = sorted(firsts.values()) + [i for i in range(len(turns)) if i not in firsts.values()]
    keys = ("user", "phrasing", "answer", "match", "title", "new_title", "target", "listed", "target_title")
    return [{"message": turns[i].message, **{k: rows[i][k] for k in keys}} for i in order[:n]]


def verdict(example: dict[str, Any]) -> str:
    """What an example conversation's answer was, in words: the title it names (the target, or one the
    user listed), or that it names none."""
    if not example["match"]:
        return "no catalogue title"
    return f"{example['match']!r}" + (" (the target)" if example["target"] else " (listed by the user)" if example["listed"] else "")


def _figures(rows: list[dict[str, Any]], top10: np.ndarray | None, config: EvalConfig) -> dict[str, Interval]:
    values = {name: np.array([float(r[name]) for r in rows]) for name in FIGURES[:3]}
    if top10 is not None:
        values["target_or_top10"] = np.maximum(values["target"], top10)
        for row, value in zip(rows, values["target_or_top10"]):
            row["target_or_top10"] = float(value)
    return {k: bootstrap_interval(v, resamples=config.resamples, seed=config.seed) for k, v in values.items()}


def _diversity(turns: list[Turn], matches: list[TitleMatch], rows: list[dict[str, Any]]) -> tuple[float, float, tuple[str, int]]:
    """Distinct answers per user, distinct catalogue titles not listed per user, and the most
    common answer (as first given) with its count."""
    if not turns:
        return float("nan"), float("nan"), ("", 0)
    counts = Counter(m.label for m in matches)
    label, count = counts.most_common(1)[0]
    first = next(t.answer for t, m in zip(turns, matches) if m.label == label)
    titles = {m.label for m, row in zip(matches, rows) if row["new_title"]}
    return len(counts) / len(turns), len(titles) / len(turns), (first, count)


# --------------------------------------------------------------------------- the measure


def evaluate_generation(model: str | Path, config: GenerationConfig, *, ranks: EvalResult | dict[str, Any] | str | Path | None = None,
                        dataset: Dataset | None = None, answerer: Answerer | None = None, progress: Progress | None = None) -> GenerationResult:
    """Ask ``model`` (a run directory, ``.gguf`` file, ``hf.co/`` ref or Ollama tag) every test user's question.

    ``ranks``: a ranking evaluation of the same model, users and candidates, for ``target_or_top10``.
    ``answerer``: answers in place of llama.cpp on the model's GGUF (whose chat format is still used).
    With ``config.cases.run_dir``, the result is also written there as ``generation_<label>.json``.
    """
    dataset = dataset if dataset is not None else load_dataset(config.cases.data)
    cases = prepare_cases(dataset, config.cases)
    users = [c.example.user for c in cases]
    gguf = model_gguf(model)
    chat = chat_format(gguf=gguf, modelfile=config.modelfile, system=SYSTEM_PROMPT)
    top10 = ranked_top10(ranks, users=users, dataset=dataset, config=config.cases) if ranks is not None else None
    own = answerer is None
    answerer = GreedyChat(gguf, context=config.context, threads=config.cases.threads) if own else answerer
    try:
        start = time.perf_counter()
        turns = ask(answerer, chat, dataset, cases, config, progress=progress)
        seconds = time.perf_counter() - start
    finally:
        if own:
            answerer.close()
    rows, matches = judge(dataset, cases, turns, config.cases)
    distinct, distinct_titles, top = _diversity(turns, matches, rows)
    result = GenerationResult(
        model=str(model), gguf=str(gguf), chat=chat, config=config, data=dataset.summary(), users=users,
        figures=_figures(rows, top10, config.cases), distinct=distinct, distinct_titles=distinct_titles, top_answer=top, per_user=rows,
        examples=pick_examples(rows, turns, config.examples), tokens=sum(t.tokens for t in turns), seconds=seconds,
    )
    if config.cases.run_dir is not None:
        paths.write_json(RunLayout(Path(config.cases.run_dir)).generation_record(config.cases.label), result.to_json())
    return result


__all__ = ["FIGURES", "Answerer", "CachedAnswers", "GenerationConfig", "GenerationResult", "Turn", "ask", "evaluate_generation", "judge", "model_gguf", "ranked_top10", "verdict"]
