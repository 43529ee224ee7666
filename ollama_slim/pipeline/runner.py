"""Stage bookkeeping for a run directory: skip what is done, redo from a stage.

Each stage has a key: a hash of its config (every field that can change its output,
see :func:`config_key`) and of the key of the stage before it, so a stage's key also
covers its inputs. A stage whose key matches the one recorded in ``state.json`` and
whose outputs all exist is skipped, so an interrupted run resumes; once a stage runs,
every later one runs too (its input changed); ``redo_from`` forces that stage and
every later one to run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ollama_slim import paths
from ollama_slim.errors import UsageError
from ollama_slim.pipeline.layout import RunLayout

# Config fields that never change a stage's output: where it is written, whether it may
# replace files, how it is placed or checkpointed, which stage a rerun starts from. The
# one place that says so; every other field of a stage config is part of its key.
OUTPUT_NEUTRAL = frozenset({"run_dir", "out_dir", "out", "force", "from_stage", "device_map", "cache_gb", "checkpoint_every"})
# Fields added after runs existed, left out of a key while at their default, so a finished
# run's stages keep their keys (and are not redone) when a new option appears.
KEY_LATER = {"chat": None, "task_format": "completion", "bridge_fallback": True, "min_retained": None, "answers": 1, "popularity_debias": 0.0, "full": False,
             "cf_answers": 0, "cf_share": 0.5, "cf_vocab": 0, "calib_data": (),
             "own_text": False}


def config_key(config: Any, *, root: Path) -> Any:
    """The JSON-able part of ``config`` that a stage's key hashes.

    Dataclasses become dicts without their :data:`OUTPUT_NEUTRAL` fields (nested ones
    too); paths inside ``root`` become relative, so a run directory that was moved or
    copied keeps its keys.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_key(getattr(config, f.name), root=root) for f in dataclasses.fields(config)
                if f.name not in OUTPUT_NEUTRAL and not (f.name in KEY_LATER and getattr(config, f.name) == KEY_LATER[f.name])}
    if isinstance(config, dict):
        return {str(k): config_key(v, root=root) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_key(v, root=root) for v in config]
    if isinstance(config, Path) or (isinstance(config, str) and (config == str(root) or config.startswith(f"{root}/"))):
        return _relative(Path(config), root)
    return config


def _relative(path: Path, root: Path) -> str:
    try:
        return f"RUN/{path.relative_to(root).as_posix()}"
    except ValueError:
        return str(path)


def stage_key(options: Any, previous: str) -> str:
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
        return RunLayout(self.root).state

    def _state(self) -> dict[str, Any]:
        return paths.read_json(self.state_path) if self.state_path.is_file() else {}

    def _forced(self, name: str) -> bool:
        return self.redo_from is not None and self.order.index(name) >= self.order.index(self.redo_from)

    def run(self, name: str, *, options: Any, outputs: list[Path], fn: Callable[[], Any]) -> bool:
        """Run ``fn`` unless stage ``name`` is already done with these options; True if it ran.

        ``options``: what the stage's key hashes (JSON-able; :func:`config_key` of its config).
        """
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
