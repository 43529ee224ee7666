"""Quiet mode: third-party output is silenced while ollama-slim works, and restored after.

While a command runs, the user should see ollama-slim's own display only. What other
code prints goes to a temporary log instead of the terminal:

- transformers' and huggingface_hub's progress bars ("Loading weights", "Writing model
  shards", downloads) are switched off and their loggers set to errors only;
- Python warnings (FutureWarning, UserWarning... from transformers, torch, peft,
  accelerate) are written to the log; ollama-slim itself never warns through
  :mod:`warnings` (its problems are errors or result fields);
- whatever is written to ``sys.stdout``/``sys.stderr`` (tqdm bars of accelerate and
  peft, llama-cpp-python's log callback) goes to the log;
- native code writing to file descriptors 1 and 2 (llama.cpp's "llama_context: ..."
  lines, the quantizer's "falling back" warnings, torch's C++ warnings) goes to the log.

Everything is restored on exit. Exceptions are never swallowed: an unexpected one
(not a :class:`~ollama_slim.errors.SlimError`) also shows the log's last lines, since
they may say why. ``OLLAMA_SLIM_DEBUG=1`` (or ``enabled=False``, the CLI's
``--verbose``) shows everything as it happens.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from ollama_slim.errors import SlimError

TAIL_LINES = 20


@dataclass(frozen=True)
class Quiet:
    """What a caller of :func:`quiet` may use: ``terminal`` shows on the real stderr."""

    terminal: TextIO  # the caller's own display goes here (the stderr of before)
    log: Path | None  # where silenced output goes; None when nothing is silenced

    @property
    def active(self) -> bool:
        return self.log is not None


def debug() -> bool:
    """``OLLAMA_SLIM_DEBUG`` is set (as the CLI reads it for full tracebacks): show everything."""
    return bool(os.environ.get("OLLAMA_SLIM_DEBUG"))


@contextmanager
def quiet(*, enabled: bool = True) -> Iterator[Quiet]:
    """Silence third-party output for the duration of the context (see the module doc)."""
    if not enabled or debug():
        yield Quiet(terminal=sys.stderr, log=None)
        return
    with ExitStack() as stack:
        terminal = stack.enter_context(_terminal())
        log = stack.enter_context(native_output())
        stack.enter_context(_warnings_to_stderr())
        stack.enter_context(_hf_quiet())
        try:
            yield Quiet(terminal=terminal, log=log)
        except (SlimError, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException:
            _show_tail(log, terminal)
            raise


@contextmanager
def native_output() -> Iterator[Path]:
    """Send what is written to stdout and stderr into a temp file (yielded) instead of the terminal.

    Both levels: native code writing to file descriptors 1 and 2, and Python code
    writing to ``sys.stdout``/``sys.stderr`` (which may not be those descriptors).
    """
    with tempfile.NamedTemporaryFile(prefix="ollama-slim-native-", suffix=".log") as log, _fds_to(log.fileno()), _python_streams():
        yield Path(log.name)


@contextmanager
def _fds_to(fd: int) -> Iterator[None]:
    """File descriptors 1 and 2 point at ``fd`` for the duration; restored after."""
    _flush_std_streams()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        _flush_std_streams()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd_saved in saved:
            os.close(fd_saved)


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


@contextmanager
def _terminal() -> Iterator[TextIO]:
    """The current stderr, kept reachable once fd 2 points at the log: a duplicate of fd 2 when it is the real one."""
    stream = sys.stderr
    try:
        real = stream.fileno() == 2
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        real = False  # a stand-in stream (click's CliRunner, a test capture): writes to it stay where they were
    if not real:
        yield stream
        return
    stream.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8", errors="replace")
    try:
        yield terminal
    finally:
        terminal.close()


@contextmanager
def _python_streams() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` write to fd 2 (the log) for the duration; restored after."""
    saved = sys.stdout, sys.stderr
    log = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    sys.stdout = sys.stderr = log
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        log.close()


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """Warnings are written to ``sys.stderr`` (the log), even where a test harness records them; filters restored after."""
    with warnings.catch_warnings():

        def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 (the warnings API)
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        yield


@contextmanager
def _hf_quiet() -> Iterator[None]:
    """transformers' and huggingface_hub's progress bars off and loggers at errors only; their settings restored after."""
    from huggingface_hub import utils as hub
    from transformers.utils import logging as tf_logging

    saved = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled(), hub.logging.get_verbosity(), hub.are_progress_bars_disabled()
    tf_logging.set_verbosity_error()
    hub.logging.set_verbosity_error()
    tf_logging.disable_progress_bar()  # also huggingface_hub's
    try:
        yield
    finally:
        tf_verbosity, tf_bars, hub_verbosity, hub_bars_off = saved
        tf_logging.set_verbosity(tf_verbosity)
        hub.logging.set_verbosity(hub_verbosity)
        (tf_logging.enable_progress_bar if tf_bars else tf_logging.disable_progress_bar)()
        (hub.disable_progress_bars if hub_bars_off else hub.enable_progress_bars)()


def _show_tail(log: Path, terminal: TextIO) -> None:
    """The last lines of silenced output, shown before an unexpected error's traceback."""
    _flush_std_streams()
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if lines:
        terminal.write(f"[ollama-slim] the last {min(len(lines), TAIL_LINES)} lines of silenced third-party output (--verbose shows all):\n")
        terminal.write("\n".join(lines[-TAIL_LINES:]) + "\n")
        terminal.flush()
