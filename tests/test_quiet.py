"""Quiet mode: third-party output silenced for a context and everything restored after; prune's stage lines."""

from __future__ import annotations

import io
import os
import sys
import warnings
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from ollama_slim.cli.display import StageDisplay
from ollama_slim.errors import ExportError, UsageError
from ollama_slim.quiet import quiet


def _third_party_noise() -> None:
    """What libraries print while ollama-slim works: native lines, Python prints, warnings, logs, bars."""
    from transformers.utils import logging as tf_logging

    os.write(2, b"llama_context: n_ctx_seq (1024) > n_ctx_train (512)\n")
    os.write(1, b"native stdout line\n")
    print("python stdout line")
    sys.stderr.write("python stderr line\n")
    warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning)
    tf_logging.get_logger("transformers.modeling_utils").warning("a transformers warning")
    for _ in tf_logging.tqdm(range(3), desc="Loading weights"):
        pass


def test_quiet_silences_third_party_output_and_restores_everything(capfd: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as tf_logging

    before = (sys.stdout, sys.stderr, warnings.showwarning, tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled(), are_progress_bars_disabled())
    with quiet() as q:
        _third_party_noise()
        q.terminal.write("ollama-slim's own line\n")
        logged = q.log.read_text()
    shown = capfd.readouterr()
    assert shown.out == "" and shown.err.strip() == "ollama-slim's own line"
    assert "llama_context" in logged and "native stdout line" in logged and "python stdout line" in logged
    assert "FutureWarning" in logged and "Loading weights" not in logged  # the bar is off, not merely hidden
    after = (sys.stdout, sys.stderr, warnings.showwarning, tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled(), are_progress_bars_disabled())
    assert after == before
    os.write(2, b"native after\n")
    assert "native after" in capfd.readouterr().err


@pytest.mark.parametrize("how", ["verbose", "debug"])
def test_verbose_and_debug_show_everything(how: str, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "debug":
        monkeypatch.setenv("OLLAMA_SLIM_DEBUG", "1")
    with pytest.warns(FutureWarning), quiet(enabled=how != "verbose") as q:
        _third_party_noise()
    shown = capfd.readouterr()
    assert q.log is None and not q.active
    assert "llama_context" in shown.err and "native stdout line" in shown.out and "Loading weights" in shown.err


def test_errors_pass_through_and_a_crash_shows_the_silenced_tail(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError), quiet():
        os.write(2, b"llama_model_load: something native\n")
        raise UsageError("--keep must be at least 1")
    assert capfd.readouterr().err == ""  # the CLI prints a SlimError's one line; nothing else
    with pytest.raises(ZeroDivisionError), quiet():
        os.write(2, b"llama_model_load: the reason it crashed\n")
        1 / 0  # noqa: B018
    shown = capfd.readouterr().err
    assert "silenced third-party output" in shown and "the reason it crashed" in shown
    os.write(2, b"restored\n")
    assert "restored" in capfd.readouterr().err


def test_quantizer_failure_says_why(tmp_path: Path) -> None:
    """llama.cpp's own message reaches the error (its log was once read after the file was gone)."""
    from ollama_slim.gguf.export import quantize_gguf

    bad = tmp_path / "bad.gguf"
    bad.write_text("not a gguf")
    # an ExportError naming the quantizer, not a FileNotFoundError from its log (what llama.cpp logs
    # depends on the log callback earlier tests installed, so the reason itself is not asserted)
    with pytest.raises(ExportError, match="llama.cpp's quantizer failed"):
        quantize_gguf(src=bad, dst=tmp_path / "out.gguf", llama_ftype="LLAMA_FTYPE_MOSTLY_Q4_K_M")


def test_stage_display_one_line_per_stage_and_a_bar_for_counted_work() -> None:
    out = io.StringIO()
    progress = Progress(console=Console(file=out, width=120), disable=True)
    show = StageDisplay(progress)
    show("resolve: skip")
    show("finetune: run")
    show("finetune: step 3/150 loss 2.710")
    task = progress.tasks[0]
    assert (task.description, task.completed, task.total, task.fields["detail"]) == ("finetune", 3, 150, "step 3/150 loss 2.710")
    show("finetune: done")
    show("eval: run")
    show("eval: slim on [odd] data")  # markup-like text is shown as it is
    show("eval: done")
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["-", "resolve", "skipped:", "done", "before", "with", "these", "options"]
    assert lines[1].split()[:2] == ["✓", "finetune"] and lines[1].endswith("step 3/150 loss 2.710")
    assert lines[2].endswith("slim on [odd] data") and progress.tasks == []
