"""Stage skipping and --from: the mechanism `prune` resumes with."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from ollama_slim.errors import UsageError
from ollama_slim.pipeline.runner import StageRunner

ORDER = ("a", "b", "c")


def _pipeline(root: Path, calls: list[str], *, option: int = 1, redo_from: str | None = None) -> StageRunner:
    runner = StageRunner(root=root, order=ORDER, redo_from=redo_from)
    for name in ORDER:
        out = root / f"{name}.txt"

        def work(name: str = name, out: Path = out) -> None:
            calls.append(name)
            out.write_text(name)

        runner.run(name, options={"option": option if name != "a" else 0}, outputs=[out], fn=work)
    return runner


def test_second_run_skips_everything(tmp_path: Path) -> None:
    calls: list[str] = []
    _pipeline(tmp_path, calls)
    runner = _pipeline(tmp_path, calls)
    assert calls == ["a", "b", "c"]
    assert runner.skipped == ["a", "b", "c"]


def test_changed_option_reruns_that_stage_and_later(tmp_path: Path) -> None:
    calls: list[str] = []
    _pipeline(tmp_path, calls)
    calls.clear()
    _pipeline(tmp_path, calls, option=2)
    assert calls == ["b", "c"]


def test_missing_output_reruns_that_stage_and_later(tmp_path: Path) -> None:
    calls: list[str] = []
    _pipeline(tmp_path, calls)
    (tmp_path / "b.txt").unlink()
    calls.clear()
    _pipeline(tmp_path, calls)
    assert calls == ["b", "c"]


def test_redo_from(tmp_path: Path) -> None:
    calls: list[str] = []
    _pipeline(tmp_path, calls)
    calls.clear()
    _pipeline(tmp_path, calls, redo_from="b")
    assert calls == ["b", "c"]


def test_unknown_stage(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such stage"):
        StageRunner(root=tmp_path, order=ORDER, redo_from="zzz")


def test_a_failing_stage_is_not_recorded(tmp_path: Path) -> None:
    runner = StageRunner(root=tmp_path, order=ORDER)

    def boom() -> None:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        runner.run("a", options={}, outputs=[tmp_path / "a.txt"], fn=boom)
    assert not (tmp_path / "state.json").exists()


@pytest.mark.parametrize("with_reference", [False, True])
def test_eval_removes_only_the_reference_gguf_it_exported(with_reference: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_slim.pipeline import stages
    from ollama_slim.pipeline.layout import RunLayout

    layout = RunLayout(tmp_path)
    kept = layout.reference_gguf("q8_0")
    exported: list[Path] = []
    asked = SimpleNamespace(users=["u1", "u2"], figures={"title": SimpleNamespace(mean=1.0)})  # what the stage reads of a chat measure

    def export_reference(root: Path, outtype: str) -> None:
        exported.append(kept)
        kept.write_bytes(b"GGUF")

    monkeypatch.setattr(stages, "evaluate_generation", lambda gguf, config, ranks, progress: asked)
    monkeypatch.setattr(stages, "export_reference", export_reference)
    if not with_reference:
        kept.write_bytes(b"a file of the user's")
    generate = {"slim": None, "original": None} | ({"reference": None} if with_reference else {})
    stages._run_eval({"rank": {}, "generate": generate, "outtype": "q8_0"}, layout, say=lambda line: None)
    assert exported == ([kept] if with_reference else [])
    assert kept.exists() is not with_reference
