"""Safety rows of the robustness issue: no pickle, no remote code, no token leaks."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ollama_slim.cli import main
from ollama_slim.errors import SourceError
from ollama_slim.models.modeling import LoadOptions
from ollama_slim.models.sources import resolve

SOURCE = Path(__file__).resolve().parents[1] / "ollama_slim"


def _code() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in SOURCE.rglob("*.py")}


def test_torch_load_only_with_weights_only() -> None:
    for path, text in _code().items():
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert "import pickle" not in text and "pickle.load" not in text, path


def test_remote_code_is_off_unless_asked() -> None:
    assert LoadOptions().trust_remote_code is False
    for path, text in _code().items():
        assert "trust_remote_code=True" not in text, path


def test_pickled_weights_are_refused(tmp_path: Path, tiny_llama: Path) -> None:
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(tiny_llama / "config.json", d / "config.json")
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(SourceError, match="no safetensors weights"):
        resolve(str(d))


def test_token_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "hf_" + "s3cr3t" * 6
    monkeypatch.setenv("HF_TOKEN", secret)
    for args in (["resolve", "qwen2.5:0.5b"], ["resolve", "x", "--hf", "nobody/nothing"], ["resolve", "qwen2.5:05b"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code != 0
        assert secret not in result.output
