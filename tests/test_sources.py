"""Model sources: the tag table, Ollama names, the Ollama store, the packaged SmolLM2."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ollama_slim.cli import main
from ollama_slim.errors import SourceError, UnknownTagError, UnsupportedArchitectureError, UsageError
from ollama_slim.models.sources import resolve
from ollama_slim.models.tags import default_slim_name, lookup, parse_name


@pytest.mark.parametrize(
    ("text", "short"),
    [("qwen", "qwen:latest"), ("qwen2.5:0.5b", "qwen2.5:0.5b"), ("Llama3.2:1B", "llama3.2:1b"), ("me/my-model:v1", "registry.ollama.ai/me/my-model:v1")],
)
def test_parse_name_like_ollama(text: str, short: str) -> None:
    assert parse_name(text).short == short


@pytest.mark.parametrize("bad", ["", "a/b/c/d", "-x", "bad name", "x:y:z!"])
def test_parse_name_rejects_what_ollama_refuses(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_name(bad)


def test_tag_table_covers_the_families() -> None:
    for tag in ["smollm2:135m", "smollm2:360m", "smollm2:1.7b", "qwen2.5:0.5b", "qwen2.5:7b", "qwen3:0.6b", "qwen3:8b", "llama3.2:1b", "llama3.2:3b", "llama3.1:8b", "llama3:8b", "qwen"]:
        assert lookup(parse_name(tag)) is not None, tag
    assert lookup(parse_name("qwen2.5")).tag == "qwen2.5:7b"
    assert default_slim_name(parse_name("qwen")) == "qwen-slim"
    assert default_slim_name(parse_name("smollm2:135m")) == "smollm2-slim"


def test_unknown_tag_suggests_nearest() -> None:
    with pytest.raises(UnknownTagError) as err:
        resolve("qwen2.5:05b")
    assert "qwen2.5:0.5b" in err.value.one_line()


def test_offline_without_source_names_the_options() -> None:
    with pytest.raises(SourceError) as err:
        resolve("qwen2.5:0.5b", offline=True)
    line = err.value.one_line()
    assert "ollama pull qwen2.5:0.5b" in line and "--hf" in line


def test_hf_directory_source(tiny_llama: Path) -> None:
    r = resolve("anything", hf=str(tiny_llama))
    assert (r.arch, r.num_layers, r.source) == ("llama", 6, "hf-dir")
    assert r.num_params > 0


def test_unsupported_architecture(tmp_path: Path, tiny_llama: Path) -> None:
    d = tmp_path / "moe"
    shutil.copytree(tiny_llama, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "mixtral"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError) as err:
        resolve(str(d))
    assert "supported: gemma3_text, gpt_oss, llama, qwen2, qwen3" in err.value.one_line()


def test_what_a_family_cannot_do_is_said_at_resolve(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    from conftest import make_tiny_model

    d = make_tiny_model(tmp_path / "oss", tiny_tokenizer_dir, arch="gpt_oss", tied=False)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "swiglu_limit": 5.0}))
    with pytest.raises(UnsupportedArchitectureError) as err:
        resolve(str(d))
    assert "swiglu_limit is 5.0, not 7.0" in err.value.one_line() and "llama.cpp" in err.value.one_line()


def _store_with(models: Path, blob_bytes: bytes, name: str = "mymodel", tag: str = "latest", *, write_blob: bool = True) -> Path:
    digest = hashlib.sha256(blob_bytes).hexdigest()
    manifest = models / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(blob_bytes)}]}))
    (models / "blobs").mkdir(parents=True, exist_ok=True)
    if write_blob:
        (models / "blobs" / f"sha256-{digest}").write_bytes(blob_bytes)
    return manifest


@pytest.mark.slow
def test_ollama_store_source_with_a_real_gguf(smollm2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "store"
    _store_with(models, Path(smollm2.gguf_path).read_bytes())
    monkeypatch.setenv("OLLAMA_MODELS", str(models))
    r = resolve("mymodel")
    assert (r.source, r.arch, r.num_layers) == ("ollama-store", "llama", 30)
    assert r.origin.startswith(str(models / "blobs"))


def test_manifest_with_missing_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "store"
    _store_with(models, b"GGUF-not-really", write_blob=False)
    monkeypatch.setenv("OLLAMA_MODELS", str(models))
    with pytest.raises(SourceError, match="missing blob"):
        resolve("mymodel")


def test_truncated_gguf_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "store"
    _store_with(models, b"GGUF\x03\x00\x00\x00truncated")
    monkeypatch.setenv("OLLAMA_MODELS", str(models))
    with pytest.raises(SourceError) as err:
        resolve("mymodel")
    assert "truncated or corrupted" in err.value.one_line()
    from ollama_slim import paths

    digest = hashlib.sha256(b"GGUF\x03\x00\x00\x00truncated").hexdigest()
    assert not list((paths.home() / "models").glob(f"*{digest[:16]}*")), "nothing may be written for a broken blob"


@pytest.mark.slow
def test_resolve_smollm2_offline_cli(smollm2) -> None:
    result = CliRunner().invoke(main, ["resolve", "smollm2:135m", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["arch"] == "llama" and info["num_layers"] == 30 and info["source"] == "package"
    assert 130e6 < info["num_params"] < 140e6


def test_cli_error_is_one_line() -> None:
    result = CliRunner().invoke(main, ["resolve", "qwen2.5:05b"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: unknown model")
