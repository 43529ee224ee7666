"""The run directory: one folder per slimming run, one file per stage result.

Every stage reads its inputs from and writes its result to a run directory, so a
run can be resumed, inspected and redone from any stage. File names live here only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGES = ("resolve", "score", "select", "build", "finetune", "export", "register", "bench")


@dataclass(frozen=True)
class RunLayout:
    """Where each stage's result lives inside ``root``."""

    root: Path

    @property
    def resolve(self) -> Path:
        return self.root / "resolve.json"

    @property
    def scores(self) -> Path:
        return self.root / "scores.json"

    @property
    def scores_png(self) -> Path:
        return self.root / "scores.png"

    @property
    def selection(self) -> Path:
        return self.root / "selection.json"

    @property
    def selection_png(self) -> Path:
        return self.root / "selection.png"

    @property
    def compact_dir(self) -> Path:
        return self.root / "compact"

    @property
    def finetune_dir(self) -> Path:
        return self.root / "finetune"

    @property
    def healed_dir(self) -> Path:
        return self.root / "healed"

    @property
    def gguf(self) -> Path:
        return self.root / "model.gguf"

    @property
    def modelfile(self) -> Path:
        return self.root / "Modelfile"

    @property
    def register(self) -> Path:
        return self.root / "register.json"

    @property
    def bench(self) -> Path:
        return self.root / "bench.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def prune_record(self) -> Path:
        """The ``prune`` command and options that made the run (``share`` quotes them)."""
        return self.root / "prune.json"

    @property
    def export_record(self) -> Path:
        """The export result with its llama.cpp acceptance figures."""
        return self.root / "export.json"

    @property
    def share_record(self) -> Path:
        """What ``share`` published (Hub repo, Ollama name) and with which files."""
        return self.root / "share.json"

    @property
    def state(self) -> Path:
        """Stage bookkeeping for `prune`: the inputs hash each stage ran with."""
        return self.root / "state.json"
