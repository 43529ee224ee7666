"""Atomic writes: whole files only, with the permissions a plain write would give."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ollama_slim import paths


def test_atomic_write_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        f = paths.write_text(tmp_path / "report.md", "hello")
        with paths.atomic_dir(tmp_path / "model") as d:
            (d / "x").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644  # readable by an Ollama service user
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = paths.write_text(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError):
        with paths.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["a.json"]
