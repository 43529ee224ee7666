"""The docs match the code: every message in docs/errors.md is one the code can print."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _source() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "ollama_slim").rglob("*.py"))


def test_every_documented_message_is_in_the_code() -> None:
    doc = (REPO / "docs" / "errors.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    assert len(rows) > 60
    source = _source()
    missing = []
    for row in rows:
        first_cell = row.split(" | ")[0]
        for fragment in re.findall(r"`([^`]+)`", first_cell):
            if fragment not in source:
                missing.append(fragment)
    assert not missing, f"docs/errors.md lists messages the code no longer prints: {missing}"
