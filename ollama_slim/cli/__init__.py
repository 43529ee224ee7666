"""The ``ollama-slim`` command line: thin click commands over the library.

Each stage has its own module in this package; this one assembles the group and
owns the single error path (one line, non-zero exit).
"""

from __future__ import annotations

import os
import sys
from importlib import import_module

import click

from ollama_slim import __version__
from ollama_slim.errors import SlimError

# command modules; each defines `command` (a click.Command)
_COMMANDS = ["resolve", "eval", "score", "select", "build", "finetune", "export", "register", "bench", "prune", "share"]


class SlimGroup(click.Group):
    """A click group that turns :class:`SlimError` into one line and an exit code."""

    def invoke(self, ctx: click.Context):  # noqa: D401
        try:
            return super().invoke(ctx)
        except SlimError as err:
            if os.environ.get("OLLAMA_SLIM_DEBUG"):
                raise
            click.echo(f"Error: {err.one_line()}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted: finished files are kept; rerun the same command to resume.", err=True)
            sys.exit(130)


@click.group(cls=SlimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ollama-slim")
def main() -> None:
    """Slim an Ollama model for recommendation.

    Finds the transformer layers that matter for a recommendation task, rebuilds a
    compact model from them with bridges across the gaps, heals it by fine-tuning,
    exports it to GGUF and registers it in Ollama. Each stage is a command of its
    own reading and writing one run directory; `prune` chains them.
    """


for _name in _COMMANDS:
    try:
        _module = import_module(f".{_name}", __name__)
    except ModuleNotFoundError as _err:  # a stage not built yet in this checkout
        if _err.name != f"{__name__}.{_name}":
            raise
        continue
    main.add_command(_module.command)
