"""Bridges: fits recover known maps, folding is exact, folded models export to llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ollama_slim.slimming import bridges as br
from ollama_slim.slimming.build import save_compact, slice_model
from ollama_slim.models.modeling import load

KINDS = sorted(br.BRIDGES)
FIT_KINDS = [k for k in KINDS if k != "none"]


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _fit_fold(model_dir: Path, kind: str, kept: list[int], calibration: br.Calibration, probe: torch.Tensor):
    """``(folded compact model, tokenizer, bridged logits, folded logits, plain-drop logits)``."""
    original, tokenizer = load(model_dir)
    compact = slice_model(original, kept)
    bridge = br.fit_bridge(kind, original=original, compact=compact, kept=kept, calibration=calibration)
    plain = _logits(compact, probe)
    with br.attach_bridge(compact, bridge):
        bridged = _logits(compact, probe)
    br.fold_bridge(compact, bridge)
    return compact, tokenizer, bridged, _logits(compact, probe), plain


def test_gaps_are_found_before_inside_and_after() -> None:
    assert br.find_gaps([0, 1, 2], num_layers=3) == []
    assert br.find_gaps([1, 3, 4], num_layers=6) == [(0, 0), (1, 2), (3, 5)]
    assert br.find_gaps([0, 5], num_layers=6) == [(1, 4)]


def test_fits_recover_known_maps() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=gen)
    t = torch.eye(16) + 0.3 * torch.randn(16, 16, generator=gen)
    torch.testing.assert_close(br.fit_linear(x, x @ t.T, ridge=1e-9), t, atol=1e-4, rtol=1e-4)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    got = br.fit_rotation(x, x @ q.T + 0.01 * torch.randn(400, 16, generator=gen))
    torch.testing.assert_close(got, q, atol=1e-2, rtol=0)
    torch.testing.assert_close(got @ got.T, torch.eye(16), atol=1e-5, rtol=0)


def test_fit_rows_leave_out_position_zero_and_padding() -> None:
    (ids, attention, rows), = list(br._batches([[5, 6, 7], [8, 9]]))
    assert attention.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert rows.tolist() == [[False, True, True], [False, True, False]]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
def test_folded_model_equals_bridged_model(arch: str, kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from ollama_slim.gguf.export import check_gguf, write_gguf, _read_config

    model_dir = request.getfixturevalue(arch)
    original, _ = load(model_dir)
    calibration = br.random_calibration(original, sequences=16, length=32)
    probe = torch.tensor(br.random_calibration(original, sequences=2, length=24, seed=7))
    kept = [1, 3, 4]  # gaps before the first kept layer, inside, and after the last
    compact, tokenizer, bridged, folded, plain = _fit_fold(model_dir, kind, kept, calibration, probe)
    assert (folded - bridged).abs().max() <= 1e-4 * bridged.abs().max()
    if kind != "none":
        assert (bridged - plain).abs().max() > 1e-2  # the bridge does something
    head, embed = compact.get_output_embeddings().weight, compact.get_input_embeddings().weight
    assert (head.data_ptr() == embed.data_ptr()) == ("rotation" not in kind)
    out = tmp_path / "compact"
    save_compact(compact, tokenizer, out, provenance={"kept": kept})
    reloaded, _ = load(out)
    assert (_logits(reloaded, probe) - folded).abs().max() <= 1e-5 * folded.abs().max()
    gguf = tmp_path / "model.gguf"
    write_gguf(model_dir=out, hf_config=_read_config(out), outtype="f32", path=gguf)
    check = check_gguf(gguf, out, ["Sony wireless headphones", "The user bought: 1. item 2. item"])
    assert check.passed, check.reason


def test_registered_fitters_fold_in_place_and_summarise(tiny_llama: Path) -> None:
    original, _ = load(tiny_llama)
    compact = slice_model(original, [0, 2, 5])
    before = compact.model.layers[0].mlp.down_proj.weight.clone()
    summary = br.BRIDGES["mlp-fold"].fit_and_fold(original=original, compact=compact, kept=[0, 2, 5], calibration=None)
    assert summary["kind"] == "mlp-fold" and [g["slot"] for g in summary["gaps"]] == [1, 2]
    assert summary["calibration"]["source"].startswith("random tokens")
    assert not torch.equal(before, compact.model.layers[0].mlp.down_proj.weight)


def test_mlp_fold_brings_the_stream_closer_to_the_original(tiny_qwen2: Path) -> None:
    """On its calibration data a fitted bridge beats plain dropping (least squares vs identity)."""
    original, _ = load(tiny_qwen2)
    calibration = br.random_calibration(original, sequences=24, length=32)
    kept = [0, 1, 4, 5]
    results = {}
    for kind in ("none", "mlp-fold", "rotation"):
        compact = slice_model(original, kept)
        br.BRIDGES[kind].fit_and_fold(original=original, compact=compact, kept=kept, calibration=calibration)
        stream = br._capture(compact, {"s": compact.model.layers[1]}, calibration)["s"]
        target = br._capture(original, {"s": original.model.layers[3]}, calibration)["s"]
        results[kind] = float((stream - target).norm())
    assert results["mlp-fold"] < results["none"]
    assert results["rotation"] < results["none"]


def _tiny_dataset(root: Path, titles: list[str]):
    """A data set of five users over ``titles`` (five interactions each), loaded."""
    import json

    from ollama_slim.recsys.data import load_dataset

    root.mkdir(parents=True, exist_ok=True)
    (root / "items.jsonl").write_text("".join(json.dumps({"item_id": i, "title": t}) + "\n" for i, t in enumerate(titles)))
    rows = ["user_id\titem_id\ttimestamp"] + [f"{u}\t{(u + k) % len(titles)}\t{k}" for u in range(5) for k in range(5)]
    (root / "interactions.tsv").write_text("\n".join(rows) + "\n")
    return load_dataset(root)


def test_calibration_batches_come_from_train_prompts(tiny_llama: Path, tmp_path: Path) -> None:
    from conftest import _CORPUS
    from ollama_slim.models.modeling import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama)
    sequences = br.calibration_batches(tokenizer=tokenizer, dataset=_tiny_dataset(tmp_path, _CORPUS[:6]), max_tokens=60)
    assert sequences and all(s[0] == tokenizer.bos_token_id for s in sequences)
    assert sum(len(s) for s in sequences[:-1]) < 60 <= sum(len(s) for s in sequences)
    assert "The next item they buy is:" in tokenizer.decode(sequences[0])


def test_mixed_calibration_shares_the_tokens_among_the_data_sets(tiny_llama: Path, tmp_path: Path) -> None:
    """Bridges for two domains: each data set's prompts up to half the budget, in one list; none is refused."""
    from conftest import _CORPUS
    from ollama_slim.errors import UsageError
    from ollama_slim.models.modeling import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama)
    first, second = _tiny_dataset(tmp_path / "a", _CORPUS[:5]), _tiny_dataset(tmp_path / "b", _CORPUS[5:10])
    alone = [br.calibration_batches(tokenizer=tokenizer, dataset=d, max_tokens=50) for d in (first, second)]
    mixed = br.mixed_calibration(tokenizer=tokenizer, datasets=[first, second], max_tokens=100)
    assert mixed == alone[0] + alone[1]
    text = [tokenizer.decode(s) for s in mixed]
    assert any(t in " ".join(text) for t in _CORPUS[:5]) and any(t in " ".join(text) for t in _CORPUS[5:10])
    assert br.mixed_calibration(tokenizer=tokenizer, datasets=[first], max_tokens=60) == br.calibration_batches(tokenizer=tokenizer, dataset=first, max_tokens=60)
    with pytest.raises(UsageError, match="no data set"):
        br.mixed_calibration(tokenizer=tokenizer, datasets=[], max_tokens=60)


def test_the_model_s_own_text_is_one_more_share_of_the_calibration(tiny_llama: Path, tmp_path: Path) -> None:
    """``own_text_of``: the data set's prompts up to half the budget, then the model's own seeded
    samples (start token first, as the bridge fit expects) for the other half; the same seed, the same text."""
    from conftest import _CORPUS
    from ollama_slim.models.modeling import load_tokenizer

    model, tokenizer = load(tiny_llama)
    data = _tiny_dataset(tmp_path / "a", _CORPUS[:5])
    mixed = br.mixed_calibration(tokenizer=tokenizer, datasets=[data], max_tokens=2 * 65, own_text_of=model)
    prompts = br.calibration_batches(tokenizer=tokenizer, dataset=data, max_tokens=65)
    own = br.own_text_calibration(model, tokenizer, max_tokens=65)
    assert mixed == prompts + own
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    assert len(own) == 1 and len(own[0]) == 1 + br.OWN_TEXT_LENGTH and own[0][0] == start
    assert br.own_text_calibration(model, tokenizer, max_tokens=65, seed=1) != own
    assert br.mixed_calibration(tokenizer=tokenizer, datasets=[], max_tokens=65, own_text_of=model) == own  # the model's text alone


@pytest.mark.slow
def test_folding_is_exact_on_smollm2_and_exports_to_llama_cpp(smollm2, tmp_path: Path) -> None:
    """SmolLM2-135M, keep 10 of 30: every kind folds exactly; the folded models run in llama.cpp."""
    from ollama_slim.gguf.export import _read_config, check_gguf, write_gguf

    original, tokenizer = load(smollm2.model_dir)
    calibration = [tokenizer("<|im_start|>" + text).input_ids for text in (
        "A customer bought these items: Sony headphones, a USB cable. The next item they buy is: a charger",
        "Logitech wireless mouse, Kindle Paperwhite, HDMI cable 6 feet, SanDisk 64GB card",
    )]
    probe = torch.tensor([tokenizer("<|im_start|>The next item they buy is: Anker USB C charger").input_ids])
    kept = [0, 1, 2, 3, 4, 5, 7, 14, 28, 29]
    for kind in FIT_KINDS:
        compact, tok, bridged, folded, plain = _fit_fold(smollm2.model_dir, kind, kept, calibration, probe)
        diff = float((folded - bridged).abs().max())
        assert diff <= 1e-4 * float(bridged.abs().max()), (kind, diff)
        if kind in ("mlp-fold", "rotation"):
            out = tmp_path / kind
            save_compact(compact, tok, out, provenance={"kept": kept})
            gguf = tmp_path / f"{kind}.gguf"
            write_gguf(model_dir=out, hf_config=_read_config(out), outtype="f32", path=gguf)
            check = check_gguf(gguf, out, ["A customer bought these items: Sony headphones. Next:"])
            assert check.passed, (kind, check.reason)
