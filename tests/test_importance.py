"""Layer-importance scorers, the layer-subset forward and its prefix cache, on tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ollama_slim.cli import main
from ollama_slim.recsys.data import CandidateSampler, load_dataset
from ollama_slim.errors import UsageError
from ollama_slim.models.families import family_of, get_module
from ollama_slim.slimming.importance import (
    METHODS, PrefixCache, ScoreConfig, SubsetEvaluator, build_probe, mean_rank, probe_examples, score_layers,
    shapley_contributions,
)
from ollama_slim.models.modeling import load
from ollama_slim.recsys.prompt import PromptConfig, candidate_text, encode_candidates, encode_example, encode_prompt, prompt_text
from ollama_slim.models.lm import LayerRunner, layer_subset, score_shared_prefix, title_nll
from toy_data import write_toy_data

IDENTITY = 3  # the layer made an exact identity in `identity_llama`
@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_data(tmp_path_factory.mktemp("toy-data"))


@pytest.fixture(scope="module")
def identity_llama(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with layer IDENTITY's output projections zeroed: it returns its input."""
    model, _ = load(tiny_llama)
    fam = family_of(model)
    layer = get_module(model, fam.layers)[IDENTITY]
    with torch.no_grad():
        get_module(layer, fam.attn_out).weight.zero_()
        get_module(layer, fam.mlp_out).weight.zero_()
    out = tmp_path_factory.mktemp("identity-llama")
    model.save_pretrained(out)
    for file in tiny_llama.iterdir():
        if file.name.startswith("tokenizer") or file.name.endswith(".jinja") or file.name == "special_tokens_map.json":
            shutil.copy(file, out / file.name)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_llama: Path, toy_data: Path):
    model, tokenizer = load(tiny_llama)
    return model, tokenizer, load_dataset(toy_data)


def test_packed_candidates_equal_shared_prefix_scoring(tiny) -> None:
    model, tokenizer, dataset = tiny
    items = probe_examples(dataset, split="valid", users=5)
    sampler = CandidateSampler(dataset, negatives=7)
    evaluator = SubsetEvaluator(LayerRunner(model), build_probe(tokenizer, dataset, items, sampler=sampler, batch_size=2))
    got = evaluator.loglik(range(6))  # rows sorted by length: compare as a set of rows
    cfg = PromptConfig()
    want = []
    for e in items:
        prompt = encode_prompt(tokenizer, prompt_text(dataset, e, cfg))
        cands = encode_candidates(tokenizer, [candidate_text(dataset, i, cfg) for i in sampler(e)], cfg)
        want.append(score_shared_prefix(model, prompt, cands, pad_id=tokenizer.pad_token_id))
    key = lambda rows: sorted(rows, key=lambda r: r[0])  # noqa: E731
    assert torch.allclose(torch.stack(key(list(got))), torch.stack(key(want)), atol=1e-5)


def test_title_loss_of_all_layers_equals_title_nll(tiny) -> None:
    model, tokenizer, dataset = tiny
    items = probe_examples(dataset, split="train", users=6)
    evaluator = SubsetEvaluator(LayerRunner(model), build_probe(tokenizer, dataset, items, batch_size=4))
    pairs = [encode_example(tokenizer, dataset, e, PromptConfig()) for e in items]
    with torch.no_grad():
        want = float(title_nll(model, pairs, pad_id=tokenizer.pad_token_id).mean())
    assert evaluator.loss(range(6)) == pytest.approx(want, abs=1e-5)


def test_skipping_layers_equals_a_model_without_them(tiny) -> None:
    """The subset forward computes what a compact model of those layers computes."""
    model, tokenizer, dataset = tiny
    items = probe_examples(dataset, split="train", users=6)
    evaluator = SubsetEvaluator(LayerRunner(model), build_probe(tokenizer, dataset, items, batch_size=3))
    pairs = [encode_example(tokenizer, dataset, e, PromptConfig()) for e in items]
    kept = [0, 2, 5]
    with layer_subset(model, kept), torch.no_grad():  # evaluate's compact-model equivalent
        want = float(title_nll(model, pairs, pad_id=tokenizer.pad_token_id).mean())
    assert evaluator.loss(kept) == pytest.approx(want, abs=1e-5)
    assert evaluator.loss(kept) != pytest.approx(evaluator.loss(range(6)), abs=1e-3)


def test_prefix_cache_is_exact_and_saves_layer_forwards(tiny) -> None:
    model, tokenizer, dataset = tiny
    probe = build_probe(tokenizer, dataset, probe_examples(dataset, split="train", users=6), batch_size=4)
    runner = LayerRunner(model)
    cached = PrefixCache(runner, probe.batches)
    subsets = [(0, 1, 2, 3, 4, 5), (0, 1, 2, 3, 5), (0, 1, 2, 4, 5), (0, 1, 3), (0, 1, 3, 4), (2, 5)]
    for subset in subsets:
        fresh = PrefixCache(runner, probe.batches)  # nothing cached: every layer runs
        for got, want in zip(cached.final(subset), fresh.final(subset)):
            assert torch.equal(got, want)
        assert fresh.layer_forwards == len(subset)
    assert cached.naive_forwards == sum(len(s) for s in subsets)
    assert cached.layer_forwards == 6 + 1 + 2 + 1 + 1 + 2  # only the layers past the longest cached prefix


def test_prefix_cache_respects_its_budget_and_stays_exact(tiny) -> None:
    model, tokenizer, dataset = tiny
    probe = build_probe(tokenizer, dataset, probe_examples(dataset, split="train", users=4), batch_size=4)
    runner = LayerRunner(model)
    one_entry = sum(h.numel() * h.element_size() for h in PrefixCache(runner, probe.batches).final(()))
    small = PrefixCache(runner, probe.batches, max_bytes=2.5 * one_entry)
    small.pin((0, 1, 2, 3, 4, 5))
    small.final((0, 1, 2, 3, 4, 5))
    assert len(small.states) == 2 and (0, 1, 2, 3, 4, 5) in small.states
    big = PrefixCache(runner, probe.batches)
    for got, want in zip(small.final((0, 1, 3)), big.final((0, 1, 3))):
        assert torch.equal(got, want)


@pytest.fixture(scope="module")
def identity_scores(identity_llama: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory):
    run = tmp_path_factory.mktemp("identity-run")
    config = ScoreConfig(model=str(identity_llama), data=str(toy_data), methods=tuple(METHODS), calib_users=8, shapley_permutations=3, run_dir=run)
    return score_layers(config), run


def test_identity_layer_is_least_important(identity_scores) -> None:
    result, _ = identity_scores
    assert int(np.argmin(result.methods["block-influence"].scores)) == IDENTITY
    assert result.methods["block-influence"].scores[IDENTITY] == pytest.approx(0.0, abs=1e-6)
    assert int(np.argmin(result.methods["angular"].scores)) == IDENTITY
    ablation = np.asarray(result.methods["ablation"].scores)
    assert ablation[IDENTITY] == 0.0  # skipping an identity changes nothing, bit for bit
    assert int(np.argmin(np.abs(ablation))) == IDENTITY and np.abs(np.delete(ablation, IDENTITY)).min() > 1e-4
    own_text = np.asarray(result.methods["own-text-ablation"].scores)
    assert own_text[IDENTITY] == 0.0 and np.abs(np.delete(own_text, IDENTITY)).min() > 1e-4
    assert not np.allclose(np.delete(own_text, IDENTITY), np.delete(ablation, IDENTITY))  # another text, another loss


def test_own_text_ablation_is_the_lm_loss_on_the_models_own_samples(tiny) -> None:
    """own-text-ablation: the mean token NLL of the model's seeded samples with the layer skipped, minus with every layer."""
    from ollama_slim.slimming.finetune.general import teacher_corpus
    from ollama_slim.slimming.importance.methods import OWN_TEXTS, ScoringContext, own_text_ablation

    model, tokenizer, dataset = tiny
    items = probe_examples(dataset, split="train", users=3)
    evaluator = SubsetEvaluator(LayerRunner(model), build_probe(tokenizer, dataset, items))
    got = own_text_ablation(ScoringContext(model=model, pairs=[], evaluator=evaluator, tokenizer=tokenizer, batch_size=16, seed=3))
    ids = torch.tensor(teacher_corpus(model, tokenizer, texts=OWN_TEXTS, tokens=64, seed=3))

    def loss(layers: list[int] | None) -> float:
        with torch.no_grad(), layer_subset(model, layers):
            logits = model(input_ids=ids).logits[:, :-1].float()
        return float(-torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).mean())

    full = loss(None)
    assert got.extra["full_loss"] == pytest.approx(full, rel=1e-4)
    for layer in (1, 4):
        want = loss([i for i in range(6) if i != layer]) - full
        assert got.scores[layer] == pytest.approx(want, rel=1e-3, abs=1e-5)


def test_shapley_efficiency_and_standard_errors(identity_scores) -> None:
    result, _ = identity_scores
    shap = result.methods["shapley"]
    assert len(shap.scores) == 6 and len(shap.stderr) == 6
    assert all(np.isfinite(shap.stderr)) and all(s >= 0 for s in shap.stderr)
    total = shap.extra["full_value"] - shap.extra["empty_value"]
    assert sum(shap.scores) == pytest.approx(total, rel=1e-6, abs=1e-6)
    assert shap.scores[IDENTITY] == 0.0 and shap.stderr[IDENTITY] == 0.0  # a null player


def test_fisher_and_gradnorm_follow_their_definitions(tiny) -> None:
    """Fisher: mean over examples of each layer's summed squared gradient; gradnorm: norm of the mean gradient."""
    from ollama_slim.slimming.importance.methods import ScoringContext, fisher, gradnorm

    model, tokenizer, dataset = tiny
    items = probe_examples(dataset, split="train", users=3)
    pairs = [encode_example(tokenizer, dataset, e, PromptConfig()) for e in items]
    evaluator = SubsetEvaluator(LayerRunner(model), build_probe(tokenizer, dataset, items))
    ctx = ScoringContext(model=model, pairs=pairs, evaluator=evaluator, pad_id=tokenizer.pad_token_id, batch_size=2)
    layer = get_module(model, family_of(model).layers)[4]
    per_example, mean_grad = [], None
    for pair in pairs:
        grads = torch.autograd.grad(title_nll(model, [pair], pad_id=tokenizer.pad_token_id).sum(), list(layer.parameters()))
        per_example.append(sum(float((g ** 2).sum()) for g in grads))
        mean_grad = grads if mean_grad is None else [a + b for a, b in zip(mean_grad, grads)]
    assert fisher(ctx).scores[4] == pytest.approx(np.mean(per_example), rel=1e-4)
    norm = float(torch.sqrt(sum(((g / len(pairs)) ** 2).sum() for g in mean_grad)))
    assert gradnorm(ctx).scores[4] == pytest.approx(norm, rel=1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_shapley_of_an_additive_game_is_exact() -> None:
    weights = np.array([0.5, -1.0, 2.0, 0.25])
    contrib = shapley_contributions(lambda c: float(weights[list(c)].sum()), num_layers=4, permutations=5, seed=1)
    assert contrib.shape == (5, 4)
    assert np.allclose(contrib, weights[None, :])


def test_scores_file_and_plot(identity_scores) -> None:
    result, run = identity_scores
    data = json.loads((run / "scores.json").read_text())
    assert data["num_layers"] == 6 and data["split"] == "train" and set(data["methods"]) == set(METHODS)
    assert data["order"][-1] != data["order"][0] and sorted(data["order"]) == list(range(6))
    assert len(data["fused"]) == 6 and data["fused"] == result.fused
    assert (run / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["cache"]["layer_forwards"] < data["cache"]["naive_layer_forwards"]


def test_mean_rank_fusion() -> None:
    fused = mean_rank({"a": [3.0, 1.0, 2.0], "b": [30.0, 20.0, 10.0]})
    assert fused == pytest.approx([1.0, 0.25, 0.25])
    assert mean_rank({"a": [1.0, 1.0, 5.0]}) == pytest.approx([0.25, 0.25, 1.0])


def test_bfloat16_scores_are_finite(tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    config = ScoreConfig(model=str(tiny_llama), data=str(toy_data), methods=("block-influence", "ablation"), calib_users=4, run_dir=tmp_path, dtype="bfloat16")
    result = score_layers(config)
    assert all(np.isfinite(result.methods["ablation"].scores)) and len(result.methods["block-influence"].scores) == 6


def test_unknown_method_is_a_usage_error(tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown importance method 'magic'"):
        score_layers(ScoreConfig(model=str(tiny_llama), data=str(toy_data), methods=("magic",), run_dir=tmp_path))


def test_cli_score_table_and_files(tiny_qwen2: Path, toy_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["score", str(tiny_qwen2), "--data", str(toy_data), "--methods", "block-influence,angular,ablation",
                                       "--calib-users", "4", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    assert "block-influence" in result.output and "fused" in result.output and "most important first" in result.output
    assert json.loads((run / "scores.json").read_text())["num_layers"] == 6 and (run / "scores.png").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "block-influence,magic"], "unknown importance method 'magic'"),
    (["--calib-users", "0"], "--calib-users must be positive"),
])
def test_cli_score_errors_are_one_line(tiny_llama: Path, toy_data: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["score", str(tiny_llama), "--data", str(toy_data), "--run-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "scores.json").exists()
