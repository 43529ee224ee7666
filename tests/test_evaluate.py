"""Evaluation: metrics on hand-made ranks, baselines, scorers (shared-prefix, llama.cpp), the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ollama_slim.cli import main
from ollama_slim.recsys.data import load_dataset, make_dataset
from ollama_slim.errors import DataError, SelectionError, UsageError
from ollama_slim.recsys.evaluate import EvalConfig, encode_case, evaluate, prepare_cases
from ollama_slim.recsys.metrics import bootstrap_interval, paired_bootstrap_diff, per_user_metrics, random_baseline, target_ranks
from ollama_slim.models.modeling import load
from ollama_slim.recsys.scorers import TransformersScorer
from ollama_slim.models.lm import layer_subset, score_naive

# --- metrics ----------------------------------------------------------------------------------


def test_metrics_on_hand_made_ranks() -> None:
    scores = np.array([
        [9.0, 1.0, 2.0, 3.0],  # rank 1
        [2.0, 3.0, 1.0, 4.0],  # rank 3
        [0.0, 1.0, 2.0, 3.0],  # rank 4
    ])
    m = per_user_metrics(scores)
    np.testing.assert_allclose(m["rank"], [1, 3, 4])
    np.testing.assert_allclose(m["ndcg@10"], [1.0, 0.5, 1 / np.log2(5)])
    np.testing.assert_allclose(m["mrr"], [1.0, 1 / 3, 1 / 4])
    np.testing.assert_allclose(m["hr@1"], [1, 0, 0])
    np.testing.assert_allclose(m["hr@5"], [1, 1, 1])


def test_rank_past_the_cutoff_and_ties() -> None:
    far = np.concatenate([[0.0], np.arange(1.0, 12.0)])[None, :]  # 11 negatives above: rank 12
    m = per_user_metrics(far)
    assert m["ndcg@10"][0] == 0.0 and m["hr@10"][0] == 0.0 and m["mrr"][0] == pytest.approx(1 / 12)
    tied = np.array([[1.0, 1.0, 0.0, 5.0]])  # one above, one tied: rank 2 or 3, each half the time
    greater, ties = target_ranks(tied)
    assert (greater[0], ties[0]) == (1, 1)
    m = per_user_metrics(tied)
    assert m["mrr"][0] == pytest.approx((1 / 2 + 1 / 3) / 2) and m["hr@1"][0] == 0.0 and m["rank"][0] == 2.5


@pytest.mark.parametrize("candidates", [2, 5, 20, 100])
def test_random_baseline_is_exact(candidates: int) -> None:
    base = random_baseline(candidates)
    ranks = np.arange(1, candidates + 1)
    assert base["ndcg@10"] == pytest.approx(np.mean(np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0)))
    assert base["mrr"] == pytest.approx(np.mean(1 / ranks)) and base["hr@5"] == pytest.approx(min(5, candidates) / candidates)
    constant = per_user_metrics(np.zeros((3, candidates)))  # a scorer that cannot tell candidates apart
    for name, value in base.items():
        np.testing.assert_allclose(constant[name], value)


def test_design_random_value() -> None:
    assert random_baseline(20)["ndcg@10"] == pytest.approx(0.2272, abs=1e-4)


def test_bootstrap_intervals() -> None:
    values = np.random.default_rng(0).random(300)
    iv = bootstrap_interval(values, seed=1)
    assert iv.low < iv.mean < iv.high and iv.mean == pytest.approx(values.mean())
    assert bootstrap_interval(values, seed=1) == iv
    assert bootstrap_interval(np.full(50, 0.3)) .to_json() == pytest.approx({"mean": 0.3, "low": 0.3, "high": 0.3})
    same = paired_bootstrap_diff(values, values)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    better = paired_bootstrap_diff(values + 0.05 + 0.01 * np.random.default_rng(2).random(300), values)
    assert 0.05 < better.low < better.mean < better.high < 0.06


# --- scorers on the tiny random Llama -----------------------------------------------------------


def _toy_dataset():
    titles = {i: t for i, t in enumerate([
        "Sony wireless noise cancelling headphones black", "Logitech wireless mouse for laptop", "Samsung 32GB microSD memory card",
        "Anker USB C charger 20W", "Canon EOS camera lens cap", "Apple Lightning to USB cable", "HDMI cable 6 feet high speed",
        "Kindle Paperwhite e-reader", "Toy Story (1995) Animation", "GoldenEye (1995) Action",
    ] * 3)}
    seqs = {u: [(u + 3 * k) % 30 for k in range(8)] for u in range(12)}
    return make_dataset("toy", seqs, titles)


@pytest.fixture(scope="module")
def tiny_scorer(tiny_llama: Path) -> TransformersScorer:
    model, tokenizer = load(tiny_llama)
    return TransformersScorer(model=model, tokenizer=tokenizer, batch=7)


def test_shared_prefix_equals_naive_on_tiny_llama(tiny_scorer: TransformersScorer) -> None:
    ds = _toy_dataset()
    config = EvalConfig(data="toy", users=4, negatives=9, history=5)
    for case in prepare_cases(ds, config):
        prompt, cands = encode_case(tiny_scorer.tokenizer, ds, case, config.prompt_config())
        shared = tiny_scorer.score(prompt, cands)
        naive = torch.cat([score_naive(tiny_scorer.model, prompt, [c]) for c in cands]).numpy()
        assert len(set(map(len, cands))) > 1  # candidates of different lengths: padding is exercised
        np.testing.assert_allclose(shared, naive, atol=1e-5)


def test_layer_subset_equals_a_compact_model(tiny_llama: Path, tiny_scorer: TransformersScorer) -> None:
    from transformers import AutoModelForCausalLM

    keep = [0, 2, 5]
    prompt, cands = [1, 40, 41, 42, 43], [[50, 51, 52], [60], [70, 71]]
    full = tiny_scorer.score(prompt, cands)
    with tiny_scorer.using_layers(keep):
        subset = tiny_scorer.score(prompt, cands)
    compact = AutoModelForCausalLM.from_pretrained(tiny_llama, num_hidden_layers=len(keep))
    state = tiny_scorer.model.state_dict()
    for new, old in enumerate(keep):
        for key, value in state.items():
            if key.startswith(f"model.layers.{old}."):
                state[key.replace(f"model.layers.{old}.", f"model.layers.{new}.", 1)] = value
    compact.load_state_dict({k: v for k, v in state.items() if k in compact.state_dict()})
    expected = TransformersScorer(model=compact.eval(), tokenizer=tiny_scorer.tokenizer).score(prompt, cands)
    np.testing.assert_allclose(subset, expected, atol=1e-5)
    assert not np.allclose(subset, full, atol=1e-3)
    np.testing.assert_allclose(tiny_scorer.score(prompt, cands), full, atol=1e-6)  # restored
    assert tiny_scorer.model.config.num_hidden_layers == 6


@pytest.mark.parametrize("layers", [[], [2, 1], [0, 0], [6], [-1]])
def test_bad_layer_subsets(tiny_scorer: TransformersScorer, layers: list[int]) -> None:
    with pytest.raises(SelectionError, match="do not fit a model of 6 layers"):
        with layer_subset(tiny_scorer.model, layers):
            pass


def test_evaluate_is_deterministic_with_baselines(tiny_scorer: TransformersScorer) -> None:
    ds = _toy_dataset()
    config = EvalConfig(data="toy", users=6, negatives=9, history=4)
    calls: list[tuple[int, int]] = []
    first = evaluate(tiny_scorer, config, dataset=ds, progress=lambda d, t: calls.append((d, t)))
    again = evaluate(tiny_scorer, config, dataset=ds)
    assert calls == [(k, 6) for k in range(1, 7)]
    assert first.to_json() == again.to_json()
    assert first.random == random_baseline(10) and first.candidates == 10
    assert set(first.metrics) == set(first.popularity) == {"ndcg@10", "mrr", "hr@1", "hr@5", "hr@10"}
    json.dumps(first.to_json())  # JSON-able


def test_eval_config_rejects_bad_values() -> None:
    with pytest.raises(UsageError, match="--split 'train'"):
        EvalConfig(data="x", split="train")
    with pytest.raises(UsageError, match="--negatives must be positive"):
        EvalConfig(data="x", negatives=0)
    with pytest.raises(DataError, match="--negatives 40 needs more items"):
        prepare_cases(_toy_dataset(), EvalConfig(data="toy", negatives=40))


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_eval_json_twice_identical(tiny_llama: Path, amazon_dir: Path) -> None:
    args = ["eval", str(tiny_llama), "--data", str(amazon_dir), "--users", "3", "--negatives", "5", "--history", "3", "--json"]
    runs = [CliRunner().invoke(main, args) for _ in range(2)]
    assert all(r.exit_code == 0 for r in runs), runs[0].output
    assert runs[0].stdout == runs[1].stdout
    out = json.loads(runs[0].stdout)
    assert out["users"] == 3 and out["candidates"] == 6 and out["data"]["name"] == "amazon-electronics-2014"
    assert out["baselines"]["random"]["ndcg@10"] == pytest.approx(random_baseline(6)["ndcg@10"])
    assert {"mean", "low", "high"} <= set(out["metrics"]["ndcg@10"])


def test_cli_eval_table(tiny_llama: Path, amazon_dir: Path) -> None:
    result = CliRunner().invoke(main, ["eval", str(tiny_llama), "--data", str(amazon_dir), "--users", "2", "--negatives", "3", "--split", "valid"])
    assert result.exit_code == 0, result.output
    assert "ndcg@10" in result.stdout and "popularity" in result.stdout and "random" in result.stdout


def test_cli_eval_asks_a_run_model_in_the_prompt_it_was_healed_on(tiny_llama: Path, amazon_dir: Path, tmp_path: Path) -> None:
    """A model of a prune run is ranked with the run's task format, history and title words unless options say otherwise."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_llama, run / "healed")
    (run / "prune.json").write_text(json.dumps({"command": "ollama-slim prune x --keep 2", "config": {"task_format": "chat", "history": 3, "title_words": 5}}))
    common = ["--data", str(amazon_dir), "--users", "3", "--negatives", "4", "--json", "--per-user"]

    from_run = CliRunner().invoke(main, ["eval", str(run / "healed"), *common])
    assert from_run.exit_code == 0, from_run.output
    assert "task format chat" in from_run.stderr and "prune.json" in from_run.stderr
    explicit = CliRunner().invoke(main, ["eval", str(tiny_llama), *common, "--task-format", "chat", "--history", "3", "--title-words", "5"])
    got, want = json.loads(from_run.stdout), json.loads(explicit.stdout)
    assert got["config"] == want["config"] and got["config"]["task_format"] == "chat" and got["config"]["title_words"] == 5
    assert got["metrics"] == want["metrics"] and got["per_user"] == want["per_user"]

    overridden = json.loads(CliRunner().invoke(main, ["eval", str(run / "healed"), *common, "--task-format", "completion"]).stdout)
    assert overridden["config"]["task_format"] == "completion" and overridden["config"]["history"] == 3
    plain = json.loads(CliRunner().invoke(main, ["eval", str(tiny_llama), *common]).stdout)  # no run: the defaults
    assert plain["config"]["task_format"] == "completion" and plain["config"]["history"] == EvalConfig(data="-").history

    (run / "prune.json").write_text("{not json")
    broken = CliRunner().invoke(main, ["eval", str(run / "healed"), *common])
    assert broken.exit_code != 0 and "cannot read the run's settings" in broken.output and "Traceback" not in broken.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--negatives", "20000"], "--negatives 20000 needs more items than the 15743"),
        (["--users", "-3"], "--users must be positive"),
        (["--layers", "0,0"], "do not fit a model of 6 layers"),
    ],
)
def test_cli_eval_bad_options_one_line(tiny_llama: Path, amazon_dir: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["eval", str(tiny_llama), "--data", str(amazon_dir), *args])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_cli_eval_broken_gguf_is_one_line(tmp_path: Path, amazon_dir: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    result = CliRunner().invoke(main, ["eval", str(bad), "--data", str(amazon_dir), "--users", "2"])
    assert result.exit_code == 1 and "llama.cpp cannot load" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "missing.gguf"), "--data", str(amazon_dir), "--users", "2"])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_llama_cpp_scorer_equals_transformers_on_an_f32_gguf(tiny_llama: Path, tiny_scorer: TransformersScorer, tmp_path: Path) -> None:
    """Same token ids, same weights (f32 export): llama.cpp reusing the prompt's KV cache
    across candidates gives the transformers scores, and evaluate() the same ranks."""
    export = pytest.importorskip("ollama_slim.gguf.export")
    from ollama_slim.recsys.scorers import LlamaCppScorer

    gguf = tmp_path / "tiny-f32.gguf"
    export.export_gguf(export.ExportConfig(model_dir=tiny_llama, outtype="f32", out=gguf, check=False))
    ds = _toy_dataset()
    config = EvalConfig(data="toy", users=4, negatives=9, history=5)
    cpp = LlamaCppScorer(gguf)
    for case in prepare_cases(ds, config):
        prompt, cands = encode_case(tiny_scorer.tokenizer, ds, case, config.prompt_config())
        assert encode_case(cpp.tokenizer, ds, case, config.prompt_config()) == (prompt, cands)
        np.testing.assert_allclose(cpp.score(prompt, cands), tiny_scorer.score(prompt, cands), atol=2e-3)
    ours, theirs = evaluate(tiny_scorer, config, dataset=ds), evaluate(cpp, config, dataset=ds)
    np.testing.assert_array_equal(ours.per_user["rank"], theirs.per_user["rank"])


def test_llama_cpp_scorer_runs_a_repeated_candidate_once(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target sits in both regimes' lists: it runs once, both its places get its score,
    and every other candidate keeps the score it has alone."""
    export = pytest.importorskip("ollama_slim.gguf.export")
    from ollama_slim.recsys.scorers import LlamaCppScorer

    gguf = tmp_path / "tiny-f32.gguf"
    export.export_gguf(export.ExportConfig(model_dir=tiny_llama, outtype="f32", out=gguf, check=False))
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, 200, size=30).tolist()
    cands = [rng.integers(3, 200, size=n).tolist() for n in (3, 1, 4, 2)]
    scorer = LlamaCppScorer(gguf)
    alone = scorer.score(prompt, cands)
    runs: list[list[list[int]]] = []
    real = scorer._score_together
    monkeypatch.setattr(scorer, "_score_together", lambda p, chunk: (runs.append(chunk), real(p, chunk))[1])
    twice = scorer.score(prompt, cands + [cands[0], cands[2]])
    np.testing.assert_array_equal(twice, np.concatenate([alone, alone[[0, 2]]]))
    assert runs == [cands]  # one decode, every distinct candidate once
    assert len(set(np.round(alone, 4))) == 4


def test_llama_cpp_scorer_splits_what_one_batch_cannot_hold(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More candidates than sequences, or more tokens than the context: further decodes,
    the same scores as one (up to the f16 KV cache and summation order)."""
    export = pytest.importorskip("ollama_slim.gguf.export")
    from ollama_slim.recsys.scorers import LlamaCppScorer, ScorerOptions

    gguf = tmp_path / "tiny-f32.gguf"
    export.export_gguf(export.ExportConfig(model_dir=tiny_llama, outtype="f32", out=gguf, check=False))
    rng = np.random.default_rng(1)
    prompt = rng.integers(3, 200, size=40).tolist()
    cands = [rng.integers(3, 200, size=n).tolist() for n in rng.integers(1, 9, size=30)]
    together = LlamaCppScorer(gguf).score(prompt, cands)
    for sequences, context in ((7, 1024), (64, 80)):
        monkeypatch.setattr(LlamaCppScorer, "SEQUENCES", sequences)
        scorer = LlamaCppScorer(gguf, options=ScorerOptions(context=context))
        runs: list[int] = []
        real = scorer._score_together
        monkeypatch.setattr(scorer, "_score_together", lambda p, chunk: (runs.append(len(chunk)), real(p, chunk))[1])
        np.testing.assert_allclose(scorer.score(prompt, cands), together, atol=1e-3)  # the KV cache is f16
        assert sum(runs) == 30 and len(runs) > 1 and max(runs) <= sequences


def test_llama_cpp_backend_refuses_layer_subsets(tmp_path: Path) -> None:
    from ollama_slim.recsys.scorers import LlamaCppScorer

    scorer = LlamaCppScorer.__new__(LlamaCppScorer)  # no model needed to check the guard
    with pytest.raises(UsageError, match="needs the transformers backend"):
        scorer.using_layers([0, 1])


# --- the real SmolLM2 (slow) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_scorer(smollm2) -> TransformersScorer:
    model, tokenizer = load(smollm2.model_dir)
    return TransformersScorer(model=model, tokenizer=tokenizer)


@pytest.mark.slow
def test_shared_prefix_equals_naive_on_smollm2(smol_scorer: TransformersScorer, amazon_dir: Path) -> None:
    ds = load_dataset(amazon_dir)
    config = EvalConfig(data=str(amazon_dir), users=1)
    (case,) = prepare_cases(ds, config)
    prompt, cands = encode_case(smol_scorer.tokenizer, ds, case, config.prompt_config())
    naive = score_naive(smol_scorer.model, prompt, cands, pad_id=smol_scorer.tokenizer.pad_token_id).numpy()
    np.testing.assert_allclose(smol_scorer.score(prompt, cands), naive, atol=1e-4)


@pytest.mark.slow
def test_gguf_scorer_agrees_with_transformers(smollm2, smol_scorer: TransformersScorer, amazon_dir: Path) -> None:
    """The Q4_1 GGUF through llama.cpp vs its dequantized weights through transformers:
    the same token ids, scores equal up to llama.cpp's quantized matmuls."""
    from ollama_slim.recsys.scorers import LlamaCppScorer

    gguf = LlamaCppScorer(smollm2.gguf_path)
    ds = load_dataset(amazon_dir)
    config = EvalConfig(data=str(amazon_dir), users=2)
    for case in prepare_cases(ds, config):
        prompt, cands = encode_case(smol_scorer.tokenizer, ds, case, config.prompt_config())
        assert encode_case(gguf.tokenizer, ds, case, config.prompt_config()) == (prompt, cands)  # llama.cpp's own tokenizer
        ours, theirs = smol_scorer.score(prompt, cands), gguf.score(prompt, cands)
        assert np.abs(ours - theirs).max() < 0.1
        assert np.corrcoef(ours, theirs)[0, 1] > 0.98


@pytest.mark.slow
def test_eval_movielens_100k_from_the_recbole_wheel(smollm2) -> None:
    runner = CliRunner()
    args = ["eval", "smollm2:135m", "--data", "movielens-100k", "--users", "5", "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["data"]["name"] == "ml-100k" and out["users"] == 5
    assert 0.0 <= out["metrics"]["ndcg@10"]["low"] <= out["metrics"]["ndcg@10"]["mean"] <= out["metrics"]["ndcg@10"]["high"] <= 1.0
