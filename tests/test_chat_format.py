"""The chat task format (issue 11, point 0): healing, scoring and evaluation ask the model
what `ollama run` asks it, and the answer is the title closed by the template's end-of-turn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ollama_slim.errors import UsageError
from ollama_slim.ollama.chat import ChatFormat
from ollama_slim.ollama.modelfile import chat_family, chat_prompt_of
from ollama_slim.recsys.data import examples, load_dataset, select_users
from ollama_slim.recsys.phrasings import TRAIN_PHRASINGS
from ollama_slim.recsys.titles import answer_title
from ollama_slim.recsys.prompt import SYSTEM_PROMPT, ChatPrompt, PromptConfig, chat_prompt_text, encode_items, end_of_turn


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from toy_data import write_toy_data

    return write_toy_data(tmp_path_factory.mktemp("toy"))


@pytest.mark.parametrize(("family", "end"), [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>"), ("gemma", "<end_of_turn>")])
def test_end_of_turn_is_what_the_template_writes_after_an_answer(family: str, end: str) -> None:
    spec = chat_family(family)
    assert end_of_turn(spec.template, spec.stops) == end


def _examples(data: Path, n: int = 6):
    dataset = load_dataset(str(data))
    return dataset, list(examples(dataset, split="train", history=5, users=select_users(dataset, n, seed=0), last_only=True))


def test_chat_prompt_is_what_ollama_run_sends_and_the_answer_ends_the_turn(tiny_llama: Path, toy_data: Path) -> None:
    from ollama_slim.models.modeling import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama)
    template = chat_family("chatml").template
    config = PromptConfig(history=5, title_words=10, chat=ChatPrompt(template=template, end="<|im_end|>"))
    dataset, items = _examples(toy_data)
    shipped = ChatFormat(template=template, system=SYSTEM_PROMPT, stops=(), source="test")
    wordings = set()
    for example in items:
        text = chat_prompt_text(dataset, example, config)
        user = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        assert text == shipped.prompt(user) and text.endswith("<|im_start|>assistant\n")
        wordings.add(user.split(":")[0][:12])
        prompt, (target, other) = encode_items(tokenizer, dataset, example, (example.target, example.history[-1]), config)
        assert prompt == tokenizer(text, add_special_tokens=True)["input_ids"]
        end = tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
        assert target[-len(end):] == end and other[-len(end):] == end
        assert tokenizer.decode(target[: -len(end)]) == " ".join(answer_title(dataset.title(example.target)).split()[:10])
    assert len(wordings) > 1  # several phrasings, drawn per user
    again = chat_prompt_text(dataset, items[0], config)
    assert again == chat_prompt_text(dataset, items[0], config)  # the draw is seeded
    assert config.chat.phrasings == TRAIN_PHRASINGS


def test_completion_format_is_unchanged(tiny_llama: Path, toy_data: Path) -> None:
    from ollama_slim.models.modeling import load_tokenizer
    from ollama_slim.recsys.prompt import candidate_text, encode_candidates, encode_prompt, prompt_text

    tokenizer = load_tokenizer(tiny_llama)
    config = PromptConfig(history=5, title_words=10)
    dataset, items = _examples(toy_data)
    for example in items:
        prompt, cands = encode_items(tokenizer, dataset, example, (example.target,), config)
        assert prompt == encode_prompt(tokenizer, prompt_text(dataset, example, config))
        assert cands == encode_candidates(tokenizer, [candidate_text(dataset, example.target, config)], config)


def test_chat_format_of_a_model_directory_and_a_tag(tiny_llama: Path) -> None:
    own = chat_prompt_of(tiny_llama)  # the tokenizer's own chat template (chatml)
    assert "<|im_start|>" in own.template and own.end == "<|im_end|>"
    gemma = chat_prompt_of("gemma3:270m")  # the tag table's family
    assert "<start_of_turn>" in gemma.template and gemma.end == "<end_of_turn>"
    assert chat_prompt_of("llama3.2:1b").end == "<|eot_id|>"
    with pytest.raises(UsageError, match="no chat template is known"):
        chat_prompt_of("not-a-known-model")


def test_finetune_in_the_chat_format_trains_on_the_rendered_prompt(tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    from ollama_slim.slimming import finetune as ft

    config = ft.FinetuneConfig(model=str(tiny_llama), data=str(toy_data), out_dir=tmp_path / "chat", steps=3, lora_rank=4, lr=5e-3, batch_size=4,
                               checkpoint_every=3, seed=1, task_format="chat")
    chat = ft.finetune(config)
    plain = ft.finetune(ft.FinetuneConfig(**{**config.__dict__, "out_dir": tmp_path / "plain", "task_format": "completion"}))
    assert chat.losses != plain.losses  # another prompt, another loss
    record = json.loads((tmp_path / "chat" / "slim.json").read_text())
    assert record["finetune"]["config"]["task_format"] == "chat" and "chat_template" not in record["finetune"]["config"]
    with pytest.raises(UsageError, match="task-format"):
        ft.check_config(ft.FinetuneConfig(model="x", data="y", steps=1, task_format="dialogue"))


def test_ranking_in_the_chat_format(tiny_llama: Path, toy_data: Path) -> None:
    from ollama_slim.recsys.evaluate import EvalConfig, evaluate

    chat = evaluate(str(tiny_llama), EvalConfig(data=str(toy_data), users=6, negatives=4, history=3, task_format="chat", resamples=50))
    plain = evaluate(str(tiny_llama), EvalConfig(data=str(toy_data), users=6, negatives=4, history=3, resamples=50))
    assert chat.tokens > plain.tokens  # the template, the system message and the end-of-turn are scored too
    assert chat.config.task_format == "chat"


def test_prune_in_the_chat_format_end_to_end(tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    """score, select, heal and rank in the chat prompt; the shipped GGUF is ranked the same way through llama.cpp."""
    from click.testing import CliRunner

    from ollama_slim.cli import main

    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["prune", str(tiny_llama), "--keep", "3", "--data", str(toy_data), "--steps", "2", "--batch-size", "2",
                                       "--calib-users", "4", "--val-users", "4", "--eval-users", "4", "--bench-repeats", "1", "--task-format", "chat",
                                       "--no-register", "--no-reference", "--run-dir", str(run), "--bridge", "none", "--methods", "block-influence",
                                       "--full", "--answers", "3", "--popularity-debias", "0.5", "--cf-answers", "1", "--teacher", "none", "--rank-negatives", "0"])
    assert result.exit_code == 0, result.output
    finetune = json.loads((run / "healed" / "slim.json").read_text())["finetune"]["config"]
    assert finetune["task_format"] == "chat"
    assert (finetune["full"], finetune["answers"], finetune["popularity_debias"], finetune["cf_answers"]) == (True, 3, 0.5, 1)
    assert json.loads((run / "finetune.json").read_text())["mode"] == "full"
    report = (run / "report.md").read_text()
    assert "the target and the user's next 2 items weighted by train count^-0.5; and on the top 1 of an item-to-item recommender" in report
    assert "mode=full" in report and "lora_rank" not in report
    for label in ("original", "slim", "shipped"):
        record = json.loads((run / f"eval_{label}.json").read_text())
        assert record["config"]["task_format"] == "chat", label
    shipped, slim = (json.loads((run / f"eval_{label}.json").read_text())["tokens"] for label in ("shipped", "slim"))
    assert shipped == slim  # llama.cpp tokenizes the rendered chat prompt as transformers does


@pytest.mark.parametrize(("title", "spoken"), [("Usual Suspects, The (1995)", "Usual Suspects, The"), ("Seven (Se7en) (1995)", "Seven (Se7en)"),
                                              ("Toy Story (1995)", "Toy Story"), ("1941 (1979)", "1941"),
                                              ("Apple iPad (2012) case, black", "Apple iPad (2012) case, black"), ("Mies vailla menneisyytta", "Mies vailla menneisyytta")])
def test_chat_answers_name_the_title_without_its_year_and_still_match_it(title: str, spoken: str) -> None:
    from ollama_slim.recsys.titles import TitleIndex

    assert answer_title(title) == spoken
    assert TitleIndex({1: title}).match(spoken).items == {1}
    assert answer_title("(1995)") == "(1995)"  # a year alone stays: never an empty answer
