"""What the user sees while a long command works: ollama-slim's own rich display only.

Third-party output (progress bars, warnings, llama.cpp's log) is silenced by
:func:`ollama_slim.quiet.quiet` unless ``--verbose`` (or ``OLLAMA_SLIM_DEBUG=1``).
A command shows its live display inside :func:`live` or :func:`working` and prints its
results after the block, once stdout and stderr are the terminal's again.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from ollama_slim.quiet import quiet

_VERBOSE = "ollama_slim.verbose"


def _remember_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta[_VERBOSE] = value
    return value


def verbose_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--verbose/-v``: let third-party progress bars, warnings and llama.cpp's log through."""
    return click.option("--verbose", "-v", is_flag=True, expose_value=False, callback=_remember_verbose,
                        help="Also show what the libraries print (progress bars, warnings, llama.cpp's log); silenced by default.")(command)


def verbose() -> bool:
    """Whether the running command was given ``--verbose``."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(_VERBOSE))


@contextmanager
def live(*columns: ProgressColumn, transient: bool = False) -> Iterator[Progress]:
    """A rich progress display on stderr, with third-party output silenced for its duration unless --verbose."""
    with quiet(enabled=not verbose()) as q:
        console = Console(file=q.terminal)
        # when silencing, rich must not route sys.stdout/sys.stderr (the log now) back onto the screen; a transient
        # display is left out where it cannot animate (a file, a pipe), where it would only add a blank line
        progress = Progress(*columns, console=console, transient=transient, redirect_stdout=not q.active, redirect_stderr=not q.active,
                            disable=transient and not console.is_terminal)
        with progress:
            yield progress


@contextmanager
def working(text: str) -> Iterator[Callable[[str], None]]:
    """A spinner with ``text`` (the yielded function replaces it) while a step runs, third-party output silenced."""
    with live(SpinnerColumn(), TextColumn("{task.description}"), transient=True) as progress:
        task = progress.add_task(escape(text), total=None)
        yield lambda message: progress.update(task, description=escape(message))


# -- prune: one line per stage -------------------------------------------------------

_EVENT = re.compile(r"^(?P<stage>[\w-]+): (?P<event>run|skip|done)$")
_COUNT = re.compile(r"(?:^|\s)(\d+)/(\d+)(?=\s|$)")


class _IfCounted(ProgressColumn):
    """``column`` on a task whose total is known (finetune steps, eval users), nothing on the others."""

    def __init__(self, column: ProgressColumn) -> None:
        super().__init__()
        self.column = column

    def render(self, task: Task) -> Any:
        return self.column.render(task) if task.total is not None else Text("")


class StageDisplay:
    """``prune``'s progress callback: each stage is a live line (spinner, elapsed time, bar when
    it counts steps or users, latest message) while it runs, then one line: done with its
    seconds, or skipped."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.stage = ""
        self.detail = ""
        self.started = 0.0

    def __call__(self, message: str) -> None:
        event = _EVENT.match(message)
        if event is None:
            self._update(message)
        elif event["event"] == "run":
            self._start(event["stage"])
        else:
            self._end(event["stage"], skipped=event["event"] == "skip")

    def _start(self, stage: str) -> None:
        self._drop()
        self.stage, self.detail, self.started = stage, "", time.perf_counter()
        self.task = self.progress.add_task(escape(stage), total=None, detail="")

    def _update(self, message: str) -> None:
        """A stage's own message ("finetune: step 3/150 loss 2.71", "ablation 4/30"): its text, and a bar for i/n."""
        if self.task is None:
            return
        self.detail = message.removeprefix(f"{self.stage}: ")
        count = _COUNT.search(self.detail)
        if count:
            self.progress.update(self.task, completed=int(count[1]), total=int(count[2]))
        self.progress.update(self.task, detail=escape(self.detail))

    def _end(self, stage: str, *, skipped: bool) -> None:
        seconds = time.perf_counter() - self.started
        self._drop()
        if skipped:
            line = f"  [dim]-[/] {escape(stage):<10} [dim]skipped: done before with these options[/]"
        else:
            line = f"  [green]✓[/] {escape(stage):<10} {seconds:7.1f}s" + (f"  [dim]{escape(self.detail)}[/]" if self.detail else "")
        self.progress.console.print(line, highlight=False)

    def _drop(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.progress.refresh()  # what prints next must not bring the finished line back
            self.task = None


@contextmanager
def stage_display() -> Iterator[StageDisplay]:
    """The live display of ``prune``'s stages (a :class:`StageDisplay`), third-party output silenced unless --verbose."""
    columns = (SpinnerColumn(), TextColumn("{task.description:<10}"), TimeElapsedColumn(), _IfCounted(BarColumn(bar_width=30)),
               TextColumn("[dim]{task.fields[detail]}"))
    with live(*columns, transient=True) as progress:
        yield StageDisplay(progress)
