"""Generation-mode quality: exact figures with a scripted answerer, and a tiny random Llama GGUF end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ollama_slim.cli import main
from ollama_slim.errors import UsageError
from ollama_slim.gguf.export import ExportConfig, export_gguf
from ollama_slim.ollama.chat import Completion
from ollama_slim.ollama.modelfile import chat_family, write_modelfile_for
from ollama_slim.recsys.data import make_dataset
from ollama_slim.recsys.evaluate import EvalConfig, prepare_cases
from ollama_slim.recsys.generation import CachedAnswers, GenerationConfig, evaluate_generation
from ollama_slim.recsys.prompt import SYSTEM_PROMPT
from toy_data import write_toy_data


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """A run directory holding a tiny random Llama as ``model.gguf`` and its Modelfile (chatml, the task's SYSTEM)."""
    run = tmp_path_factory.mktemp("gen") / "run"
    run.mkdir()
    gguf = export_gguf(ExportConfig(model_dir=tiny_llama, outtype="f32", out=run / "model.gguf", check=False)).path
    write_modelfile_for(gguf, chat=chat_family("chatml"), system=SYSTEM_PROMPT)
    return run


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_data(tmp_path_factory.mktemp("toy") / "toy")


def _movies() -> "Dataset":  # noqa: F821
    """Eight users, each with 6 of 30 dated movie titles."""
    rng = np.random.default_rng(0)
    titles = {i: f"Movie {chr(65 + i % 26)}{i} ({1960 + i})" for i in range(30)}
    return make_dataset("ml-toy", {u: [int(i) for i in rng.choice(30, size=6, replace=False)] for u in range(8)}, titles)


class Scripted:
    """Answers from a list, in order, and keeps the prompts it was given."""

    def __init__(self, answers: list[str]) -> None:
        self.answers, self.prompts = list(answers), []

    def complete(self, prompt: str, *, max_tokens: int, stops: tuple[str, ...] = ()) -> Completion:
        self.prompts.append(prompt)
        return Completion(self.answers.pop(0), 3, 10, "stop")


def test_figures_of_scripted_answers(tiny_run: Path) -> None:
    data = _movies()
    cases_config = EvalConfig(data="ml-toy", users=6, negatives=5, history=4, resamples=200)
    cases = prepare_cases(data, cases_config)
    t = lambda i: data.title(i)  # noqa: E731
    shown = [c.example.history[-4:] for c in cases]
    other = next(i for i in data.titles if all(i not in s and i != c.example.target for s, c in zip(shown[4:], cases[4:])))
    name, year = t(cases[2].example.target).rsplit(" (", 1)
    answers = [
        t(cases[0].example.target),  # the target: a title, new
        t(shown[1][-1]),  # a title the user listed
        f"{name} ({int(year[:4]) + 1})",  # the target's name with a wrong year: no title
        "I think you would like something funny.",  # no title
        f"1. {t(other)}",  # a new title, not the target
        f'"{t(other)}"',  # the same answer again
    ]
    scripted = Scripted(answers)
    config = GenerationConfig(cases=cases_config, phrasings=("inline", "bullets"))
    ranks = {"config": cases_config.settings(), "data": {"name": "ml-toy"}, "per_user": {"user": [c.example.user for c in cases], "hr@10": [0, 1, 0, 0, 0.5, 0]}}
    result = evaluate_generation(tiny_run, config, dataset=data, answerer=scripted, ranks=ranks)
    means = {k: v.mean for k, v in result.figures.items()}
    assert means == pytest.approx({"title": 4 / 6, "new_title": 3 / 6, "target": 1 / 6, "target_or_top10": 2.5 / 6})
    assert result.distinct == pytest.approx(5 / 6) and result.top_answer == (answers[4], 2)
    assert result.distinct_titles == pytest.approx(2 / 6)  # the target and `other` (twice); not the listed title, not the non-titles
    assert [r["match"] for r in result.per_user] == [t(cases[0].example.target), t(shown[1][-1]), None, None, t(other), t(other)]
    assert all(v.low <= v.mean <= v.high for v in result.figures.values())
    message = scripted.prompts[0].split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
    assert scripted.prompts[0] == f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n"
    assert message.count("(19") == 4 and result.chat.source == str(tiny_run / "Modelfile")
    assert {r["phrasing"] for r in result.per_user} == {"inline", "bullets"} == {e["phrasing"] for e in result.examples[:2]}  # one of each first
    assert len(result.examples) == 3 and result.examples[0]["answer"] == answers[0] and result.examples[0]["target"]


def test_cached_answers_are_judged_afresh_and_asked_only_once(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache keeps answers, not figures: a rerun asks nothing and a changed title match changes the
    figures; an unseen prompt is asked; a GGUF written since empties it; an interrupted ask keeps what it got."""
    import ollama_slim.recsys.generation as generation

    data, gguf, path = _movies(), tiny_run / "model.gguf", tmp_path / "answers.json"
    config = GenerationConfig(cases=EvalConfig(data="ml-toy", users=4, negatives=5, history=4))
    cases = prepare_cases(data, config.cases)
    answers = [data.title(c.example.target) for c in cases]  # every answer the target
    made: list[Scripted] = []

    def make(replies: list[str]):
        def new() -> Scripted:
            made.append(Scripted(replies))
            return made[-1]
        return new

    def measure(replies: list[str], **kw) -> tuple[float, CachedAnswers]:
        with CachedAnswers(path, gguf, make(replies)) as cached:
            result = evaluate_generation(tiny_run, replace(config, **kw), dataset=data, answerer=cached)
        return result.figures["target"].mean, cached

    first, cached = measure(list(answers))
    assert (first, cached.asked, len(made)) == (1.0, 4, 1) and len(json.loads(path.read_text())["answers"]) == 4
    again, cached = measure([])  # nothing left to answer: every answer comes from the file
    assert (again, cached.asked, len(made)) == (1.0, 0, 1)
    monkeypatch.setattr(generation, "_verdict", lambda dataset, case, cfg, match: {"title": False, "new_title": False, "target": False, "listed": False, "match": None})
    assert measure([])[0] == 0.0  # the same answers, judged by another match
    monkeypatch.undo()
    more, cached = measure(["no idea"] * 4, max_tokens=16)  # other limits of the answer: asked anew
    assert (cached.asked, more) == (4, 0.0) and len(json.loads(path.read_text())["answers"]) == 8
    later = tmp_path / "later.gguf"
    later.write_bytes(gguf.read_bytes())
    with CachedAnswers(path, later, make([])) as fresh:
        assert fresh.answers == {}  # another file (or the same one written again): nothing carried over

    class Broken(Scripted):
        def complete(self, prompt: str, **kw) -> Completion:
            if len(self.prompts) == 2:
                raise KeyboardInterrupt
            return super().complete(prompt, **kw)

    path.unlink()
    with pytest.raises(KeyboardInterrupt), CachedAnswers(path, gguf, lambda: Broken(list(answers))) as cached:
        evaluate_generation(tiny_run, config, dataset=data, answerer=cached)
    assert len(json.loads(path.read_text())["answers"]) == 2  # resumes from the two it got


def test_ranks_of_other_candidates_are_refused(tiny_run: Path) -> None:
    data = _movies()
    cases_config = EvalConfig(data="ml-toy", users=3, negatives=5)
    ranks = {"config": {**cases_config.settings(), "negatives": 19}, "data": {"name": "ml-toy"}, "per_user": {"user": [], "hr@10": []}}
    with pytest.raises(UsageError, match=r"ranked other candidates \(different negatives\)"):
        evaluate_generation(tiny_run, GenerationConfig(cases=cases_config), dataset=data, answerer=Scripted([]), ranks=ranks)
    ranks = {"config": cases_config.settings(), "data": {"name": "ml-toy"}, "per_user": {"user": [], "hr@10": []}}
    with pytest.raises(UsageError, match=r"lacks users of this measure \(3 of 3\)"):
        evaluate_generation(tiny_run, GenerationConfig(cases=cases_config), dataset=data, answerer=Scripted([]), ranks=ranks)


def test_tiny_gguf_end_to_end_is_deterministic(tiny_run: Path, toy: Path) -> None:
    config = GenerationConfig(cases=EvalConfig(data=str(toy), users=6, resamples=100, threads=1), max_tokens=12)
    first, second = (evaluate_generation(tiny_run, config) for _ in range(2))
    assert first.to_json() == second.to_json()
    assert set(first.figures) == {"title", "new_title", "target"} and len(first.users) == 6
    assert all(0.0 <= v.low <= v.mean <= v.high <= 1.0 for v in first.figures.values()) and 0.0 < first.distinct <= 1.0
    assert first.figures["title"].mean <= 0.5  # a random model rarely names a title
    assert len(first.examples) == 3 and all(e["message"] and isinstance(e["answer"], str) for e in first.examples)
    assert 0 < first.tokens <= 6 * 12


def test_cli_generate_mode(tiny_run: Path, toy: Path) -> None:
    args = ["eval", str(tiny_run), "--data", str(toy), "--mode", "generate", "--users", "3", "--max-tokens", "6", "--threads", "1"]
    result = CliRunner().invoke(main, [*args, "--json", "--per-user", "--run-dir", str(tiny_run), "--label", "gen"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["users"] == 3 and len(out["per_user"]) == 3 and out["config"]["phrasings"] == ["inline", "enjoyed", "bullets"]
    assert json.loads((tiny_run / "generation_gen.json").read_text()) == out
    table = CliRunner().invoke(main, [*args, "--phrasings", "after"])
    assert table.exit_code == 0 and "a title not listed" in table.output, table.output
    bad = CliRunner().invoke(main, [*args, "--phrasings", "inline,magic"])
    assert bad.exit_code == 2 and "unknown phrasing 'magic'" in bad.output and len(bad.output.strip().splitlines()) == 1
    wrong = CliRunner().invoke(main, ["eval", str(tiny_run), "--data", str(toy), "--ranks", str(tiny_run / "Modelfile")])
    assert wrong.exit_code == 2 and "belong to --mode generate" in wrong.output
