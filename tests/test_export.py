"""The export stage: GGUF round trips through llama.cpp, quantized outtypes, the SmolLM2 end to end."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ollama_slim.slimming.build import BuildConfig, build_compact
from ollama_slim.cli import main
from ollama_slim.errors import ExportError, UsageError
from ollama_slim.gguf.export import ExportConfig, check_gguf, export_gguf
from ollama_slim.gguf.tokenizer import pre_tokenizer_name
from ollama_slim.models.modeling import load

KEPT = (0, 2, 5)
S10 = "0,1,2,3,10,11,20,27,28,29"


@pytest.fixture(scope="module")
def compact_llama(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compact") / "llama"
    return build_compact(BuildConfig(model=str(tiny_llama), layers=KEPT, out_dir=out)).out_dir


@pytest.fixture(scope="module")
def compact_qwen2(tiny_qwen2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compact") / "qwen2"
    return build_compact(BuildConfig(model=str(tiny_qwen2), layers=KEPT, out_dir=out)).out_dir


def _fields(path: Path) -> tuple[dict, dict]:
    """``(metadata, {tensor name: type name})`` of a GGUF."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return meta, {t.name: t.tensor_type.name for t in reader.tensors}


def _llama_cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    """``(len(ids), vocab)`` logits of the GGUF in llama.cpp, independently of the exporter's check."""
    from llama_cpp import GGML_TYPE_F32, Llama

    llm = Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)])
    llm.close()
    return out


def _round_trip(model_dir: Path, out: Path, *, independent: bool = True) -> tuple[dict, dict]:
    """Export f32, check it as the issue says, and (tiny models) compare one prompt independently."""
    result = export_gguf(ExportConfig(model_dir=model_dir, outtype="f32", out=out))
    check = result.check
    assert check.passed and check.n_prompts == 20 and check.top1_agree == 20, check
    assert check.max_abs_diff <= 1e-3 * check.max_abs_logit, check
    if not independent:
        return _fields(out)
    model, tokenizer = load(model_dir)
    ids = tokenizer("Logitech wireless mouse for laptop").input_ids
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    got = _llama_cpp_logits(out, ids)
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()
    assert (got.argmax(-1) == expected.argmax(-1)).all()
    return _fields(out)


def test_round_trip_tiny_llama(compact_llama: Path, tmp_path: Path) -> None:
    meta, tensors = _round_trip(compact_llama, tmp_path / "llama.gguf")
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 3
    assert "output.weight" not in tensors and "token_embd.weight" in tensors  # tied, as llama.cpp expects
    assert {f"blk.{i}.attn_q.weight" for i in range(3)} <= set(tensors) and "blk.3.attn_q.weight" not in tensors
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.chat_template"] == (compact_llama / "chat_template.jinja").read_text()
    assert len(meta["tokenizer.ggml.tokens"]) == meta["llama.vocab_size"]
    assert list(meta["ollama_slim.kept_layers"]) == list(KEPT) and meta["ollama_slim.original_layers"] == 6
    assert meta["ollama_slim.bridge"] == "none"
    assert json.loads(meta["ollama_slim.provenance"])["source"]["arch"] == "llama"


def test_round_trip_tiny_qwen2_with_biases(compact_qwen2: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(compact_qwen2 / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("model.layers.0.self_attn.q_proj.bias").abs().max() > 0.01  # biases are real
    meta, tensors = _round_trip(compact_qwen2, tmp_path / "qwen2.gguf")
    assert meta["general.architecture"] == "qwen2" and meta["qwen2.block_count"] == 3
    assert {f"blk.{i}.attn_{p}.bias" for i in range(3) for p in "qkv"} <= set(tensors)


def test_round_trip_untied_qwen3(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    from conftest import make_tiny_model

    model_dir = make_tiny_model(tmp_path / "qwen3", tiny_tokenizer_dir, arch="qwen3", layers=3, seed=2, tied=False)
    meta, tensors = _round_trip(model_dir, tmp_path / "qwen3.gguf")
    assert meta["general.architecture"] == "qwen3" and "output.weight" in tensors  # untied: its own output layer
    assert "blk.0.attn_q_norm.weight" in tensors and "ollama_slim.kept_layers" not in meta  # a plain HF dir


def test_check_catches_a_broken_export(compact_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ollama_slim.gguf.export as export

    monkeypatch.setattr(export, "_permute_for_rope", lambda array, **_: array)  # forget llama.cpp's rope layout
    out = tmp_path / "out" / "broken.gguf"
    with pytest.raises(ExportError, match="llama.cpp disagrees with transformers on the f32 export"):
        export_gguf(ExportConfig(model_dir=compact_llama, outtype="f32", out=out))
    assert list(out.parent.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize(
    ("rope", "tensor"),
    [
        ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, "rope_freqs.weight"),
        ({"rope_type": "linear", "factor": 4.0}, None),
    ],
)
def test_rope_scaling(tiny_llama: Path, tmp_path: Path, rope: dict, tensor: str | None) -> None:
    model_dir = tmp_path / "scaled-rope"
    shutil.copytree(tiny_llama, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["rope_parameters"] = {"rope_theta": 10000.0, **rope}
    (model_dir / "config.json").write_text(json.dumps(config))
    result = export_gguf(ExportConfig(model_dir=model_dir, outtype="f32", out=tmp_path / "r.gguf"))
    assert result.check.passed and result.check.rel_diff <= 1e-3
    meta, tensors = _fields(tmp_path / "r.gguf")
    if tensor:
        assert tensors[tensor] == "F32"
    else:
        assert meta["llama.rope.scaling.type"] == rope["rope_type"] and meta["llama.rope.scaling.factor"] == rope["factor"]
    plain = check_gguf(tmp_path / "r.gguf", tiny_llama)  # the same GGUF against the unscaled model: must differ
    assert not plain.passed and plain.rel_diff > 10 * result.check.rel_diff


@pytest.mark.parametrize(("outtype", "expected"), [("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0"), ("q4_k_m", None)])
def test_quantized_exports_load_in_llama_cpp(compact_llama: Path, tmp_path: Path, outtype: str, expected: str | None) -> None:
    out = tmp_path / "out" / f"m-{outtype}.gguf"
    result = export_gguf(ExportConfig(model_dir=compact_llama, outtype=outtype, out=out))
    assert result.check.passed and result.check.top1_agree >= 15, result.check
    meta, tensors = _fields(out)
    assert tensors["blk.0.attn_norm.weight"] == "F32"
    if expected:
        assert tensors["blk.0.ffn_up.weight"] == expected
    else:  # llama.cpp's quantizer: K-quants where rows allow, its own fallbacks (here 64 columns) elsewhere
        assert meta["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
        assert tensors["blk.0.ffn_up.weight"] in {"Q4_K", "Q5_0", "Q5_1", "Q8_0"} and tensors["blk.0.ffn_up.weight"] != "F32"
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no f32 intermediate left behind


def test_no_overwrite_without_force(compact_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    out.write_bytes(b"precious")
    with pytest.raises(UsageError, match="already exists"):
        export_gguf(ExportConfig(model_dir=compact_llama, outtype="q8_0", out=out, check=False))
    assert out.read_bytes() == b"precious"
    export_gguf(ExportConfig(model_dir=compact_llama, outtype="q8_0", out=out, check=False, force=True))
    assert out.read_bytes()[:4] == b"GGUF"


def test_export_command(compact_qwen2: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "q.gguf"
    ok = runner.invoke(main, ["export", str(compact_qwen2), "--outtype", "q8_0", "--out", str(out), "--json"])
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    assert report["check"]["passed"] and report["path"] == str(out) and out.is_file()
    again = runner.invoke(main, ["export", str(compact_qwen2), "--outtype", "q8_0", "--out", str(out)])
    assert again.exit_code == 2 and "already exists. pass --force" in again.output
    donor = runner.invoke(main, ["export", str(compact_qwen2), "--outtype", "f16", "--out", str(tmp_path / "d.gguf"), "--tokenizer-gguf", str(out), "--no-check"])
    assert donor.exit_code == 0 and "source-gguf q.gguf" in donor.output and "skipped (--no-check)" in donor.output, donor.output
    missing = runner.invoke(main, ["export", str(tmp_path / "nope"), "--outtype", "f32"])
    assert missing.exit_code == 2 and "is not a directory" in missing.output


def test_tokenizer_copied_from_a_given_gguf(compact_llama: Path, compact_qwen2: Path, tmp_path: Path) -> None:
    donor = tmp_path / "donor.gguf"
    export_gguf(ExportConfig(model_dir=compact_qwen2, outtype="q8_0", out=donor, check=False))
    from gguf import GGUFReader

    # transformers saves the tiny Qwen2's tokenizer with Qwen2's split regex: the rule table names it
    assert GGUFReader(str(donor)).get_field("tokenizer.ggml.pre").contents() == "qwen2"
    out = tmp_path / "m.gguf"
    result = export_gguf(ExportConfig(model_dir=compact_llama, outtype="f32", out=out, tokenizer_gguf=donor))
    assert result.tokenizer == "source-gguf donor.gguf" and result.pre_tokenizer == "qwen2" and result.check.passed
    wrong = tmp_path / "wrong.gguf"
    shutil.copy(donor, wrong)
    bad_vocab = json.loads((compact_llama / "config.json").read_text())
    small = tmp_path / "small"
    shutil.copytree(compact_llama, small)
    (small / "config.json").write_text(json.dumps({**bad_vocab, "vocab_size": 100}))
    with pytest.raises(ExportError, match="has no tokenizer for a 100-token vocabulary"):
        export_gguf(ExportConfig(model_dir=small, outtype="f32", out=tmp_path / "x.gguf", tokenizer_gguf=wrong))


def test_unexportable_models_fail_clearly_and_leave_nothing(compact_llama: Path, tmp_path: Path) -> None:
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(compact_llama, no_tok)
    (no_tok / "tokenizer.json").unlink()
    (no_tok / "slim.json").unlink()
    out = tmp_path / "out" / "m.gguf"
    with pytest.raises(ExportError, match="has no tokenizer.json"):
        export_gguf(ExportConfig(model_dir=no_tok, outtype="f32", out=out))
    yarn = tmp_path / "yarn"
    shutil.copytree(compact_llama, yarn)
    config = json.loads((yarn / "config.json").read_text())
    (yarn / "config.json").write_text(json.dumps({**config, "rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0}}))
    with pytest.raises(ExportError, match="rope type 'dynamic' cannot be exported yet"):
        export_gguf(ExportConfig(model_dir=yarn, outtype="q4_k_m", out=out))
    assert list(out.parent.iterdir()) == []


def test_pre_tokenizer_rules() -> None:
    qwen2 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
    split = {"type": "Split", "pattern": {"Regex": qwen2}, "behavior": "Isolated", "invert": False}
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [split, {"type": "ByteLevel", "use_regex": False}]}) == "qwen2"
    llama3 = {**split, "pattern": {"Regex": qwen2.replace(r"\p{N}|", r"\p{N}{1,3}|")}}
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [llama3, {"type": "ByteLevel", "use_regex": False}]}) == "llama-bpe"
    smollm = [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}]
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": smollm}) == "smollm"
    with pytest.raises(ExportError, match="no llama.cpp pre-tokenizer is known"):
        pre_tokenizer_name({"type": "Whitespace"})


# --- the real SmolLM2-135M ---------------------------------------------------------------


@pytest.fixture(scope="module")
def s10(smollm2, session_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ollama-slim build smollm2:135m --layers 0,1,2,3,10,11,20,27,28,29 --out s10``, offline."""
    work = tmp_path_factory.mktemp("smollm2-s10")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"OLLAMA_SLIM_HOME": str(session_home), "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / "hf"), "OLLAMA_MODELS": str(work / "ollama")}.items():
            mp.setenv(key, value)
        mp.chdir(work)
        result = CliRunner().invoke(main, ["build", "smollm2:135m", "--layers", S10, "--out", "s10"])
    assert result.exit_code == 0, result.output
    return work / "s10"


@pytest.mark.slow
def test_round_trip_smollm2_cut_to_10_layers(s10: Path, tmp_path: Path) -> None:
    meta, tensors = _round_trip(s10, tmp_path / "s10-f32.gguf", independent=False)
    assert meta["llama.block_count"] == 10 and "output.weight" not in tensors
    assert meta["tokenizer.ggml.pre"] == "smollm"  # copied from the packaged GGUF
    assert list(meta["ollama_slim.kept_layers"]) == [int(i) for i in S10.split(",")]
    assert meta["ollama_slim.source"] == "smollm2:135m"


@pytest.mark.slow
def test_done_when_q8_0_answers_a_chat_prompt_in_words(s10: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_cpp import Llama

    monkeypatch.chdir(s10.parent)
    result = CliRunner().invoke(main, ["export", "s10", "--outtype", "q8_0"])
    assert result.exit_code == 0, result.output
    gguf_path = s10.parent / "s10-q8_0.gguf"
    assert gguf_path.is_file() and "passed" in result.output
    llm = Llama(model_path=str(gguf_path), n_ctx=256, verbose=False, n_threads=2, seed=0)
    assert llm.metadata["tokenizer.chat_template"] == (s10 / "chat_template.jinja").read_text()
    reply = llm.create_chat_completion(messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=32, temperature=0.0)
    text = reply["choices"][0]["message"]["content"]
    words = re.findall(r"[A-Za-z]{2,}", text)
    assert len(words) >= 3, text
    llm.close()
