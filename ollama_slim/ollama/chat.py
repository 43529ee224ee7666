"""What ``ollama run NAME`` sends to a model, rebuilt locally, and greedy answers through llama.cpp.

Ollama's chat path (``server/routes.go`` ChatHandler, ``server/prompt.go``, ``template/template.go``):
the Modelfile's SYSTEM becomes a first system message unless the request starts with one;
messages are collated (consecutive messages of one role joined by a blank line, every system
message also joined into ``.System``); a template that uses ``.Messages`` runs once with
``.System``, ``.Messages`` (system messages included) and an empty ``.Response``; an older
``.Prompt``/``.Response`` template runs once per finished turn, and for the last turn with
everything after ``.Response`` cut off. The prompt is tokenised with the model's own special
tokens (a BOS where the GGUF asks for one) and with special-token text parsed; an answer ends
at an end-of-generation token or at the first stop string, which is cut off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ollama_slim.errors import SourceError, UsageError
from ollama_slim.ollama.gotemplate import Block, Pipe, identifiers, parse, render
from ollama_slim.ollama.modelfile import chat_for, modelfile_path_for, read_modelfile

_RESPONSE = ("out", Pipe(((("field", ("Response",)),),)))


@dataclass(frozen=True)
class Message:
    """Ollama's ``api.Message`` as a template sees it (a struct: ``.Role``, ``.Content``...)."""

    Role: str
    Content: str
    Thinking: str = ""
    Images: tuple = ()
    ToolCalls: tuple = ()
    ToolName: str = ""
    ToolCallID: str = ""


def chat_messages(user: str, *, system: str | None) -> list[Message]:
    """The messages of one ``ollama run`` turn: the Modelfile's SYSTEM (if any), then the user's text."""
    head = [Message("system", system)] if system else []
    return [*head, Message("user", user)]


def collate(messages: list[Message]) -> tuple[str, list[Message]]:
    """``(.System, .Messages)``: every system message joined, consecutive same-role messages merged."""
    system = [m.Content for m in messages if m.Role == "system"]
    merged: list[Message] = []
    for m in messages:
        if merged and merged[-1].Role == m.Role and m.Role != "tool":
            last = merged[-1]
            merged[-1] = Message(**{**vars(last), "Content": f"{last.Content}\n\n{m.Content}"})
        else:
            merged.append(m)
    return "\n\n".join(system), merged


def render_prompt(template: str, messages: list[Message]) -> str:
    """The prompt Ollama builds from ``template`` (its Go ``TEMPLATE``) and a chat's ``messages``."""
    tree = parse(template)
    names = identifiers(tree)
    system, merged = collate(messages)
    if "messages" in names or "document" in names:
        return render(tree, {"System": system, "Messages": merged, "Tools": [], "Response": "", "Think": False, "IsThinkSet": False})
    if "response" not in names:
        tree = [*tree, _RESPONSE]  # Ollama's Parse appends {{ .Response }} to such a template
    return _legacy(tree, merged)


def _legacy(tree: list, messages: list[Message]) -> str:
    """A ``.Prompt``/``.Response`` template: once per finished turn, then the open turn cut after ``.Response``."""
    parts: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def run(nodes: list) -> None:
        parts.append(render(nodes, {**turn, "Think": False, "IsThinkSet": False}))
        turn.update(System="", Prompt="", Response="")

    for m in messages:
        if (m.Role == "system" and (turn["Prompt"] or turn["Response"])) or (m.Role == "user" and turn["Response"]):
            run(tree)
        key = {"system": "System", "user": "Prompt", "assistant": "Response"}.get(m.Role)
        if key:
            turn[key] = m.Content
    run(_cut_after_response(tree, [False]))
    return "".join(parts)


def _uses_response(pipe: Pipe) -> bool:
    for cmd in pipe.cmds:
        for op in cmd:
            if (op[0] == "field" and "Response" in op[1]) or (op[0] == "paren" and _uses_response(op[1])):
                return True
    return False


def _cut_after_response(nodes: list, cut: list[bool]) -> list:
    """``nodes`` up to and including the first output of ``.Response`` (in document order); the rest dropped."""
    kept = []
    for node in nodes:
        if cut[0]:
            break
        if isinstance(node, Block):
            branches = [(pipe, [] if cut[0] else _cut_after_response(body, cut)) for pipe, body in node.branches]
            node = Block(node.kind, branches, [] if cut[0] else _cut_after_response(node.otherwise, cut))
        elif isinstance(node, tuple) and node[0] == "out" and _uses_response(node[1]):
            cut[0] = True
        kept.append(node)
    return kept


# --------------------------------------------------------------------------- the shipped chat format


@dataclass(frozen=True)
class ChatFormat:
    """A model's Ollama ``TEMPLATE``, ``SYSTEM`` and stop strings, and where they were read."""

    template: str
    system: str | None
    stops: tuple[str, ...]
    source: str

    def prompt(self, user: str) -> str:
        """The prompt ``ollama run`` sends for one user message."""
        return render_prompt(self.template, chat_messages(user, system=self.system))


def chat_format(*, gguf: Path, modelfile: Path | None = None, system: str | None = None) -> ChatFormat:
    """The chat format of ``gguf``: from ``modelfile``, else the Modelfile beside it (a run's
    ``Modelfile``), else the template family :func:`chat_for` finds for the GGUF with ``system``."""
    path = Path(modelfile) if modelfile is not None else modelfile_path_for(Path(gguf))
    if modelfile is not None and not path.is_file():
        raise UsageError(f"Modelfile {path} does not exist", hint="pass the Modelfile of a run, e.g. runs/NAME/Modelfile")
    if path.is_file():
        spec = read_modelfile(path)
        template = spec.template or chat_for(gguf=Path(gguf)).template
        if template is None:
            raise UsageError(f"{path} has no TEMPLATE and none is known for {gguf}", hint="add a TEMPLATE to the Modelfile")
        return ChatFormat(template=template, system=spec.system, stops=spec.stops, source=str(path))
    found = chat_for(gguf=Path(gguf))
    if found.template is None:
        raise UsageError(f"no chat template is known for {gguf}", hint="pass --modelfile with a TEMPLATE (e.g. the Modelfile of a run)")
    return ChatFormat(template=found.template, system=system, stops=found.stops, source=found.source)


# --------------------------------------------------------------------------- greedy answers through llama.cpp


@dataclass(frozen=True)
class Completion:
    """One answer: its text (stop string cut off), tokens generated and in the prompt, and why it ended."""

    text: str
    tokens: int
    prompt_tokens: int
    done_reason: str  # "stop" (end-of-generation token or stop string) or "length"


class GreedyChat:
    """A GGUF in llama-cpp-python answering rendered prompts greedily (Ollama with temperature 0)."""

    def __init__(self, gguf: Path, *, context: int = 2048, threads: int | None = None) -> None:
        from llama_cpp import Llama

        n = threads or os.cpu_count() or 1
        try:
            self.llm = Llama(model_path=str(gguf), n_ctx=context, n_batch=512, n_threads=n, n_threads_batch=n, seed=0, verbose=False)
        except (ValueError, RuntimeError) as err:
            raise SourceError(f"llama.cpp cannot load {gguf} ({str(err).splitlines()[0] if str(err) else type(err).__name__})", hint="check that the file is a complete GGUF of a supported architecture") from None
        self.context = context

    def _is_end(self, token: int) -> bool:
        import llama_cpp

        model = getattr(self.llm, "_model", None)
        if model is not None and hasattr(llama_cpp, "llama_vocab_is_eog"):
            return bool(llama_cpp.llama_vocab_is_eog(model.vocab, token))
        return token == self.llm.token_eos()

    def complete(self, prompt: str, *, max_tokens: int, stops: tuple[str, ...] = ()) -> Completion:
        """The greedy answer to ``prompt`` (the rendered template), at most ``max_tokens`` tokens."""
        llm = self.llm
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if len(ids) + max_tokens > self.context:
            raise UsageError(f"a prompt of {len(ids)} tokens and {max_tokens} answer tokens exceed the context of {self.context}", hint="lower --history")
        llm.reset()
        llm.eval(ids)
        out, count = b"", 0
        while count < max_tokens:
            token = llm.sample(temp=0.0)
            count += 1
            if self._is_end(token):
                return Completion(out.decode("utf-8", "replace"), count, len(ids), "stop")
            out += llm.detokenize([token], special=True)
            text = out.decode("utf-8", "ignore")
            hits = [text.find(s) for s in stops if s and s in text]
            if hits:
                return Completion(text[: min(hits)], count, len(ids), "stop")
            llm.eval([token])
        return Completion(out.decode("utf-8", "replace"), count, len(ids), "length")

    def close(self) -> None:
        self.llm.close()
