"""Robustness rows: broken weight files, unsupported GGUFs, SIGKILL during export."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ollama_slim.errors import SourceError
from ollama_slim.models.sources import resolve


def test_truncated_safetensors(tmp_path: Path, tiny_llama: Path) -> None:
    d = tmp_path / "cut"
    shutil.copytree(tiny_llama, d)
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SourceError) as err:
        resolve(str(d))
    assert "is not a valid safetensors file" in err.value.one_line()


def test_gguf_of_unsupported_architecture_writes_nothing(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    from ollama_slim import paths

    path = tmp_path / "mamba.gguf"
    writer = GGUFWriter(str(path), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    before = set((paths.home() / "models").glob("*")) if (paths.home() / "models").exists() else set()
    with pytest.raises(SourceError) as err:
        resolve(str(path))
    assert "GGUF architecture 'mamba' cannot be slimmed" in err.value.one_line()
    after = set((paths.home() / "models").glob("*")) if (paths.home() / "models").exists() else set()
    assert after == before


_EXPORT = """
import sys
from pathlib import Path
from ollama_slim.gguf.export import ExportConfig, export_gguf
export_gguf(ExportConfig(model_dir=Path(sys.argv[1]), outtype="f32", out=Path(sys.argv[2]), force=True, check=False))
"""


def _export(model_dir: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _EXPORT, str(model_dir), str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_temp(folder: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Wait until the export's temp file appears beside the target (it is writing)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if any(p.name != "model.gguf" for p in folder.iterdir() if "gguf" in p.name or p.name.startswith(".")):
            return True
        time.sleep(0.01)
    return False


def test_sigkill_during_export_keeps_the_old_file(tmp_path: Path, tiny_llama: Path) -> None:
    """Killed at any moment, an export leaves the old GGUF or the new one; a rerun completes."""
    out = tmp_path / "model.gguf"
    assert _export(tiny_llama, out).wait(timeout=300) == 0
    old = hashlib.sha256(out.read_bytes()).hexdigest()
    for delay in (0.0, 0.05):
        proc = _export(tiny_llama, out)
        assert _wait_for_temp(tmp_path, proc), "the export never started writing"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == old  # whole: never a half-written GGUF
    from llama_cpp import Llama

    assert _export(tiny_llama, out).wait(timeout=300) == 0
    llm = Llama(model_path=str(out), n_ctx=64, verbose=False)
    assert llm.n_vocab() > 0
    del llm
    os.sync()
