"""Ollama tags: parsing names as Ollama does, and the built-in tag table."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from ollama_slim.tables import table
from ollama_slim.errors import UnknownTagError, UsageError

# Ollama's name rules: lowercase-ish parts of letters, digits, '_', '-', '.'.
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")


@dataclass(frozen=True)
class OllamaName:
    """A model name as Ollama reads it: ``[host/][namespace/]model[:tag]``."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def short(self) -> str:
        """``model:tag`` for the default library, the full path otherwise."""
        if self.host == "registry.ollama.ai" and self.namespace == "library":
            return f"{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def manifest_parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)


def parse_name(name: str) -> OllamaName:
    """Parse ``name`` like Ollama (``qwen`` -> ``registry.ollama.ai/library/qwen:latest``).

    Raises :class:`UsageError` for a name Ollama would refuse.
    """
    text = name.strip()
    tag = "latest"
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
    parts = text.split("/") if text else []
    if not parts or len(parts) > 3:
        raise UsageError(f"{name!r} is not a valid Ollama model name", hint="use NAME or NAME:TAG, e.g. qwen2.5:0.5b")
    host, namespace = "registry.ollama.ai", "library"
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        model = parts[0]
    for part in (namespace, model, tag):
        if not _PART.match(part):
            raise UsageError(
                f"{name!r} is not a valid Ollama model name",
                hint="names use letters, digits, '_', '-' and '.', start with a letter or digit, at most 80 characters",
            )
    return OllamaName(host=host, namespace=namespace, model=model.lower(), tag=tag.lower())


@dataclass(frozen=True)
class TagEntry:
    """One row of the tag table: the Hugging Face twin of an Ollama tag."""

    tag: str
    hf_repo: str
    arch: str
    chat: str
    package: dict[str, Any] | None = None
    license: str | None = None  # the original's licence id (_data/licenses.json)


def _table() -> dict[str, dict[str, dict[str, Any]]]:
    return table("tags")


def known_tags() -> list[str]:
    return sorted(f"{m}:{t}" for m, tags in _table().items() for t in tags)


def lookup(name: OllamaName) -> TagEntry | None:
    """The tag-table entry of ``name``, or None when it is not in the table."""
    if name.namespace != "library":
        return None
    row = _table().get(name.model, {}).get(name.tag)
    if row is None:
        return None
    tag = f"{name.model}:{row.get('alias_of', name.tag)}"
    return TagEntry(tag=tag, hf_repo=row["hf_repo"], arch=row["arch"], chat=row["chat"], package=row.get("package"), license=row.get("license"))


def nearest(text: str, n: int = 3) -> list[str]:
    """The known tags closest to ``text`` (for 'did you mean')."""
    return difflib.get_close_matches(text.lower(), known_tags(), n=n, cutoff=0.5)


def unknown_tag(text: str) -> UnknownTagError:
    near = nearest(text)
    hint = f"did you mean {', '.join(near)}?" if near else "see `ollama-slim resolve --list` for known tags"
    return UnknownTagError(
        f"unknown model {text!r}: not in the tag table, not in your Ollama store, and no --hf given",
        hint=hint + " Or pass --hf REPO_OR_DIR",
    )


def default_slim_name(name: OllamaName) -> str:
    """``qwen2.5:0.5b`` -> ``qwen2.5-slim``; ``smollm2:135m`` -> ``smollm2-slim``."""
    return f"{name.model}-slim"
