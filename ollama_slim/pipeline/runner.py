"""Stage bookkeeping for a run directory: skip what is done, redo from a stage.

Each stage has a key: a hash of the options it depends on and of the key of the
stage before it. A stage whose key matches the one recorded in ``state.json`` and
whose outputs all exist is skipped, so an interrupted run resumes; once a stage
runs, every later one runs too (its input changed); ``redo_from`` forces that stage
and every later one to run again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ollama_slim import paths
from ollama_slim.errors import UsageError


def stage_key(options: dict[str, Any], previous: str) -> str:
    """A stable hash of a stage's options and its predecessor's key."""
    blob = json.dumps({"options": options, "previous": previous}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StageRunner:
    """Runs named stages in order inside ``root``, recording keys and timings."""

    root: Path
    order: tuple[str, ...]
    redo_from: str | None = None
    on_event: Callable[[str, str], None] | None = None  # (stage, "run"|"skip"|"done")
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    _previous: str = field(default="", init=False)
    _ran: bool = field(default=False, init=False)  # once a stage runs, later ones must too

    def __post_init__(self) -> None:
        if self.redo_from is not None and self.redo_from not in self.order:
            raise UsageError(f"--from {self.redo_from}: no such stage", hint=f"stages: {', '.join(self.order)}")
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def _state(self) -> dict[str, Any]:
        return paths.read_json(self.state_path) if self.state_path.is_file() else {}

    def _forced(self, name: str) -> bool:
        return self.redo_from is not None and self.order.index(name) >= self.order.index(self.redo_from)

    def run(self, name: str, *, options: dict[str, Any], outputs: list[Path], fn: Callable[[], Any]) -> bool:
        """Run ``fn`` unless stage ``name`` is already done with these options; True if it ran."""
        key = stage_key(options, self._previous)
        self._previous = key
        recorded = self._state().get(name, {})
        done = recorded.get("key") == key and all(Path(p).exists() for p in outputs)
        if done and not self._forced(name) and not self._ran:
            self.skipped.append(name)
            self.timings[name] = recorded.get("seconds", 0.0)
            self._emit(name, "skip")
            return False
        self._emit(name, "run")
        self._ran = True
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        self.timings[name] = seconds
        state = self._state()
        state[name] = {"key": key, "seconds": round(seconds, 2), "outputs": [str(p) for p in outputs]}
        paths.write_json(self.state_path, state)
        self._emit(name, "done")
        return True

    def _emit(self, name: str, event: str) -> None:
        if self.on_event is not None:
            self.on_event(name, event)
