"""Option helpers shared by the commands: defaults from config dataclasses, choices from registries.

A command's defaults are its config's (``defaults(EvalConfig)["users"]``), and its choices
are a registry's names (``RegistryChoice(BRIDGES)``), so neither can drift from the library.
Comma-separated lists are checked against their registry by :func:`comma_list`. A bad
value is one line and exit code 2, like every other usage error.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import click

from ollama_slim.errors import UsageError

# One help text for `build --own-text` and `prune --own-text` (BuildConfig.own_text).
OWN_TEXT_HELP = ("Fit the bridges on the original model's own sampled text too (one more share of the calibration tokens): "
                 "what it knows beyond --data, kept without another data set.")


def defaults(config_class: type) -> dict[str, Any]:
    """The default of every field of a config dataclass that has one."""
    return {f.name: f.default for f in dataclasses.fields(config_class) if f.default is not dataclasses.MISSING}


class RegistryChoice(click.Choice):
    """``click.Choice`` over a registry's names; a bad value is one line (a :class:`UsageError`), like every error.

    ``unknown``: the message's start (``"unknown selection strategy"``); default ``"--option 'value' is not known"``.
    """

    def __init__(self, names: Iterable[str], *, unknown: str | None = None) -> None:
        super().__init__(list(names))
        self.unknown = unknown

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value in self.choices:
            return value
        raise _unknown(value, param, self.choices, self.unknown)


def comma_list(known: Callable[[], Iterable[str]], *, unknown: str | None = None) -> Callable[[click.Context, click.Parameter, Any], tuple[str, ...] | None]:
    """A click callback: ``"a,b"`` -> ``("a", "b")``, each name one of ``known()``, none twice."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        names = tuple(dict.fromkeys(v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()))
        choices = list(known())
        for name in names or ("",):
            if name not in choices:
                raise _unknown(name, param, choices, unknown)
        return names

    return check


def _unknown(value: Any, param: click.Parameter | None, choices: Iterable[str], unknown: str | None) -> UsageError:
    option = param.opts[0] if param is not None and param.opts else "value"
    message = f"{unknown} {value!r}" if unknown else f"{option} {value!r} is not known"
    return UsageError(message, hint=f"choose from {', '.join(repr(c) for c in choices)}")
