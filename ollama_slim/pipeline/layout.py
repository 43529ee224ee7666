"""The run directory: one folder per slimming run, one file per stage result.

Every stage reads its inputs from and writes its result to a run directory, so a
run can be resumed, inspected and redone from any stage. File names live here only.
This module imports nothing of ollama_slim, so every package may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RUNS_DIR = Path("runs")  # where runs go when no --run-dir is given


@dataclass(frozen=True)
class RunLayout:
    """Where each stage's result lives inside ``root``."""

    root: Path

    # -- resolve, score, select -------------------------------------------------------
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

    # -- build, finetune, reference ---------------------------------------------------
    @property
    def compact_dir(self) -> Path:
        return self.root / "compact"

    @property
    def build_record(self) -> Path:
        """The build result: kept layers, parameter counts, bridge summary."""
        return self.root / "build.json"

    @property
    def finetune_dir(self) -> Path:
        """Healing checkpoints of ``ollama-slim finetune RUN``."""
        return self.root / "finetune"

    @property
    def healed_dir(self) -> Path:
        return self.root / "healed"

    @property
    def finetune_record(self) -> Path:
        """The healing result: mode, steps, losses."""
        return self.root / "finetune.json"

    @property
    def reference_dir(self) -> Path:
        """The full model fine-tuned with the same budget (``prune --reference``)."""
        return self.root / "reference"

    def model_dir(self) -> Path:
        """The run's slim model: ``healed/`` once it exists, else ``compact/``."""
        return self.healed_dir if (self.healed_dir / "config.json").is_file() else self.compact_dir

    # -- export, register, bench, eval ------------------------------------------------
    @property
    def gguf(self) -> Path:
        return self.root / "model.gguf"

    @property
    def modelfile(self) -> Path:
        return self.root / "Modelfile"

    @property
    def export_record(self) -> Path:
        """The export result with its llama.cpp acceptance figures."""
        return self.root / "export.json"

    def original_gguf(self, outtype: str) -> Path:
        """The original model at the slim model's outtype, for the speed benchmark."""
        return self.root / f"original.{outtype}.gguf"

    def reference_gguf(self, outtype: str) -> Path:
        """The reference (the full model healed like the slim one) at the slim model's outtype, asked in chat beside it."""
        return self.root / f"reference.{outtype}.gguf"

    def find_original_gguf(self) -> Path | None:
        """The original's GGUF that export wrote, whatever its outtype."""
        found = sorted(self.root.glob("original.*.gguf"))
        return found[0] if found else None

    @property
    def register(self) -> Path:
        return self.root / "register.json"

    @property
    def bench(self) -> Path:
        return self.root / "bench.json"

    def eval_record(self, label: str) -> Path:
        """One evaluation: ``eval_slim.json``, ``eval_original.json``, ``eval_cross_slim.json``..."""
        return self.root / f"eval_{label}.json"

    def generation_record(self, label: str) -> Path:
        """One generation-mode measure: ``generation_slim.json``, ``generation_original.json``..."""
        return self.root / f"generation_{label}.json"

    # -- report, share, bookkeeping ---------------------------------------------------
    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def speed_quality_png(self) -> Path:
        return self.root / "speed_quality.png"

    @property
    def plots(self) -> tuple[Path, ...]:
        """The report's plots, in the order a model card shows them."""
        return (self.speed_quality_png, self.selection_png, self.scores_png)

    @property
    def prune_record(self) -> Path:
        """The ``prune`` command and options that made the run (``share`` quotes them)."""
        return self.root / "prune.json"

    @property
    def share_record(self) -> Path:
        """What ``share`` published (Hub repo, Ollama name) and with which files."""
        return self.root / "share.json"

    @property
    def hub_dir(self) -> Path:
        """The default folder ``share`` writes the Hub repository to."""
        return self.root / "hub"

    @property
    def state(self) -> Path:
        """Stage bookkeeping for `prune`: the inputs hash each stage ran with."""
        return self.root / "state.json"


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run directory (a folder of stage results), not a model directory."""
    path = Path(path)
    return path.is_dir() and not (path / "config.json").is_file()


def run_of(model: str | Path) -> Path | None:
    """The run directory ``model`` belongs to (``RUN``, ``RUN/healed``, ``RUN/model.gguf``...), if ``prune`` made one."""
    path = Path(model)
    if not path.exists():  # a tag, not a file of a run
        return None
    for candidate in (path, path.parent):
        if RunLayout(candidate).prune_record.is_file():
            return candidate
    return None
