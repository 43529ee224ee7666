"""The build stage: slicing exactness, config renumbering, bad selections, saving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ollama_slim.slimming.build import BuildConfig, build_compact, parse_layers, slice_model, validate_layers
from ollama_slim.cli import main
from ollama_slim.errors import SelectionError, UsageError
from ollama_slim.models.modeling import load

IDS = [[340, 91, 323, 280, 300, 302, 17, 45, 99, 120, 7, 250, 33, 64, 81, 200]]


class _Skip(torch.nn.Module):
    """A decoder layer that passes the hidden state through unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def _logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(ids), use_cache=False).logits


def _skipping(model, kept: list[int]):
    """``model`` itself with every layer not in ``kept`` replaced by a pass-through."""
    for i in range(len(model.model.layers)):
        if i not in kept:
            model.model.layers[i] = _Skip()
    return model


def _load_with_layer_types(model_dir: Path):
    """A tiny Qwen2 whose layers alternate full and sliding attention (window 3)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    config.use_sliding_window, config.sliding_window = True, 3
    config.layer_types = ["full_attention", "sliding_attention"] * (config.num_hidden_layers // 2)
    config._attn_implementation = "eager"
    return AutoModelForCausalLM.from_pretrained(model_dir, config=config).eval()


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2"])
def test_compact_equals_original_with_layers_skipped(fixture: str, request: pytest.FixtureRequest) -> None:
    model, _ = load(request.getfixturevalue(fixture))
    kept = [0, 2, 5]
    compact = slice_model(model, kept)
    assert len(model.model.layers) == 6 and model.config.num_hidden_layers == 6  # original untouched
    expected = _logits(_skipping(model, kept))
    torch.testing.assert_close(_logits(compact), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(_logits(load(request.getfixturevalue(fixture))[0]), expected, atol=1e-3)  # skipping matters


def test_renumbering_follows_layer_types(tiny_qwen2: Path) -> None:
    original = _load_with_layer_types(tiny_qwen2)
    kept = [1, 2, 3, 4]  # sliding, full, sliding, full
    compact = slice_model(original, kept)
    assert compact.config.num_hidden_layers == 4
    assert compact.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    assert [layer.self_attn.layer_idx for layer in compact.model.layers] == [0, 1, 2, 3]
    assert original.config.layer_types[0] == "full_attention" and len(original.config.layer_types) == 6
    # the masks follow the renumbered list: the compact model equals the original with 0 and 5 skipped
    expected = _logits(_skipping(_load_with_layer_types(tiny_qwen2), kept))
    torch.testing.assert_close(_logits(compact), expected, rtol=0, atol=1e-6)


def test_slice_keeps_tied_embeddings_tied_and_owns_copies(tiny_llama: Path) -> None:
    model, _ = load(tiny_llama)
    compact = slice_model(model, [0, 1])
    assert compact.lm_head.weight is compact.model.embed_tokens.weight
    with torch.no_grad():
        compact.model.layers[0].mlp.down_proj.weight.mul_(2.0)  # a bridge folding in place
    assert not torch.equal(compact.model.layers[0].mlp.down_proj.weight, model.model.layers[0].mlp.down_proj.weight)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([], "no layers to keep"),
        ([0, 2, 2], "layer 2 is listed twice"),
        ([0, 6], "layer 6 does not exist: the model has 6 layers (0..5)"),
        ([-1, 0], "layer -1 does not exist"),
        ([3, 1], "layers must be in increasing order (got 3,1)"),
        ([0, 1, 2, 3, 4, 5], "keeping all 6 layers removes nothing"),
    ],
)
def test_bad_layers_are_refused(layers: list[int], message: str) -> None:
    with pytest.raises(SelectionError) as err:
        validate_layers(layers, num_layers=6)
    assert message in err.value.one_line()


def test_slice_model_may_keep_every_layer_but_build_may_not(tiny_llama: Path, tmp_path: Path) -> None:
    model, _ = load(tiny_llama)
    torch.testing.assert_close(_logits(slice_model(model, list(range(6)))), _logits(model), rtol=0, atol=0)
    with pytest.raises(SelectionError, match="keeping all 6 layers removes nothing"):
        build_compact(BuildConfig(model=str(tiny_llama), layers=tuple(range(6)), out_dir=tmp_path / "all"))
    with pytest.raises(SelectionError, match="listed twice"):
        slice_model(model, [1, 1])


def test_parse_layers() -> None:
    assert parse_layers("0,1,2,27-29") == (0, 1, 2, 27, 28, 29)
    assert parse_layers(" 3, 5 ") == (3, 5)
    with pytest.raises(UsageError, match="'x' is not a layer index"):
        parse_layers("1,x")


def test_build_writes_a_plain_from_pretrained_directory(tiny_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "compact"
    result = build_compact(BuildConfig(model=str(tiny_llama), layers=(0, 2, 5), out_dir=out))
    assert result.kept == (0, 2, 5) and result.num_params_after < result.num_params_before
    assert sorted(p.suffix for p in out.iterdir() if p.suffix in {".bin", ".pt", ".safetensors"}) == [".safetensors"]
    reloaded = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    assert reloaded.config.num_hidden_layers == 3
    expected = _logits(slice_model(load(tiny_llama)[0], [0, 2, 5]))
    torch.testing.assert_close(_logits(reloaded), expected, rtol=0, atol=0)
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    slim = json.loads((out / "slim.json").read_text())
    assert slim["kept"] == [0, 2, 5] and slim["num_layers"] == 6 and slim["bridge"]["kind"] == "none"
    assert slim["source"]["arch"] == "llama" and slim["source"]["origin"] == str(tiny_llama.resolve())


def test_build_never_overwrites_without_force(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "compact"
    build_compact(BuildConfig(model=str(tiny_llama), layers=(0, 1), out_dir=out))
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        build_compact(BuildConfig(model=str(tiny_llama), layers=(4, 5), out_dir=out))
    assert (out / "model.safetensors").read_bytes() == before
    build_compact(BuildConfig(model=str(tiny_llama), layers=(4, 5), out_dir=out, force=True))
    assert json.loads((out / "slim.json").read_text())["kept"] == [4, 5]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_selection_file(tiny_llama: Path, tmp_path: Path) -> None:
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"model": "tiny", "num_layers": 6, "kept": [0, 1, 5], "method": "test"}))
    result = build_compact(BuildConfig(model=str(tiny_llama), selection=selection, out_dir=tmp_path / "a"))
    assert result.kept == (0, 1, 5)
    selection.write_text(json.dumps({"model": "smollm2:135m", "num_layers": 30, "kept": [0, 1, 29]}))
    with pytest.raises(SelectionError, match="is for a model with 30 layers"):
        build_compact(BuildConfig(model=str(tiny_llama), selection=selection, out_dir=tmp_path / "b"))
    with pytest.raises(UsageError, match="exactly one"):
        build_compact(BuildConfig(model=str(tiny_llama), layers=(0,), selection=selection, out_dir=tmp_path / "c"))
    with pytest.raises(UsageError, match="does not exist"):
        build_compact(BuildConfig(model=str(tiny_llama), selection=tmp_path / "missing.json", out_dir=tmp_path / "d"))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_build_command(tiny_qwen2: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "q"
    ok = runner.invoke(main, ["build", str(tiny_qwen2), "--layers", "0-2,5", "--out", str(out), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["kept"] == [0, 1, 2, 5]
    again = runner.invoke(main, ["build", str(tiny_qwen2), "--layers", "0,1", "--out", str(out)])
    assert again.exit_code == 2 and f"Error: {out} already exists. pass --force" in again.output
    bad = runner.invoke(main, ["build", str(tiny_qwen2), "--layers", "0,9", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "layer 9 does not exist: the model has 6 layers" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    bridge = runner.invoke(main, ["build", str(tiny_qwen2), "--layers", "0,1", "--bridge", "nonsense"])
    assert bridge.exit_code == 2 and "'none'" in bridge.output


def test_build_fits_the_bridges_on_every_data_set_given(tiny_llama: Path, tmp_path: Path) -> None:
    """`build --data A --data B`: the bridge's calibration is both sets' train prompts (tokens shared evenly), recorded in slim.json."""
    from toy_data import write_toy_data

    from ollama_slim.models.modeling import load_tokenizer
    from ollama_slim.recsys.data import load_dataset
    from ollama_slim.slimming import bridges as br

    first, second = write_toy_data(tmp_path / "a", seed=1), write_toy_data(tmp_path / "b", seed=2)
    runner = CliRunner()
    outs = {}
    for name, data, extra in (("one", [first], []), ("both", [first, second], []), ("own", [first], ["--own-text"])):
        outs[name] = tmp_path / name
        args = ["build", str(tiny_llama), "--layers", "0,2,5", "--bridge", "mlp-fold", "--out", str(outs[name]), *extra]
        ok = runner.invoke(main, args + [arg for d in data for arg in ("--data", str(d))])
        assert ok.exit_code == 0, ok.output
    slim = {name: json.loads((out / "slim.json").read_text()) for name, out in outs.items()}
    assert slim["both"]["data"] == str(first) and slim["both"]["calib_data"] == [str(second)] and "calib_data" not in slim["one"]
    tokenizer = load_tokenizer(tiny_llama)
    mixed = br.mixed_calibration(tokenizer=tokenizer, datasets=[load_dataset(first), load_dataset(second)])
    assert slim["both"]["bridge"]["calibration"]["sequences"] == len(mixed)
    assert slim["both"]["bridge"]["calibration"]["tokens"] == sum(map(len, mixed))
    assert (outs["one"] / "model.safetensors").read_bytes() != (outs["both"] / "model.safetensors").read_bytes()
    own = br.mixed_calibration(tokenizer=tokenizer, datasets=[load_dataset(first)], own_text_of=load(tiny_llama)[0])  # `--own-text`: the model's samples too
    assert slim["own"]["own_text"] and "own_text" not in slim["one"]
    assert (slim["own"]["bridge"]["calibration"]["sequences"], slim["own"]["bridge"]["calibration"]["tokens"]) == (len(own), sum(map(len, own)))
