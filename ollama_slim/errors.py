"""One error path: every failure a user can cause raises a :class:`SlimError`.

The CLI prints ``Error: <message>`` (and the hint) on one line and exits with
``exit_code``; ``OLLAMA_SLIM_DEBUG=1`` shows the full traceback instead.
"""

from __future__ import annotations


class SlimError(Exception):
    """A failure the user can act on: what went wrong, and what to do."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        return f"{text}. {self.hint}" if self.hint else f"{text}."


class UsageError(SlimError):
    """An option or argument that cannot work (bad --keep, bad --layers...)."""

    exit_code = 2


class UnknownTagError(SlimError):
    """An Ollama tag that is neither in the tag table nor resolvable another way."""


class SourceError(SlimError):
    """No model source could be used: offline, missing repo, gated repo, bad file."""


class UnsupportedArchitectureError(SlimError):
    """A model whose architecture has no family table entry."""


class DataError(SlimError):
    """A data set that is missing, malformed or unusable."""


class SelectionError(SlimError):
    """A layer selection that does not fit the model."""


class ExportError(SlimError):
    """A GGUF export or its llama.cpp acceptance check failed."""


class OllamaError(SlimError):
    """The Ollama server is down, refused a request, or a name is taken."""


class HubError(SlimError):
    """Publishing to the Hugging Face Hub failed: not logged in, no access, a repo holding another model."""


class RunError(SlimError):
    """A run directory is missing a stage's output or is inconsistent."""
