"""Ollama Modelfiles: a reader that follows Ollama's own parser, and a lossless writer.

Ollama's rules (``parser/parser.go``): an instruction name (case-insensitive) and a
space, then a value that ends at the first line break where the value read so far is
complete: bare (one line), ``"quoted"`` or ``\"\"\"triple-quoted\"\"\"`` (both may span
lines). There are no escapes; surrounding whitespace is trimmed; characters that are not
printable (other than space, tab and line breaks) are dropped. ``#`` at the start of an
instruction opens a comment. The writer picks, for every value, the first form that the
reader gives back unchanged, so paths with spaces or quotes and metadata containing
``\"\"\"`` never break a Modelfile.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_slim.tables import table
from ollama_slim import paths
from ollama_slim.errors import ExportError, OllamaError, SlimError, UsageError
from ollama_slim.ollama.api import ApiOptions
from ollama_slim.pipeline.layout import RunLayout

INSTRUCTIONS = frozenset(
    {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message", "requires"}
)
MESSAGE_ROLES = frozenset({"system", "user", "assistant"})
_LINE_BREAKS = "\r\n"
_BLANKS = " \t"


@dataclass(frozen=True)
class Command:
    """One instruction as Ollama reads it: ``FROM`` is named ``model``, a ``PARAMETER`` by its key."""

    name: str
    args: str


@dataclass(frozen=True)
class ModelfileSpec:
    """What ollama-slim writes into a Modelfile."""

    from_: str
    template: str | None = None
    stops: tuple[str, ...] = ()
    system: str | None = None
    license: str | None = None
    parameters: tuple[tuple[str, str], ...] = ()  # other PARAMETERs, in order
    comments: tuple[str, ...] = field(default=(), compare=False)  # header lines, not read back


class ModelfileSyntaxError(ExportError):
    """A Modelfile that Ollama's parser would refuse."""


# --------------------------------------------------------------------------- reading


def is_printable(ch: str) -> bool:
    """Go's ``strconv.IsPrint``: letters, marks, numbers, punctuation, symbols, ASCII space."""
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"


def unquote(text: str) -> tuple[str, bool]:
    """``(value, complete)`` of a trimmed value: triple quotes first, then double quotes."""
    if text.startswith('"""'):
        if len(text) >= 6 and text.endswith('"""'):
            return text[3:-3], True
        return "", False
    if text.startswith('"'):
        if len(text) >= 2 and text.endswith('"'):
            return text[1:-1], True
        return "", False
    return text, True


def _next_state(state: str, ch: str, line: int) -> tuple[str, str | None]:
    """The state after ``ch`` and the character to keep (None: keep nothing)."""
    blank, brk = ch in _BLANKS, ch in _LINE_BREAKS
    if state == "nil":
        if ch == "#":
            return "comment", None
        return ("nil", None) if blank or brk else ("name", ch)
    if state == "comment":
        return ("nil", None) if brk else ("comment", None)
    if state == "value":
        return ("nil", ch) if blank or brk else ("value", ch)
    allowed = {"name": str.isalpha, "message": str.isalpha, "parameter": lambda c: c.isalnum() or c == "_"}[state]
    if ch.isascii() and allowed(ch):
        return state, ch
    if blank:
        return "value", None
    what = "instruction" if state == "name" else state
    raise ModelfileSyntaxError(f"Modelfile line {line}: unexpected {ch!r} in the {what} name", hint="instructions are FROM, TEMPLATE, PARAMETER, SYSTEM, LICENSE, MESSAGE...")


@dataclass
class _Reader:
    """Ollama's Modelfile state machine, one character at a time."""

    commands: list[Command] = field(default_factory=list)
    state: str = "nil"
    buf: list[str] = field(default_factory=list)
    name: str = ""
    role: str = ""
    line: int = 1

    def feed(self, ch: str) -> None:
        if ch in _LINE_BREAKS:
            self.line += 1
        nxt, keep = _next_state(self.state, ch, self.line)
        if nxt != self.state:
            if self.state == "value" and not self._end_value(ch):
                self.buf.append(ch)  # a blank, or a line break inside an open quote
                return
            nxt = self._leave(nxt)
            self.buf = []
            self.state = nxt
        if keep is not None and is_printable(keep):
            self.buf.append(keep)

    def _leave(self, nxt: str) -> str:
        word = "".join(self.buf)
        if self.state == "name":
            lower = word.lower()
            if lower not in INSTRUCTIONS:
                raise ModelfileSyntaxError(f"Modelfile line {self.line}: unknown instruction {word!r}", hint=f"use one of {', '.join(sorted(i.upper() for i in INSTRUCTIONS))}")
            self.name = "model" if lower == "from" else lower
            return {"parameter": "parameter", "message": "message"}.get(lower, nxt)
        if self.state == "parameter":
            self.name = word
        elif self.state == "message":
            if word not in MESSAGE_ROLES:
                raise ModelfileSyntaxError(f"Modelfile line {self.line}: message role {word!r}", hint='roles are "system", "user" or "assistant"')
            self.role = word
        return nxt

    def _end_value(self, ch: str) -> bool:
        """At a blank or line break inside a value: store it and return True if it ends here."""
        value, complete = unquote("".join(self.buf).strip(_BLANKS + _LINE_BREAKS))
        if not complete or ch in _BLANKS:
            return False
        self._store(value)
        return True

    def _store(self, value: str) -> None:
        if self.role:
            value, self.role = f"{self.role}: {value}", ""
        self.commands.append(Command(self.name, value))

    def finish(self) -> list[Command]:
        if self.state == "value":
            value, complete = unquote("".join(self.buf).strip(_BLANKS + _LINE_BREAKS))
            if not complete:
                raise ModelfileSyntaxError("Modelfile ends inside a quoted value", hint='close the "..." or """...""" string')
            self._store(value)
        elif self.state not in ("nil", "comment"):
            raise ModelfileSyntaxError(f"Modelfile ends inside the instruction on line {self.line}", hint="give the instruction a value")
        if not any(c.name == "model" for c in self.commands):
            raise ModelfileSyntaxError("Modelfile has no FROM line", hint="add FROM ./model.gguf")
        return self.commands


def parse_modelfile(text: str) -> list[Command]:
    """The instructions of a Modelfile, read exactly as Ollama's parser reads them."""
    reader = _Reader()
    for ch in text.removeprefix("\ufeff"):
        reader.feed(ch)
    return reader.finish()


def spec_from_commands(commands: list[Command]) -> ModelfileSpec:
    """Gather parsed instructions into a :class:`ModelfileSpec` (the last of a kind wins)."""
    values: dict[str, str] = {}
    stops: list[str] = []
    params: list[tuple[str, str]] = []
    for cmd in commands:
        if cmd.name in ("model", "template", "system", "license"):
            values[cmd.name] = cmd.args
        elif cmd.name == "stop":
            stops.append(cmd.args)
        elif cmd.name not in INSTRUCTIONS:
            params.append((cmd.name, cmd.args))
    return ModelfileSpec(
        from_=values["model"], template=values.get("template"), stops=tuple(stops),
        system=values.get("system"), license=values.get("license"), parameters=tuple(params),
    )


def read_modelfile(path: str | Path) -> ModelfileSpec:
    """Parse the Modelfile at ``path``; a clear error names the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ExportError(f"cannot read Modelfile {path} ({type(err).__name__})", hint="delete it to have `ollama-slim register` write it again") from None
    try:
        return spec_from_commands(parse_modelfile(text))
    except ModelfileSyntaxError as err:
        raise ModelfileSyntaxError(f"{path}: {err.message}", hint=err.hint) from None


# --------------------------------------------------------------------------- writing


_FORMS = {"bare": "{}", "double": '"{}"', "triple": '"""{}"""'}


def quote_value(value: str, *, prefer: tuple[str, ...] = ("bare", "double", "triple")) -> str | None:
    """The first form in ``prefer`` (bare, ``"..."``, ``\"\"\"...\"\"\"``) that Ollama reads back as ``value``.

    None when no form carries it (a character Ollama drops, or a line ending in ``\"\"\"``
    inside a multi-line value).
    """
    if not all(is_printable(c) or c in _BLANKS + _LINE_BREAKS for c in value):
        return None
    for kind in prefer:
        if kind == "bare" and not value:
            continue
        form = _FORMS[kind].format(value)
        try:
            got = parse_modelfile(f"FROM x\nSYSTEM {form}\n")
        except ModelfileSyntaxError:
            continue
        if got == [Command("model", "x"), Command("system", value)]:
            return form
    return None


def carry_template(template: str) -> str:
    """``template`` itself when a Modelfile can carry it, else an equivalent Go template.

    Characters Ollama's parser would drop or that would end the string early (a ``"`` that
    ends a line) become Go string constants, ``{{ "\\"" }}``, which render the same text.
    """
    if quote_value(template) is not None:
        return template
    pieces: list[str] = []
    for i, ch in enumerate(template):
        rest = template[i + 1 :]
        ends_line = ch == '"' and (rest.lstrip(_BLANKS)[:1] in ("\r", "\n"))
        if ends_line:
            pieces.append('{{ "\\"" }}')
        elif is_printable(ch) or ch in _BLANKS + _LINE_BREAKS:
            pieces.append(ch)
        else:
            code = ord(ch)
            pieces.append(f'{{{{ "\\u{code:04x}" }}}}' if code <= 0xFFFF else f'{{{{ "\\U{code:08x}" }}}}')
    return "".join(pieces)


def _line(instruction: str, value: str, *, what: str, prefer: tuple[str, ...] = ("bare", "double", "triple")) -> str:
    quoted = quote_value(value, prefer=prefer)
    if quoted is None:
        raise ExportError(f"the {what} {value[:60]!r} cannot be written into a Modelfile", hint="it holds characters Ollama's Modelfile parser drops; remove them")
    return f"{instruction} {quoted}"


def _comment(text: str) -> str:
    flat = " ".join(text.split())  # a line break would end the comment and start an instruction
    return f"# {flat}" if flat else "#"


def render_modelfile(spec: ModelfileSpec) -> str:
    """The text of a Modelfile for ``spec``; parsing it gives ``spec`` back."""
    lines = [_comment(c) for c in spec.comments]
    lines.append(_line("FROM", spec.from_, what="model path"))
    if spec.template is not None:
        lines.append(_line("TEMPLATE", carry_template(spec.template), what="template", prefer=("triple", "double", "bare")))
    if spec.system is not None:
        lines.append(_line("SYSTEM", spec.system, what="system prompt", prefer=("triple", "double", "bare")))
    if spec.license is not None:
        lines.append(_line("LICENSE", spec.license, what="licence", prefer=("triple", "double", "bare")))
    for stop in spec.stops:
        lines.append(_line("PARAMETER stop", stop, what="stop token", prefer=("double", "triple", "bare")))
    for key, value in spec.parameters:
        if not key or not all(c.isascii() and (c.isalnum() or c == "_") for c in key) or key == "stop":
            raise ExportError(f"parameter name {key!r} cannot be written into a Modelfile", hint="parameter names use letters, digits and '_'")
        lines.append(_line(f"PARAMETER {key}", value, what=f"parameter {key}", prefer=("bare", "double", "triple")))
    return "\n".join(lines) + "\n"


def write_modelfile(path: str | Path, spec: ModelfileSpec) -> Path:
    """Write ``spec`` to ``path`` atomically (rendered and checked before anything is written)."""
    return paths.write_text(path, render_modelfile(spec))


def from_reference(gguf: Path, modelfile: Path) -> str:
    """How a Modelfile at ``modelfile`` names ``gguf``: ``./name`` beside it, else absolute."""
    gguf, modelfile = Path(gguf).resolve(), Path(modelfile).resolve()
    if gguf.parent == modelfile.parent:
        return f"./{gguf.name}"
    return str(gguf)


def modelfile_path_for(gguf: Path) -> Path:
    """The Modelfile beside a GGUF: the run's ``Modelfile`` for a run's ``model.gguf``, else ``<stem>.Modelfile``."""
    gguf = Path(gguf)
    run = RunLayout(gguf.parent)
    return run.modelfile if gguf.name == run.gguf.name else gguf.with_name(f"{gguf.stem}.Modelfile")


# --------------------------------------------------------------------------- template and stops


@dataclass(frozen=True)
class ChatSpec:
    """The original model's Ollama ``TEMPLATE`` and stop tokens, and where they came from."""

    template: str | None
    stops: tuple[str, ...]
    source: str  # "ollama show NAME", "tag table (chatml)", "chat template (llama3)" or "none"


def _chat_families() -> dict[str, dict[str, Any]]:
    return table("chat_templates")


def chat_family(name: str, *, source: str | None = None) -> ChatSpec:
    """The chat-template family ``name`` of the tag table (``chatml``, ``llama3``...)."""
    row = _chat_families().get(name)
    if row is None:
        raise ExportError(f"unknown chat template family {name!r}", hint=f"known: {', '.join(sorted(_chat_families()))}")
    return ChatSpec(template=row["template"], stops=tuple(row["stop"]), source=source or f"tag table ({name})")


def chat_from_jinja(jinja: str) -> ChatSpec | None:
    """The family whose stop tokens all appear in a model's (Jinja) chat template, if one does."""
    for name, row in _chat_families().items():
        if row["stop"] and all(stop in jinja for stop in row["stop"]):
            return chat_family(name, source=f"chat template ({name})")
    return None


_GO_ESCAPE = re.compile(r'\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[abfnrtv\\"\'])')
_GO_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"', "'": "'"}


def go_unquote(literal: str) -> str:
    """A value as ``ollama show`` prints it (Go's ``%#v``): ``"<|im_end|>"`` -> ``<|im_end|>``."""
    if len(literal) < 2 or not (literal.startswith('"') and literal.endswith('"')):
        return literal
    return _GO_ESCAPE.sub(lambda m: _GO_SIMPLE.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), literal[1:-1])


def show_parameters(text: str | None) -> list[tuple[str, str]]:
    """``(key, value)`` pairs of the ``parameters`` text that ``/api/show`` returns."""
    pairs = []
    for line in (text or "").splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            pairs.append((key, go_unquote(value.strip())))
    return pairs


def chat_from_ollama(name: str, *, options: ApiOptions) -> ChatSpec | None:
    """The template and stops of ``name`` in the user's Ollama; None when absent or unreachable."""
    from ollama_slim.ollama.api import client, find_model, server_answers

    if not server_answers(options):
        return None
    try:
        shown = find_model(client(options), name, options=options)
    except OllamaError:  # an optional source: a refusal or a failure just skips it
        return None
    if shown is None or not shown.template:
        return None
    stops = tuple(v for k, v in show_parameters(shown.parameters) if k == "stop")
    return ChatSpec(template=shown.template, stops=stops, source=f"ollama show {name}")


def gguf_strings(gguf: Path) -> dict[str, str]:
    """The string metadata of a GGUF (chat template, licence, provenance...); {} if unreadable."""
    from ollama_slim.gguf.header import read_header

    header = read_header(gguf)
    return header.strings if header is not None else {}


def original_of(meta: dict[str, str]) -> tuple[str | None, str | None]:
    """``(original Ollama tag, chat family)`` recorded by ``ollama-slim export`` in a GGUF's metadata.

    The tag is None when the source was not an Ollama tag (a directory or a repo id).
    """
    try:
        source = json.loads(meta.get("ollama_slim.provenance", "{}")).get("source") or {}
    except (ValueError, AttributeError):
        source = {}
    tag = source.get("tag") or meta.get("ollama_slim.source")
    return (tag if tag and _is_ollama_name(tag) else None), source.get("chat")


def _is_ollama_name(text: str) -> bool:
    from ollama_slim.models.tags import parse_name

    if "/" in text and (text.startswith((".", "/", "~")) or Path(text).exists()):
        return False
    try:
        parse_name(text)
    except SlimError:
        return False
    return True


def chat_for(*, gguf: Path | None = None, original: str | None = None, chat: str | None = None, options: ApiOptions | None = None) -> ChatSpec:
    """Template and stops for a slim model, most faithful source first.

    An explicit family (``chat``), then ``ollama show`` of the original when it sits in the
    user's Ollama, then the tag table's family for the original, then the family that the
    GGUF's own chat template matches. With none of them, no TEMPLATE (Ollama then derives
    one from the GGUF itself).
    """
    meta = gguf_strings(gguf) if gguf is not None else {}
    recorded_tag, recorded_chat = original_of(meta)
    original = original or recorded_tag
    if chat:
        return chat_family(chat)
    if original and options is not None:
        shown = chat_from_ollama(original, options=options)
        if shown is not None:
            return shown
    entry = _tag_entry(original) if original else None
    family = (entry.chat if entry else None) or recorded_chat
    if family in _chat_families():
        return chat_family(family)
    return chat_from_jinja(meta.get("tokenizer.chat_template", "")) or _architecture_chat(meta.get("general.architecture")) or ChatSpec(template=None, stops=(), source="none")


def _architecture_chat(arch: str | None) -> ChatSpec | None:
    """The chat family the family table gives a GGUF architecture (gemma3: gemma), for GGUFs that carry no template."""
    from ollama_slim.models.families import by_gguf_arch, family

    name = by_gguf_arch().get(arch or "")
    chat = family(name).chat if name else ""
    return chat_family(chat, source=f"family table ({chat})") if chat in _chat_families() else None


def _tag_entry(ref: str) -> Any:
    from ollama_slim.models.tags import lookup, parse_name

    try:
        return lookup(parse_name(ref))
    except SlimError:
        return None


def modelfile_spec_for(gguf: Path, *, chat: ChatSpec, out: Path, system: str | None = None, license_text: str | None = None) -> ModelfileSpec:
    """The Modelfile contents for ``gguf`` written at ``out``: FROM, TEMPLATE, SYSTEM, stops, licence.

    ``license_text``: the original's licence (its text or notice); default: the GGUF's
    ``general.license`` id.
    """
    gguf = Path(gguf)
    meta = gguf_strings(gguf)
    licence = license_text if license_text is not None else meta.get("general.license")
    comments = [f"Modelfile for {gguf.name}, written by ollama-slim", f"template and stop tokens from: {chat.source}"]
    if meta.get("general.name"):
        comments.append(f"model: {meta['general.name']}")
    if licence is not None and quote_value(licence) is None:
        comments.append("licence: see general.license in the GGUF (it cannot be carried by a Modelfile)")
        licence = None
    return ModelfileSpec(from_=from_reference(gguf, out), template=chat.template, stops=chat.stops, system=system, license=licence, comments=tuple(comments))


def write_modelfile_for(gguf: Path, *, chat: ChatSpec, out: Path | None = None, system: str | None = None, license_text: str | None = None) -> Path:
    """Write the Modelfile of ``gguf`` (beside it unless ``out``); ``ollama create -f`` takes it as is."""
    out = Path(out) if out else modelfile_path_for(gguf)
    return write_modelfile(out, modelfile_spec_for(gguf, chat=chat, out=out, system=system, license_text=license_text))


def chat_prompt_of(model: str | Path, *, seed: int = 0) -> Any:
    """The chat task format of ``model`` (:class:`~ollama_slim.recsys.prompt.ChatPrompt`): the
    TEMPLATE ``ollama run`` uses for it and the end of an answer's turn. ``model``: a GGUF (its
    Modelfile, else :func:`chat_for`), a model directory (its original's chat family, else its
    own chat template, else its family's), or an Ollama tag (the tag table's family). A clear
    error when none is known."""
    from ollama_slim.recsys.prompt import ChatPrompt, end_of_turn

    spec = _chat_spec_of(str(model))
    if spec is None or spec.template is None:
        raise UsageError(f"no chat template is known for {model}", hint="use a model with a chat template, or --task-format completion")
    return ChatPrompt(template=spec.template, end=end_of_turn(spec.template, spec.stops), seed=seed)


def _chat_spec_of(ref: str) -> ChatSpec | None:
    from ollama_slim.slimming.build import read_provenance

    if ref.endswith(".gguf") and Path(ref).is_file():
        from ollama_slim.ollama.chat import chat_format

        try:
            found = chat_format(gguf=Path(ref))
        except SlimError:
            return None
        return ChatSpec(template=found.template, stops=found.stops, source=found.source)
    if not Path(ref).is_dir():
        return chat_for(original=ref)
    source = read_provenance(ref).get("source") or {}
    spec = chat_for(original=source.get("tag"), chat=source.get("chat") if source.get("chat") in _chat_families() else None)
    jinja = Path(ref) / "chat_template.jinja"
    if spec.template is None and jinja.is_file():
        spec = chat_from_jinja(jinja.read_text(encoding="utf-8")) or spec
    config = Path(ref) / "config.json"
    if spec.template is None and config.is_file():
        from ollama_slim.models.families import family

        chat = family(json.loads(config.read_text(encoding="utf-8")).get("model_type", "?")).chat
        spec = chat_family(chat) if chat in _chat_families() else spec
    return spec
