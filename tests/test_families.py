"""The mechanics over every family in the table (``pytest -k family``).

Each family gets a tiny random model built from its table entry (``tiny``): slicing is
exact, every bridge it allows folds exactly, the layer runner computes what the model
computes (on prompts longer than any sliding window), the f32 GGUF gives transformers'
logits in llama.cpp (also for a kept set whose layer types differ from llama.cpp's index
rule, through the per-layer pattern array), quantized exports pass their thresholds, and
a fine-tune resumes to identical weights. A new family cannot land half-added.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import _CORPUS, make_tiny_model
from ollama_slim.cli import main
from ollama_slim.gguf.check import check_thresholds
from ollama_slim.gguf.export import ExportConfig, export_gguf
from ollama_slim.models.families import family, supported
from ollama_slim.models.lm import LayerRunner, layer_subset
from ollama_slim.models.lm.batching import pack
from ollama_slim.models.modeling import load
from ollama_slim.slimming.bridges import BRIDGES, attach_bridge, fit_bridge, fold_bridge, random_calibration
from ollama_slim.slimming.build import save_compact, slice_model
from ollama_slim.slimming.patterns import matches, original_types, suggest

FAMILIES = supported()
LONG = [(7 * k + 3) % 300 + 5 for k in range(40)]  # 40 token ids: five times the tiny sliding windows


@pytest.fixture(scope="session", params=FAMILIES)
def family_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> tuple[str, Path]:
    name = request.param
    tied = family(name).tiny.get("tie_word_embeddings", True)
    return name, make_tiny_model(tmp_path_factory.mktemp(f"tiny-{name}"), tiny_tokenizer_dir, arch=name, seed=3, tied=tied)


def _config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


def _kept(name: str, model_dir: Path) -> list[int]:
    """About half the layers, odd ones preferred, on positions of their own type."""
    config = _config(model_dir)
    n = config["num_hidden_layers"]
    fam = family(name)
    types = original_types(fam, config)
    if types is None:
        return list(range(1, n, 2))
    kept = suggest(fam, types, n // 2, prefer=range(1, n, 2))
    assert kept is not None and matches(fam, types, kept)
    return kept


def _off_rule(name: str, model_dir: Path) -> list[int] | None:
    """A kept set whose types differ from llama.cpp's index rule (families with a pattern): two sliding layers, then a full one."""
    fam = family(name)
    types = original_types(fam, _config(model_dir))
    if types is None:
        return None
    pattern = fam.layer_pattern
    sliding = [i for i, t in enumerate(types) if t == pattern.sliding]
    full = [i for i, t in enumerate(types) if t == pattern.full]
    kept = [sliding[0], sliding[1], next(i for i in full if i > sliding[1])]
    assert not matches(fam, types, kept)
    return kept


def _logits(model, ids: list[int] = LONG) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0].float()


def test_family_entry_names_the_transformers_class_and_every_tensor(family_model: tuple[str, Path]) -> None:
    from safetensors import safe_open

    from ollama_slim.gguf.export import _gguf_map

    name, model_dir = family_model
    fam = family(name)
    model, _ = load(model_dir)
    assert type(model).__name__ == fam.hf_class
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        for tensor in f.keys():
            if not (fam.tiny.get("tie_word_embeddings", True) and tensor == "lm_head.weight"):
                _gguf_map(fam, tensor)  # raises for a tensor the table does not map


def test_family_slice_equals_the_layer_subset(family_model: tuple[str, Path]) -> None:
    name, model_dir = family_model
    model, _ = load(model_dir)
    kept = _off_rule(name, model_dir) or _kept(name, model_dir)
    compact = slice_model(model, kept)
    with layer_subset(model, kept):
        expected = _logits(model)
    torch.testing.assert_close(_logits(compact), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(_logits(model), expected, atol=1e-3)  # dropping layers matters
    pattern = family(name).layer_pattern
    if pattern is not None:
        types = original_types(family(name), model.config)
        assert compact.config.layer_types == [types[i] for i in kept]


def test_family_bridges_fold_exactly(family_model: tuple[str, Path]) -> None:
    name, model_dir = family_model
    model, _ = load(model_dir)
    kept = _kept(name, model_dir)
    calibration = random_calibration(model, sequences=8, length=24)
    for kind in family(name).bridges:
        assert kind in BRIDGES
        if kind == "none":
            continue
        compact = slice_model(model, kept)
        bridge = fit_bridge(kind, original=model, compact=compact, kept=kept, calibration=calibration)
        assert bridge.gaps, kind
        with attach_bridge(compact, bridge):
            hooked = _logits(compact)
        plain = _logits(compact)
        fold_bridge(compact, bridge)
        torch.testing.assert_close(_logits(compact), hooked, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(plain, hooked, atol=1e-3), kind  # the bridge changes something


def test_family_layer_runner_equals_the_model(family_model: tuple[str, Path]) -> None:
    name, model_dir = family_model
    model, _ = load(model_dir)
    prompt, conts = LONG[:30], [LONG[30:34], LONG[34:40]]
    batch = pack([(prompt, conts)], dtype=torch.float32)
    runner = LayerRunner(model)
    with torch.no_grad():
        hidden = runner.embed_batch(batch)
        for i in range(runner.num_layers):
            hidden = runner.layer(i, hidden, batch)
        got = runner.logprobs(hidden, batch)
        expected = []
        for cont in conts:
            ids = prompt + cont
            logp = torch.log_softmax(_logits(model, ids), -1)
            expected += [logp[len(prompt) - 1 + k, token] for k, token in enumerate(cont)]
    torch.testing.assert_close(got, torch.stack(expected), rtol=0, atol=1e-4)


def _compact_dir(name: str, model_dir: Path, kept: list[int], out: Path) -> Path:
    model, tokenizer = load(model_dir)
    save_compact(slice_model(model, kept), tokenizer, out, provenance={"source": {"arch": name}, "num_layers": len(model.model.layers), "kept": kept})
    return out


def _prompts() -> tuple[str, ...]:
    return tuple(" ".join([p] * 3) for p in _CORPUS)  # 3x each: longer than the tiny windows


@pytest.mark.parametrize("rule", ["follows", "breaks"])
def test_family_f32_gguf_matches_transformers_in_llama_cpp(family_model: tuple[str, Path], tmp_path: Path, rule: str) -> None:
    import gguf

    name, model_dir = family_model
    kept = _kept(name, model_dir) if rule == "follows" else _off_rule(name, model_dir)
    if kept is None:
        pytest.skip(f"{name} has no layer-type pattern")
    compact = _compact_dir(name, model_dir, kept, tmp_path / "compact")
    result = export_gguf(ExportConfig(model_dir=compact, outtype="f32", out=tmp_path / "m.gguf", prompts=_prompts()))
    check = result.check
    assert check.passed and check.top1_agree == check.n_prompts and check.rel_diff < 1e-3, check  # ggml-cpu tabulates GELU in f16: ~5e-4 on gemma3
    reader = gguf.GGUFReader(str(result.path))
    arch = family(name).gguf_arch
    field = reader.get_field(f"{arch}.attention.sliding_window_pattern")
    pattern = family(name).layer_pattern
    if pattern is None:
        assert field is None
    else:
        types = original_types(family(name), _config(model_dir))
        assert [bool(v) for v in field.contents()] == [types[i] == pattern.sliding for i in kept]


def test_family_pattern_array_is_what_makes_an_off_rule_set_right(tmp_path: Path, tiny_tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the per-layer array (what Ollama's engine and older llama.cpp do), an off-rule set computes something else."""
    import ollama_slim.gguf.export as export

    model_dir = make_tiny_model(tmp_path / "g", tiny_tokenizer_dir, arch="gemma3_text", seed=4)
    kept = _off_rule("gemma3_text", model_dir)
    compact = _compact_dir("gemma3_text", model_dir, kept, tmp_path / "compact")
    real = export._add_layer_pattern

    def window_only(writer, *, fam, hf_config):
        real(writer, fam=fam, hf_config={**hf_config, "layer_types": [fam.layer_pattern.sliding] * len(hf_config["layer_types"])})
        writer.kv_data[0].pop(f"{fam.gguf_arch}.attention.sliding_window_pattern")

    monkeypatch.setattr(export, "_add_layer_pattern", window_only)
    from ollama_slim.errors import ExportError

    with pytest.raises(ExportError, match="llama.cpp disagrees"):
        export_gguf(ExportConfig(model_dir=compact, outtype="f32", out=tmp_path / "m.gguf", prompts=_prompts()))


def test_family_quantized_exports_pass_their_checks(family_model: tuple[str, Path], tmp_path: Path) -> None:
    name, model_dir = family_model
    compact = _compact_dir(name, model_dir, _kept(name, model_dir), tmp_path / "compact")
    outtypes = ["q8_0"] + (["mxfp4"] if family(name).mlp == "experts" else [])
    for outtype in outtypes:
        result = export_gguf(ExportConfig(model_dir=compact, outtype=outtype, out=tmp_path / f"{outtype}.gguf", prompts=_prompts()))
        assert result.check.passed and result.check.thresholds == check_thresholds(outtype), result.check
    if family(name).mlp == "experts":
        import gguf

        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "mxfp4.gguf")).tensors}
        assert types["blk.0.ffn_down_exps.weight"] == "MXFP4" and types["blk.0.attn_q.weight"] == "Q8_0"
        assert types["blk.0.ffn_gate_inp.weight"] == "F32"  # the router stays float, as llama.cpp keeps it


def test_family_finetune_resumes_to_identical_weights(family_model: tuple[str, Path], tmp_path: Path) -> None:
    from ollama_slim.slimming import finetune as ft

    from test_finetune import _weights, tiny_data  # noqa: F401 - the fixture's function

    name, model_dir = family_model
    data = tmp_path / "data"
    data.mkdir()
    items = [{"item_id": 100 + i, "title": t} for i, t in enumerate(_CORPUS[:8])]
    (data / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    rows = ["user_id\titem_id\ttimestamp"] + [f"{u}\t{100 + (u * 3 + k) % 8}\t{1000 + k}" for u in range(12) for k in range(6)]
    (data / "interactions.tsv").write_text("\n".join(rows) + "\n")

    def config(out: str) -> ft.FinetuneConfig:
        return ft.FinetuneConfig(model=str(model_dir), data=str(data), out_dir=tmp_path / out, steps=4, lora_rank=4, lr=5e-3, batch_size=4, checkpoint_every=2, seed=3)

    straight = ft.finetune(config("a"))

    def stop(progress: ft.FinetuneProgress) -> None:
        if progress.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ft.finetune(config("b"), on_step=stop)
    resumed = ft.finetune(config("b"))
    assert resumed.resumed_from == 2 and resumed.losses == straight.losses
    a, b = _weights(straight.out_dir), _weights(resumed.out_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], w) for k, w in _weights(model_dir).items() if k in a)  # it trained


def test_family_pattern_breaking_layers_fail_in_one_line(family_model: tuple[str, Path], tmp_path: Path) -> None:
    name, model_dir = family_model
    kept = _off_rule(name, model_dir)
    if kept is None:
        pytest.skip(f"{name} has no layer-type pattern")
    result = CliRunner().invoke(main, ["build", str(model_dir), "--layers", ",".join(map(str, kept)), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    bad = next(layer for j, layer in enumerate(kept) if original_types(family(name), _config(model_dir))[layer] != family(name).layer_pattern.index_type(j))
    assert "breaks" in lines[0] and f"layer {bad} " in lines[0], result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("strategy", ["backward", "forward", "ranked"])
def test_family_selection_never_breaks_the_pattern(family_model: tuple[str, Path], tmp_path: Path, strategy: str) -> None:
    from toy_data import write_toy_data

    name, model_dir = family_model
    fam = family(name)
    if fam.layer_pattern is None:
        pytest.skip(f"{name} has no layer-type pattern")
    data = write_toy_data(tmp_path / "toy")
    n = _config(model_dir)["num_hidden_layers"]
    for keep in (3, n // 2):
        result = CliRunner().invoke(main, ["select", str(model_dir), "--keep", str(keep), "--strategy", strategy, "--data", str(data),
                                           "--val-users", "4", "--run-dir", str(tmp_path / f"run{keep}")])
        assert result.exit_code == 0, result.output
        kept = json.loads((tmp_path / f"run{keep}" / "selection.json").read_text())["kept"]
        assert len(kept) == keep and matches(fam, original_types(fam, _config(model_dir)), kept), kept


def test_a_family_defined_only_in_a_test_table(tmp_path: Path, tiny_tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain Llama-layout family is one table entry: Mistral, added by a user table, slices, folds and exports."""
    from ollama_slim.models import families

    extra = tmp_path / "families.json"
    extra.write_text(json.dumps({"mistral": {"extends": "llama", "hf_class": "MistralForCausalLM"}}))
    monkeypatch.setenv("OLLAMA_SLIM_FAMILIES", str(extra))
    assert "mistral" in families.supported()
    model_dir = make_tiny_model(tmp_path / "mistral", tiny_tokenizer_dir, arch="mistral", seed=5)
    model, _ = load(model_dir)
    kept = [0, 2, 5]
    compact = slice_model(model, kept)
    calibration = random_calibration(model, sequences=8, length=24)
    bridge = fit_bridge("mlp-fold+rotation", original=model, compact=compact, kept=kept, calibration=calibration)
    with attach_bridge(compact, bridge):
        hooked = _logits(compact)
    fold_bridge(compact, bridge)
    torch.testing.assert_close(_logits(compact), hooked, rtol=1e-4, atol=1e-4)
    out = _compact_dir("mistral", model_dir, kept, tmp_path / "compact")
    result = export_gguf(ExportConfig(model_dir=out, outtype="f32", out=tmp_path / "m.gguf"))
    assert result.check.passed and result.check.top1_agree == 20, result.check
    monkeypatch.delenv("OLLAMA_SLIM_FAMILIES")
    from ollama_slim.errors import UnsupportedArchitectureError

    with pytest.raises(UnsupportedArchitectureError):
        families.family("mistral")


def test_family_mxfp4_experts_copy_untouched_mxfp4_weights_without_loss(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    """gpt-oss ships its experts in MXFP4: experts that were MXFP4 and stay untouched come back bit for bit."""
    import gguf
    from safetensors.torch import load_file, save_file

    model_dir = make_tiny_model(tmp_path / "oss", tiny_tokenizer_dir, arch="gpt_oss", seed=6, tied=False)
    weights = load_file(str(model_dir / "model.safetensors"))
    mx = gguf.GGMLQuantizationType.MXFP4
    for name in [k for k in weights if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj")]:
        stored = weights[name].float().numpy().swapaxes(-1, -2)  # rows along the input, as GGUF stores them
        weights[name] = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(stored, mx), mx).reshape(stored.shape).swapaxes(-1, -2).copy())
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})  # as if dequantized from an MXFP4 checkpoint
    compact = _compact_dir("gpt_oss", model_dir, [0, 1, 2], tmp_path / "compact")
    out = export_gguf(ExportConfig(model_dir=compact, outtype="mxfp4", out=tmp_path / "m.gguf", prompts=_prompts())).path
    tensors = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    kept = load_file(str(compact / "model.safetensors"))
    for j in range(3):
        down = gguf.quants.dequantize(tensors[f"blk.{j}.ffn_down_exps.weight"].data, mx)
        hf_down = kept[f"model.layers.{j}.mlp.experts.down_proj"].numpy().swapaxes(-1, -2)
        assert np.array_equal(down.reshape(hf_down.shape), hf_down)
        gate = gguf.quants.dequantize(tensors[f"blk.{j}.ffn_gate_exps.weight"].data, mx)
        hf_gate = kept[f"model.layers.{j}.mlp.experts.gate_up_proj"].numpy()[..., ::2].swapaxes(-1, -2)
        assert np.array_equal(gate.reshape(hf_gate.shape), hf_gate)


@pytest.mark.parametrize(("tag", "chat", "stop"), [("gemma3:270m", "gemma", "<end_of_turn>"), ("gpt-oss:20b", "harmony", "<|return|>")])
def test_family_tags_give_the_family_chat_template(tag: str, chat: str, stop: str) -> None:
    from ollama_slim.models.tags import lookup, parse_name
    from ollama_slim.ollama.modelfile import chat_for

    entry = lookup(parse_name(tag))
    assert entry is not None and family(entry.arch).chat == chat == entry.chat
    spec = chat_for(original=tag)
    assert stop in spec.stops and spec.template and chat in spec.source


@pytest.mark.parametrize("task_format", ["chat", "completion"])
def test_family_prune_runs_end_to_end(family_model: tuple[str, Path], task_format: str, tmp_path: Path) -> None:
    """score, select, build (the family's bridge), heal (chat, the default: every weight on 8 answers a prompt in the family's
    chat template; completion: LoRA with the original as teacher), export (mxfp4 for experts), bench, eval and the report, on the tiny model."""
    import gguf

    from toy_data import write_toy_data

    name, model_dir = family_model
    fam = family(name)
    data = write_toy_data(tmp_path / "toy")
    n = _config(model_dir)["num_hidden_layers"]
    outtype = "mxfp4" if fam.mlp == "experts" else "q8_0"
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["prune", str(model_dir), "--keep", str(n // 2), "--data", str(data), "--steps", "2", "--batch-size", "2",
                                       "--calib-users", "4", "--val-users", "4", "--eval-users", "4", "--bench-repeats", "1", "--outtype", outtype,
                                       "--no-register", "--no-reference", "--run-dir", str(run), "--task-format", task_format])
    assert result.exit_code == 0, result.output
    kept = json.loads((run / "selection.json").read_text())["kept"]
    assert len(kept) == n // 2 and matches(fam, original_types(fam, _config(model_dir)), kept)
    bridge = json.loads((run / "build.json").read_text())["bridge"]["kind"]
    assert bridge == ("mlp-fold" if "mlp-fold" in fam.bridges else "none")
    healed = json.loads((run / "finetune.json").read_text())
    if task_format == "chat":
        assert healed["mode"] == "full" and healed["teacher"] is None, healed
    else:
        assert healed["mode"].startswith("lora") and healed["teacher"]["forwards"] > 0 and healed["teacher"]["computed_examples"] > 0  # the original as teacher
    check = json.loads((run / "export.json").read_text())["check"]
    assert check["passed"], check
    reader = gguf.GGUFReader(str(run / "model.gguf"))
    assert reader.get_field("general.architecture").contents() == fam.gguf_arch
    assert reader.get_field(f"{fam.gguf_arch}.block_count").contents() == n // 2
    report = (run / "report.md").read_text()
    assert "slim (healed)" in report and f"slim as shipped ({outtype} GGUF through llama.cpp)" in report
    shipped = json.loads((run / "eval_shipped.json").read_text())
    assert shipped["backend"] == "llama-cpp" and shipped["model"].endswith("model.gguf")
    asked = json.loads((run / "generation_slim.json").read_text())
    assert asked["users"] == 4 and set(asked["figures"]) >= {"title", "new_title", "target"} and asked["chat"]["system"]
    assert "## Asked in chat" in report and "Example 1 (slim)" in report
