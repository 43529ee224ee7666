"""Ollama's Go templates rendered in Python: the shipped families equal their Jinja chat templates,
Ollama's message semantics (system messages inside .Messages, legacy .Prompt templates), and the subset."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_slim.ollama.chat import Message, chat_messages, render_prompt
from ollama_slim.ollama.gotemplate import GoTemplateError, identifiers, parse, render_text
from ollama_slim.ollama.modelfile import chat_family

# Meta-Llama-3-Instruct's chat template, without the BOS text (Ollama adds BOS when tokenising)
LLAMA3_JINJA = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CONVERSATIONS = {
    "user": [("user", "Which movie next?")],
    "system-user": [("system", "You are a recommender."), ("user", "I watched Heat (1995).\nWhat next?")],
    "system-user-assistant-user": [("system", "S"), ("user", "U1"), ("assistant", "A1"), ("user", "U2")],
}


def _jinja(tokenizer_dir: Path, conversation: list[tuple[str, str]], template: str | None = None) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    messages = [{"role": r, "content": c} for r, c in conversation]
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("family", ["chatml", "llama3"])
def test_shipped_templates_render_as_their_jinja_chat_templates(tiny_tokenizer_dir: Path, family: str, name: str) -> None:
    conversation = CONVERSATIONS[name]
    expected = _jinja(tiny_tokenizer_dir, conversation, None if family == "chatml" else LLAMA3_JINJA)
    got = render_prompt(chat_family(family).template, [Message(r, c) for r, c in conversation])
    assert got == expected


def test_the_system_prompt_appears_once_as_ollama_run_sends_it() -> None:
    prompt = render_prompt(chat_family("chatml").template, chat_messages("Hi", system="Be brief."))
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # Ollama passes the system message inside .Messages as well as in .System: printing both doubles it
    doubled = "{{ if .System }}[sys {{ .System }}]{{ end }}{{ range .Messages }}[{{ .Role }}: {{ .Content }}]{{ end }}"
    assert render_prompt(doubled, chat_messages("Hi", system="S")) == "[sys S][system: S][user: Hi]"


def test_consecutive_messages_of_a_role_are_joined() -> None:
    messages = [Message("system", "A"), Message("system", "B"), Message("user", "x"), Message("user", "y")]
    assert render_prompt("{{ .System }}|{{ range .Messages }}<{{ .Role }}:{{ .Content }}>{{ end }}", messages) == "A\n\nB|<system:A\n\nB><user:x\n\ny>"


def test_legacy_prompt_templates_run_once_per_turn_and_stop_at_the_response() -> None:
    legacy = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
    one = render_prompt(legacy, chat_messages("Hi", system="S"))
    assert one == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    turns = [Message("system", "S"), Message("user", "U1"), Message("assistant", "A1"), Message("user", "U2")]
    assert render_prompt("{{ .System }}|{{ .Prompt }}", turns) == "S|U1A1|U2"  # Ollama appends {{ .Response }} to such a template


def test_the_subset_chat_templates_use() -> None:
    template = """{{- /* a comment */ -}}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}U({{ .Content }}){{ else if eq .Role "assistant" }}A({{ .Content }}){{ else }}{{ printf "%s!" .Role }}{{ end }}
{{- if and $last (ne .Role "assistant") }}<last {{ $i }}>{{ end }}
{{- end }}{{ with .Tools }}tools{{ else }} no tools{{ end }} {{ json .Meta }} {{ .Missing }} {{ not .Tools }}"""
    data = {"Messages": [Message("system", "s"), Message("user", "a<b"), Message("assistant", "c")] + [Message("user", "d")], "Tools": [], "Meta": {"k": "<v>"}}
    assert render_text(template, data) == 'system!U(a<b)A(c)U(d)<last 3> no tools {"k":"\\u003cv\\u003e"} <no value> true'
    assert {"messages", "role", "content", "tools", "$"} <= identifiers(parse(template))


@pytest.mark.parametrize(("template", "needle"), [
    ("{{ .Prompt ", "unclosed action"),
    ("{{ if .System }}x", "missing {{end}} for if"),
    ("{{ end }}", "unexpected {{end}}"),
    ("{{ frobnicate .Prompt }}", "function 'frobnicate' not defined"),
    ("{{ break }}", "outside {{range}}"),
    ("{{ range .Messages }}{{ .Nope }}{{ end }}", "can't evaluate field Nope"),
])
def test_what_go_refuses_is_one_clear_error(template: str, needle: str) -> None:
    with pytest.raises(GoTemplateError) as err:
        render_prompt(template, chat_messages("Hi", system=None))
    assert needle in err.value.one_line() and "\n" not in err.value.one_line()
