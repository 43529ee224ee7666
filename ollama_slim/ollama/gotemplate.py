"""Go templates (``text/template``) as Ollama runs them: the subset chat templates use.

A template is parsed into a small tree and rendered against Python values. Supported:
text with ``{{- ``/`` -}}`` trimming and ``{{/* comments */}}``; ``.Field.Chain``, ``.``,
``$``, ``$x.Field``; variables (``$x := p``, ``$x = p``, ``range $i, $m := p``); ``if`` /
``else if`` / ``else``, ``range`` (with ``else``, ``break``, ``continue``), ``with``
(and ``else with``); string, raw-string, number, ``true``/``false``/``nil`` constants,
parentheses and pipes (``|``); the functions ``and or not eq ne lt le gt ge len index slice
print printf`` of Go and ``json currentDate yesterdayDate`` that Ollama adds.

Values: a ``dict`` is a Go map (a missing key is nil, printed ``<no value>``: Ollama parses
with ``missingkey=zero``); any other object is a struct, whose missing field is an error.
What Go would refuse, or this subset lacks, raises :class:`GoTemplateError`.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ollama_slim.errors import ExportError
from ollama_slim.ollama.modelfile import go_unquote

_BLANK = " \t\r\n"
_TOKEN = re.compile(
    r"""(?P<space>\s+)|(?P<str>"(?:[^"\\\n]|\\.)*")|(?P<raw>`[^`]*`)|(?P<decl>:=)|(?P<assign>=)
    |(?P<lp>\()|(?P<rp>\))|(?P<pipe>\|)|(?P<comma>,)
    |(?P<var>\$[A-Za-z0-9_]*)|(?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)|(?P<dot>\.)
    |(?P<num>-?\d+(?:\.\d+)?)|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)""",
    re.X,
)
_NO_VALUE = "<no value>"


class GoTemplateError(ExportError):
    """A template that Go's parser would refuse, or that uses what this renderer lacks."""


def _error(problem: str) -> GoTemplateError:
    return GoTemplateError(f"Ollama template: {problem}", hint="check the TEMPLATE of the Modelfile (Go text/template syntax)")


# --------------------------------------------------------------------------- tree


@dataclass(frozen=True)
class Pipe:
    """``[$a[, $b] (:=|=)] cmd | cmd ...``; each command a tuple of operands."""

    cmds: tuple[tuple[tuple, ...], ...]
    names: tuple[str, ...] = ()
    assign: bool = False  # ``=`` (else ``:=``) when ``names`` is set


@dataclass
class Block:
    """``if``/``with`` (branches tried in order) or ``range``; ``otherwise`` is the ``else`` list."""

    kind: str
    branches: list[tuple[Pipe, list]] = field(default_factory=list)
    otherwise: list = field(default_factory=list)


# --------------------------------------------------------------------------- lexing


def _close(text: str, start: int) -> int:
    """Index of the ``}}`` that ends the action opened before ``start`` (quotes respected)."""
    i, quote = start, ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote != "`":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif text.startswith("}}", i):
            return i
        i += 1
    raise _error("unclosed action")


def _chunks(text: str) -> list[tuple[str, str]]:
    """``[("text", s) | ("action", s)]`` with Go's trim markers applied to the text around actions."""
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    while True:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        chunk = chunk.lstrip(_BLANK) if trim_next else chunk
        if start < 0:
            out.append(("text", chunk))
            return out
        inner = start + 2
        if text[inner : inner + 1] == "-" and text[inner + 1 : inner + 2] in tuple(_BLANK):
            chunk, inner = chunk.rstrip(_BLANK), inner + 2
        end = _close(text, inner)
        body = text[inner:end]
        trim_next = len(body) >= 2 and body[-1] == "-" and body[-2] in _BLANK
        body = body[:-2] if trim_next else body
        out += [("text", chunk), ("action", body.strip(_BLANK))]
        pos = end + 2


def _tokens(action: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(action):
        m = _TOKEN.match(action, pos)
        if m is None:
            raise _error(f"unexpected {action[pos:pos + 10]!r} in {{{{{action}}}}}")
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out


# --------------------------------------------------------------------------- parsing


class _PipeParser:
    """Recursive descent over one action's tokens."""

    def __init__(self, tokens: list[tuple[str, str]], source: str) -> None:
        self.toks, self.i, self.source = tokens, 0, source

    def peek(self, offset: int = 0) -> tuple[str, str]:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else ("end", "")

    def pipe(self, *, declare: bool = True, closing: str = "end") -> Pipe:
        names, assign = self._declaration() if declare else ((), False)
        cmds = [self._command()]
        while self.peek()[0] == "pipe":
            self.i += 1
            cmds.append(self._command())
        if self.peek()[0] != closing:
            raise _error(f"unexpected {self.peek()[1]!r} in {{{{{self.source}}}}}")
        return Pipe(tuple(cmds), names, assign)

    def _declaration(self) -> tuple[tuple[str, ...], bool]:
        kinds = [self.peek(k)[0] for k in range(4)]
        if kinds[:2] == ["var", "decl"] or kinds[:2] == ["var", "assign"]:
            names, self.i = (self.peek()[1],), self.i + 2
            return names, kinds[1] == "assign"
        if kinds == ["var", "comma", "var", "decl"]:
            names, self.i = (self.peek()[1], self.peek(2)[1]), self.i + 4
            return names, False
        return (), False

    def _command(self) -> tuple[tuple, ...]:
        ops = []
        while self.peek()[0] not in ("pipe", "rp", "end"):
            ops.append(self._operand())
        if not ops:
            raise _error(f"missing value in {{{{{self.source}}}}}")
        return tuple(ops)

    def _operand(self) -> tuple:
        kind, text = self.peek()
        self.i += 1
        if kind == "lp":
            inner = self.pipe(closing="rp")
            self.i += 1
            return ("paren", inner, self._fields())
        if kind == "var":
            return ("var", text, self._fields())
        if kind == "field":
            return ("field", tuple(text[1:].split(".")))
        if kind == "dot":
            return ("dot",)
        if kind in ("str", "raw", "num"):
            return ("const", _constant(kind, text))
        if kind == "ident" and text in ("true", "false", "nil"):
            return ("const", {"true": True, "false": False, "nil": None}[text])
        if kind == "ident" and text in FUNCTIONS:
            return ("func", text)
        raise _error(f"function {text!r} not defined" if kind == "ident" else f"unexpected {text!r} in {{{{{self.source}}}}}")

    def _fields(self) -> tuple[str, ...]:
        if self.peek()[0] != "field":
            return ()
        self.i += 1
        return tuple(self.toks[self.i - 1][1][1:].split("."))


def _constant(kind: str, text: str) -> Any:
    if kind == "raw":
        return text[1:-1]
    if kind == "num":
        return float(text) if "." in text else int(text)
    return go_unquote(text)


def _pipe_of(action: str, *, skip: int = 1) -> Pipe:
    tokens = _tokens(action)[skip:]
    return _PipeParser(tokens, action).pipe()


def parse(text: str) -> list:
    """The tree of ``text``: strings, ``("out", Pipe)``, ``("break",)``, ``("continue",)`` and :class:`Block`."""
    body, stack = [], []  # stack: (enclosing body, block)
    for kind, value in _chunks(text):
        if kind == "text":
            if value:
                body.append(value)
            continue
        words = value.split(None, 2)
        head = words[0] if words else ""
        if value.startswith("/*"):
            if not value.endswith("*/"):
                raise _error("unclosed comment")
        elif head in ("if", "with", "range"):
            block = Block(head, [(_pipe_of(value), [])])
            body.append(block)
            stack.append((body, block))
            body = block.branches[0][1]
        elif head == "else":
            body = _else(stack, value, words)
        elif head == "end":
            if not stack:
                raise _error("unexpected {{end}}")
            body = stack.pop()[0]
        elif head in ("break", "continue") and value == head:
            if not any(b.kind == "range" for _, b in stack):
                raise _error(f"{{{{{head}}}}} outside {{{{range}}}}")
            body.append((head,))
        elif head in ("define", "template", "block"):
            raise _error(f"{{{{{head}}}}} is not supported here")
        else:
            body.append(("out", _pipe_of(value, skip=0)))
    if stack:
        raise _error(f"missing {{{{end}}}} for {stack[-1][1].kind}")
    return body


def _else(stack: list, value: str, words: list[str]) -> list:
    """The list that follows ``{{else}}``, ``{{else if ...}}`` or ``{{else with ...}}``."""
    if not stack:
        raise _error("unexpected {{else}}")
    block = stack[-1][1]
    if len(words) == 1:
        return block.otherwise
    if words[1] != block.kind or block.kind == "range":
        raise _error(f"unexpected {{{{{value}}}}}")
    block.branches.append((_pipe_of(value, skip=2), []))
    return block.branches[-1][1]


def identifiers(tree: list) -> set[str]:
    """Every field and variable name the template uses, lower-cased (Ollama's ``Template.Vars``)."""
    found: set[str] = set()

    def pipe(p: Pipe) -> None:
        for cmd in p.cmds:
            for op in cmd:
                if op[0] == "field":
                    found.update(n.lower() for n in op[1])
                elif op[0] in ("var", "paren"):
                    found.update(n.lower() for n in op[2])
                    if op[0] == "var":
                        found.add(op[1].lower())
                    else:
                        pipe(op[1])

    def walk(nodes: list) -> None:
        for node in nodes:
            if isinstance(node, Block):
                for p, body in node.branches:
                    pipe(p)
                    walk(body)
                walk(node.otherwise)
            elif isinstance(node, tuple) and node[0] == "out":
                pipe(node[1])

    walk(tree)
    return found


# --------------------------------------------------------------------------- rendering


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def truth(value: Any) -> bool:
    """Go's ``if``: false, 0, nil and empty strings, lists and maps are false; structs are true."""
    if value is None or isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


def _text(value: Any) -> str:
    """A value as ``{{ }}`` prints it (Go's ``fmt.Print``)."""
    if value is None:
        return _NO_VALUE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_text(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _go_json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=lambda o: vars(o))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _compare(name: str) -> Callable[..., bool]:
    ops = {"lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b}

    def run(a: Any, b: Any) -> bool:
        if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
            raise _error(f"{name}: incompatible types for comparison")
        return ops[name](a, b)

    return run


def _printf(form: str, *args: Any) -> str:
    """Go's ``printf`` for the verbs templates use: ``%s %v %d %q %%``."""
    values = iter(args)

    def verb(m: re.Match) -> str:
        if m.group(1) == "%":
            return "%"
        value = next(values, _NO_VALUE)
        return json.dumps(value, ensure_ascii=False) if m.group(1) == "q" else _text(value)

    return re.sub(r"%([svdq%])", verb, form)


def _slice(value: Any, *bounds: int) -> Any:
    return value[bounds[0] : bounds[1]] if len(bounds) == 2 else value[bounds[0] :] if bounds else value


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "not": lambda v: not truth(v),
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "lt": _compare("lt"), "le": _compare("le"), "gt": _compare("gt"), "ge": _compare("ge"),
    "len": lambda v: len(v),
    "index": lambda v, *keys: _index(v, keys),
    "slice": _slice,
    "print": lambda *vs: "".join(_text(v) for v in vs),
    "printf": _printf,
    "json": _go_json,
    "currentDate": lambda *_: datetime.date.today().isoformat(),
    "yesterdayDate": lambda *_: (datetime.date.today() - datetime.timedelta(days=1)).isoformat(),
    "and": None, "or": None,  # evaluated lazily, as Go does
}


def _index(value: Any, keys: tuple) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else value[key]
    return value


def _field(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        return value.get(name)
    if value is None or not hasattr(value, name):
        raise _error(f"can't evaluate field {name} in {type(value).__name__}")
    return getattr(value, name)


@dataclass
class _Scope:
    """The root (``$``), the dot and the variables of the enclosing blocks (innermost last)."""

    root: Any
    dot: Any
    frames: list[dict[str, Any]]

    def lookup(self, name: str) -> Any:
        if name == "$":
            return self.root
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise _error(f"undefined variable {name}")

    def bind(self, pipe: Pipe, value: Any) -> None:
        if not pipe.assign:
            self.frames[-1][pipe.names[0]] = value
            return
        for frame in reversed(self.frames):
            if pipe.names[0] in frame:
                frame[pipe.names[0]] = value
                return
        raise _error(f"undefined variable {pipe.names[0]}")

    def inner(self, dot: Any) -> "_Scope":
        return _Scope(self.root, dot, [*self.frames, {}])


def _operand(op: tuple, scope: _Scope) -> Any:
    kind = op[0]
    if kind == "const":
        return op[1]
    if kind == "dot":
        return scope.dot
    value = scope.dot if kind == "field" else scope.lookup(op[1]) if kind == "var" else _pipe(op[1], scope, bind=False)
    for name in op[1] if kind == "field" else op[2]:
        value = _field(value, name)
    return value


_NOTHING = object()


def _command(cmd: tuple, scope: _Scope, last: Any) -> Any:
    head, args = cmd[0], list(cmd[1:])
    if head[0] != "func":
        if args or last is not _NOTHING:
            raise _error("can't give an argument to a non-function")
        return _operand(head, scope)
    thunks = [lambda a=a: _operand(a, scope) for a in args] + ([lambda: last] if last is not _NOTHING else [])
    name = head[1]
    if name in ("and", "or"):
        value = None
        for thunk in thunks:
            value = thunk()
            if truth(value) != (name == "and"):
                return value
        return value
    try:
        return FUNCTIONS[name](*[t() for t in thunks])
    except GoTemplateError:
        raise
    except (TypeError, IndexError, KeyError) as err:
        raise _error(f"error calling {name}: {err}") from None


def _pipe(pipe: Pipe, scope: _Scope, *, bind: bool = True) -> Any:
    value = _NOTHING
    for cmd in pipe.cmds:
        value = _command(cmd, scope, value)
    if bind and pipe.names:
        scope.bind(pipe, value)
    return value


def _render(nodes: list, scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, Block):
            _render_block(node, scope, out)
        elif node[0] == "out":
            value = _pipe(node[1], scope)
            if not node[1].names:
                out.append(_text(value))
        else:
            raise _Break() if node[0] == "break" else _Continue()


def _render_block(block: Block, scope: _Scope, out: list[str]) -> None:
    if block.kind == "range":
        return _render_range(block, scope, out)
    for pipe, body in block.branches:
        inner = scope.inner(scope.dot)
        value = _pipe(pipe, inner)
        if truth(value):
            return _render(body, inner if block.kind == "if" else inner.inner(value), out)
    _render(block.otherwise, scope.inner(scope.dot), out)


def _render_range(block: Block, scope: _Scope, out: list[str]) -> None:
    pipe, body = block.branches[0]
    value = _pipe(pipe, scope, bind=False)
    items = sorted(value.items()) if isinstance(value, dict) else list(enumerate(value)) if isinstance(value, (list, tuple)) else None
    if items is None and value is not None:
        raise _error(f"range can't iterate over {_text(value)}")
    if not items:
        return _render(block.otherwise, scope.inner(scope.dot), out)
    for key, item in items:
        inner = scope.inner(item)
        if len(pipe.names) == 2:
            inner.frames[-1].update({pipe.names[0]: key, pipe.names[1]: item})
        elif pipe.names:
            inner.frames[-1][pipe.names[0]] = item
        try:
            _render(body, inner, out)
        except _Break:
            break
        except _Continue:
            continue


def render(tree: list, data: Any) -> str:
    """``tree`` (from :func:`parse`) executed with ``data`` as dot and ``$``."""
    out: list[str] = []
    _render(tree, _Scope(data, data, [{}]), out)
    return "".join(out)


def render_text(template: str, data: Any) -> str:
    """Parse and render ``template`` in one go."""
    return render(parse(template), data)
