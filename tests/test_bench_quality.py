"""tools/bench_quality.py: both regimes scored on one prompt pass equal each regime scored alone."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ollama_slim.recsys.data import load_dataset
from ollama_slim.recsys.evaluate import prepare_cases, score_cases
from ollama_slim.models.modeling import load
from ollama_slim.recsys.scorers import TransformersScorer
from tool_modules import load_tool


@pytest.fixture(scope="module")
def bench():
    return load_tool("bench_quality")


def test_joint_regimes_equal_separate_scoring(bench, tiny_llama: Path, amazon_dir: Path, tmp_path: Path) -> None:
    args = bench.parse_args(["--data", str(amazon_dir), "--test-users", "3", "--valid-users", "2", "--dtype", "float32"])
    dataset = load_dataset(args.data)
    joint = bench.scores_of("tiny", tiny_llama, args, dataset, tmp_path)
    model, tokenizer = load(tiny_llama)
    scorer = TransformersScorer(model=model, tokenizer=tokenizer)
    for split in ("test", "valid"):
        for regime in bench.REGIMES:
            config = bench.eval_config(args, split=split, regime=regime)
            alone, _ = score_cases(scorer, dataset, prepare_cases(dataset, config), config)
            assert joint[f"{split}/{regime}"].shape == alone.shape == (config.users, 20)
            np.testing.assert_allclose(joint[f"{split}/{regime}"], alone, atol=1e-5)
    uniform, popular = joint["test/uniform"], joint["test/popularity"]
    np.testing.assert_allclose(uniform[:, 0], popular[:, 0], atol=1e-5)  # the same target, the same prompt
    assert not np.allclose(uniform[:, 1:], popular[:, 1:])  # other negatives


def test_another_test_seed_scores_the_same_models_on_a_fresh_draw(bench, tiny_llama: Path, amazon_dir: Path, tmp_path: Path) -> None:
    """``--test-seed S``: other test users and candidates, cached apart; the validation users stay; no new recipe."""
    first = bench.parse_args(["--data", str(amazon_dir), "--test-users", "3", "--valid-users", "2", "--dtype", "float32"])
    again = bench.parse_args([*map(str, ["--data", amazon_dir, "--test-users", 3, "--valid-users", 2, "--dtype", "float32"]), "--test-seed", "1"])
    dataset = load_dataset(first.data)
    users = {args.test_seed: [c.example.user for c in prepare_cases(dataset, bench.eval_config(args, split="test", regime="uniform"))] for args in (first, again)}
    assert users[0] != users[1]
    valid = [[c.example.user for c in prepare_cases(dataset, bench.eval_config(args, split="valid", regime="uniform"))] for args in (first, again)]
    assert valid[0] == valid[1]
    scores = {args.test_seed: bench.scores_of("tiny", tiny_llama, args, dataset, tmp_path) for args in (first, again)}
    assert sorted(p.parent.name for p in tmp_path.glob("*/tiny.npz")) == ["scores", "scores-test-seed1"]
    assert not np.allclose(scores[0]["test/uniform"], scores[1]["test/uniform"])
    np.testing.assert_allclose(scores[0]["valid/uniform"], scores[1]["valid/uniform"], atol=1e-5)
    np.testing.assert_allclose(bench.scores_of("tiny", tiny_llama, again, dataset, tmp_path)["test/uniform"], scores[1]["test/uniform"])  # from its cache
    bench.check_work(first, tmp_path / "w")
    bench.check_work(again, tmp_path / "w")  # the models a work directory holds are scored again, not refused
    assert "(test seed 1)" in bench._seed(vars(again)) and bench._seed(vars(first)) == ""
    asks = {args.test_seed: bench.generation_config(bench.parse_args([*argv, "--generate-users", "3"])) for args, argv in
            ((first, ["--data", str(amazon_dir)]), (again, ["--data", str(amazon_dir), "--test-seed", "1"]))}
    asked = {seed: [c.example.user for c in prepare_cases(dataset, config.cases)] for seed, config in asks.items()}
    assert asked[0] == users[0] and asked[1] == users[1]  # the chat asks follow the draw: the ranking's users


def test_work_dir_of_another_recipe_is_refused(bench, tmp_path: Path) -> None:
    work = tmp_path / "q-work"
    bench.check_work(bench.parse_args(["--steps", "10"]), work)
    bench.check_work(bench.parse_args(["--steps", "10", "--skip", "distilled"]), work)  # what is skipped changes no result
    bench.check_work(bench.parse_args(["--steps", "10", "--outtype", "none"]), work)  # GGUF rows are added or left out
    bench.check_work(bench.parse_args(["--steps", "10", "--generate-users", "5"]), work)  # so are the chat answers
    bench.check_work(bench.parse_args(["--steps", "10", "--threads", "1"]), work)  # nor how many cores run it
    recorded = json.loads((work / "recipe.json").read_text())
    (work / "recipe.json").write_text(json.dumps({**recorded, "threads": 1}))  # a recipe that recorded them (the keep curve's did)
    bench.check_work(bench.parse_args(["--steps", "10"]), work)
    with pytest.raises(SystemExit, match="other settings .*steps"):
        bench.check_work(bench.parse_args(["--steps", "20"]), work)


def test_threads_reach_llama_cpp_and_bad_counts_are_refused(bench, tiny_llama: Path, tmp_path: Path, capsys) -> None:
    """``--threads N``: the GGUF rows' llama.cpp scorer and the chat asks run on N threads (a busy machine)."""
    args = bench.parse_args(["--threads", "1", "--outtype", "f32"])
    assert bench.eval_config(args, split="test", regime="uniform").threads == 1  # the chat asks' config too
    gguf = bench.export(args, tiny_llama, tmp_path)
    assert bench._scorer(gguf, args).llm.n_threads == 1
    assert bench._scorer(gguf, bench.parse_args([])).llm.n_threads == (os.cpu_count() or 1)
    for bad in ("0", "-2"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--threads", bad])
        assert "argument --threads: must be at least 1" in capsys.readouterr().err


def test_models_made_apart_are_scored_as_rows_beside_the_recipe(bench, tiny_llama: Path, tmp_path: Path, capsys) -> None:
    """``--also NAME=PATH``: a row of its own (a GGUF also asked in chat), not part of the recipe; bad forms refused."""
    gguf = tmp_path / "stage2.gguf"
    gguf.write_bytes(b"GGUF")
    args = bench.parse_args(["--also", f"slim + answers={tiny_llama}", "--also", f"its gguf={gguf}"])
    assert bench.also_rows(args, {"full fine-tuned": tiny_llama}) == {"slim + answers": tiny_llama, "its gguf": gguf}
    shipped_row = "slim mlp-fold + healed + distilled (q8_0 GGUF, llama.cpp)"
    for clash in (["--also", f"full fine-tuned={tiny_llama}"], ["--also", f"{shipped_row}={tiny_llama}"],
                  ["--also", f"x={tiny_llama}", "--also", f"x={gguf}"]):
        with pytest.raises(SystemExit):  # refused before any healing, not after it
            bench.parse_args(clash)
        assert "names a row twice" in capsys.readouterr().err
    assert bench.also_rows(bench.parse_args(["--skip", "distilled", "--also", f"{shipped_row}={gguf}"]), {}) == {shipped_row: gguf}
    assert bench.also_rows(bench.parse_args(["--outtype", "none", "--also", f"{shipped_row}={gguf}"]), {}) == {shipped_row: gguf}
    for bad in ("no-equals-sign", f"={tiny_llama}", f"x={tmp_path / 'missing'}"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--also", bad])
    work = tmp_path / "q-work"
    bench.check_work(bench.parse_args(["--steps", "10"]), work)
    bench.check_work(bench.parse_args(["--steps", "10", "--also", f"x={tiny_llama}"]), work)  # adds a row, changes no result


def test_the_shipped_gguf_is_scored_through_llama_cpp_like_the_model(bench, tiny_llama: Path, amazon_dir: Path, tmp_path: Path) -> None:
    """Each healed slim model is exported at --outtype and scored by llama.cpp on the same users and candidates."""
    args = bench.parse_args(["--data", str(amazon_dir), "--test-users", "3", "--valid-users", "2", "--dtype", "float32", "--outtype", "f32"])
    dataset = load_dataset(args.data)
    found = {"zero-shot full": tiny_llama, "slim mlp-fold + healed": tiny_llama}
    ggufs = bench.shipped(args, found, tmp_path)
    assert list(ggufs) == ["slim mlp-fold + healed (f32 GGUF, llama.cpp)"] and next(iter(ggufs.values())).is_file()
    by_llama = bench.scores_of(next(iter(ggufs)), next(iter(ggufs.values())), args, dataset, tmp_path)
    by_transformers = bench.scores_of("tiny", tiny_llama, args, dataset, tmp_path)
    for key in by_transformers:
        np.testing.assert_allclose(by_llama[key], by_transformers[key], atol=2e-3)
    assert bench.shipped(bench.parse_args(["--outtype", "none"]), found, tmp_path) == {}


@pytest.mark.slow
def test_the_whole_benchmark_heals_with_the_teacher_and_reports_the_budget(bench, tiny_llama: Path, amazon_dir: Path, tmp_path: Path, capsys) -> None:
    """Full and slim healed on both regimes; the distilled row with listwise KD and alignment;
    the slim models their own step count; every row scored and each slim row's GGUF too, on
    the healing data and across domains."""
    out = tmp_path / "q"
    report = bench.main(["--model", str(tiny_llama), "--data", str(amazon_dir), "--kept", "ranked:3", "--select-users", "4", "--test-users", "4", "--valid-users", "2",
                         "--steps", "2", "--slim-steps", "3", "--batch-size", "2", "--rank-negatives", "2", "--rank-regimes", "uniform,popularity",
                         "--listwise-weight", "1", "--align-weight", "0.5", "--outtype", "f32", "--skip", "plain-drop,bridged-unhealed",
                         "--mixed-precision", "no", "--dtype", "float32", "--calib-tokens", "256", "--cross-data", "movielens-100k",
                         "--generate-users", "3", "--out", str(out)])
    assert len(report["kept_layers"]) == 3 and report["kept_layers"] == sorted(report["kept_layers"])  # selected on validation users
    healing = report["healing"]
    assert healing["full fine-tuned"]["steps"] == 2
    assert healing["slim mlp-fold + healed"]["steps"] == healing["slim mlp-fold + healed + distilled"]["steps"] == 3
    assert healing["slim mlp-fold + healed + distilled"]["teacher"]["forwards"] > 0  # the teacher ran for the listwise and alignment terms
    assert healing["slim mlp-fold + healed"]["teacher"] is None
    models = report["regimes"]["popularity"]["models"]
    assert "slim plain drop, no healing" not in models
    assert "slim mlp-fold + healed + distilled (f32 GGUF, llama.cpp)" in models
    assert all("retained_vs_full_finetuned" in row for key, row in models.items() if key != "full fine-tuned")
    cross = report["cross"]["regimes"]["uniform"]["models"]
    assert set(cross) == set(models)  # every model scored on the other domain's users too
    assert cross["zero-shot full"]["ndcg@10"] != models["zero-shot full"]["ndcg@10"]
    asked = report["generation"]  # every GGUF row and both full models, asked in chat through llama.cpp
    assert list(asked) == ["zero-shot full (f32 GGUF, llama.cpp)", "full fine-tuned (f32 GGUF, llama.cpp)",
                           "slim mlp-fold + healed (f32 GGUF, llama.cpp)", "slim mlp-fold + healed + distilled (f32 GGUF, llama.cpp)"]
    assert all(row["users"] == 3 and 0 <= row["figures"]["title"]["mean"] <= 1 and len(row["examples"]) == 3 for row in asked.values())
    assert len({row["gguf"] for row in asked.values()}) == 4
    assert "zero-shot full (f32 GGUF, llama.cpp) asked: 2/3 users" in capsys.readouterr().err  # a slow ask shows it moves
    kept = sorted((tmp_path / "q-work" / "generation").glob("*.answers.json"))  # the answers, judged again on a rerun
    assert len(kept) == 4 and all(len(json.loads(p.read_text())["answers"]) == 3 for p in kept)
    text = out.with_suffix(".md").read_text()
    assert "## asked in chat (3 test users" in text and "Example 3, slim mlp-fold + healed + distilled" in text
    assert "cross-domain: " in text
    assert "listwise KD over the candidates (weight 1.0" in text and "the slim models 3 steps" in text


def test_a_selection_can_measure_a_second_data_set(bench, tiny_llama: Path, amazon_dir: Path, tmp_path: Path) -> None:
    base = ["--model", str(tiny_llama), "--data", str(amazon_dir), "--select-users", "3", "--dtype", "float32"]
    both = bench.select_path(bench.parse_args([*base, "--select-data", "movielens-100k"]), tmp_path, strategy="backward", target=2)
    one = bench.select_path(bench.parse_args(base), tmp_path, strategy="backward", target=2)
    selections = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "select").rglob("selection.json")}
    assert selections["movielens-100k"]["also_data"] == ["movielens-100k"] and selections["select"]["also_data"] == []
    assert selections["movielens-100k"]["full"]["val_loss"] != pytest.approx(selections["select"]["full"]["val_loss"])  # other users measured
    assert sorted(both) == sorted(one) == [2, 3, 4, 5]  # each cached apart: neither run read the other's path
    assert (tmp_path / "select" / "backward-2.json").is_file() and (tmp_path / "select" / "movielens-100k" / "backward-2.json").is_file()


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_hardware(bench, monkeypatch, native: bool) -> None:
    """``auto`` is bf16 only where bf16 matmuls are native (torch emulates them on AVX2 CPUs, about
    20x slower than float32 for a training step: tools/bench_precision.py); the recipe records the
    concrete choice, and an explicit one is kept."""
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    args = bench.parse_args([])
    assert (args.dtype, args.mixed_precision) == (("bfloat16", "bf16") if native else ("float32", "no"))
    args = bench.parse_args(["--dtype", "float16", "--mixed-precision", "fp16"])
    assert (args.dtype, args.mixed_precision) == ("float16", "fp16")


def test_the_slim_model_can_be_cut_from_the_fine_tuned_model(bench, tiny_llama: Path, amazon_dir: Path, tmp_path: Path) -> None:
    """``--slim-from teacher``: the kept layers carry the fine-tuned weights, not the original's, and the
    compact model says where it was cut from."""
    import json

    import torch

    model, tokenizer = load(tiny_llama)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(1.5)
    teacher = tmp_path / "teacher"
    model.save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    args = bench.parse_args(["--model", str(tiny_llama), "--data", str(amazon_dir), "--calib-tokens", "64", "--slim-from", "teacher"])
    kept = [0, 2]
    cut = {name: load(bench.build_slim(args, tmp_path, "none", kept=kept, name=name, source=source))[0]
           for name, source in (("from-original", None), ("from-teacher", teacher))}
    original, _ = load(tiny_llama)
    for i, j in enumerate(kept):
        q = lambda m, n: m.model.layers[n].self_attn.q_proj.weight  # noqa: E731
        torch.testing.assert_close(q(cut["from-teacher"], i), q(model, j))
        torch.testing.assert_close(q(cut["from-original"], i), q(original, j))
        assert not torch.allclose(q(cut["from-teacher"], i), q(original, j))
    provenance = json.loads((tmp_path / "from-teacher" / "slim.json").read_text())
    assert provenance["source"]["fine_tuned"] == str(teacher) and provenance["kept"] == kept
    assert "cut from the full fine-tuned model" in bench._cut_from(vars(args))
    assert bench._cut_from(vars(bench.parse_args([]))) == ""


def test_the_bridges_can_be_fitted_on_several_data_sets(bench, tiny_llama: Path, amazon_dir: Path, tmp_path: Path) -> None:
    """``--calib-data`` twice: the bridges are fitted on both sets' train prompts, ``--calib-tokens`` shared
    evenly, and the report says what they were fitted on; without it, on ``--data``'s alone."""
    from ollama_slim.models.modeling import load_tokenizer
    from ollama_slim.slimming import bridges as br

    base = ["--model", str(tiny_llama), "--data", str(amazon_dir), "--calib-tokens", "128"]
    both = bench.parse_args([*base, "--calib-data", str(amazon_dir), "--calib-data", "movielens-100k"])
    fitted = {name: json.loads((bench.build_slim(args, tmp_path, "mlp-fold", kept=[0, 2], name=name) / "slim.json").read_text())["bridge"]["calibration"]
              for name, args in (("one", bench.parse_args(base)), ("both", both))}
    tokenizer = load_tokenizer(tiny_llama)
    mixed = br.mixed_calibration(tokenizer=tokenizer, datasets=[load_dataset(amazon_dir), load_dataset("movielens-100k")], max_tokens=128)
    alone = br.calibration_batches(tokenizer=tokenizer, dataset=load_dataset(amazon_dir), max_tokens=128)
    assert (fitted["both"]["sequences"], fitted["both"]["tokens"]) == (len(mixed), sum(map(len, mixed)))
    assert (fitted["one"]["sequences"], fitted["one"]["tokens"]) == (len(alone), sum(map(len, alone)))
    assert "fitted on 128 calibration tokens shared among amazon-electronics-2014, movielens-100k." in bench._cut_from(vars(both))
    own = bench.parse_args([*base, "--calib-own-text"])
    fitted = json.loads((bench.build_slim(own, tmp_path, "mlp-fold", kept=[0, 2], name="own") / "slim.json").read_text())["bridge"]["calibration"]
    assert fitted["sequences"] == len(br.calibration_batches(tokenizer=tokenizer, dataset=load_dataset(amazon_dir), max_tokens=64)) + 1  # one sampled text
    assert f"shared among {amazon_dir.name}, the original model's own sampled text." in bench._cut_from(vars(own))


def test_the_slim_models_can_heal_at_their_own_learning_rate(bench, tmp_path: Path) -> None:
    """``--slim-lr`` sets the slim models' peak learning rate only; the full model keeps ``--lr``, and the report says so."""
    args = bench.parse_args(["--lr", "1e-4", "--slim-lr", "3e-4", "--slim-steps", "600", "--steps", "200"])
    full = bench.heal_config(args, tmp_path, tmp_path / "ft-full")
    slim = bench.heal_config(args, tmp_path, tmp_path / "slim", teacher=tmp_path, slim=True)
    assert (full.lr, full.steps) == (1e-4, 200) and (slim.lr, slim.steps) == (3e-4, 600)
    assert "peak learning rate is 0.0003 (the full model's 0.0001)" in bench._budget(vars(args), 10)
    plain = bench.parse_args(["--lr", "1e-4"])
    assert bench.heal_config(plain, tmp_path, tmp_path / "slim", slim=True).lr == 1e-4
    assert "learning rate" not in bench._budget(vars(plain), 10)


def test_the_zero_shot_row_can_be_left_out(bench, amazon_dir: Path) -> None:
    """``--skip zero-shot``: the report has no zero-shot row and no fine-tuning gain, the rest is unchanged."""
    args = bench.parse_args(["--data", str(amazon_dir), "--test-users", "6", "--valid-users", "4"])
    dataset = load_dataset(args.data)
    rng = np.random.default_rng(0)
    scores = {key: {f"{split}/{regime}": rng.normal(size=(args.test_users if split == "test" else args.valid_users, 20))
                    for split in ("test", "valid") for regime in bench.REGIMES}
              for key in ("zero-shot full", "full fine-tuned", "slim mlp-fold + healed + distilled")}
    with_zero = bench.regime_report("uniform", scores, args, dataset)
    without = bench.regime_report("uniform", {k: v for k, v in scores.items() if k != "zero-shot full"}, args, dataset)
    assert "full_finetuned_minus_zero_shot" in with_zero and "full_finetuned_minus_zero_shot" not in without
    assert without["models"]["slim mlp-fold + healed + distilled"] == with_zero["models"]["slim mlp-fold + healed + distilled"]
    report = {"config": vars(args) | {"data": str(args.data), "out": str(args.out)}, "kept_layers": [0, 1], "regimes": {"uniform": without}}
    text = bench.markdown(report)
    assert "zero-shot" not in text.split("## uniform")[1] and "| slim mlp-fold + healed + distilled |" in text


def test_no_valid_users_scores_the_test_split_only_and_drops_the_prior(bench, amazon_dir: Path) -> None:
    """``--valid-users 0``: one split scored, no prior columns; the retained figures are the same as with them."""
    with_valid = bench.parse_args(["--data", str(amazon_dir), "--test-users", "6", "--valid-users", "4"])
    without = bench.parse_args(["--data", str(amazon_dir), "--test-users", "6", "--valid-users", "0"])
    assert bench.scored_splits(with_valid) == ("test", "valid") and bench.scored_splits(without) == ("test",)
    dataset = load_dataset(with_valid.data)
    rng = np.random.default_rng(1)
    scores = {key: {f"{split}/{regime}": rng.normal(size=(6 if split == "test" else 4, 20)) for split in ("test", "valid") for regime in bench.REGIMES}
              for key in ("full fine-tuned", "slim mlp-fold + healed + distilled")}
    full = bench.regime_report("uniform", scores, with_valid, dataset)
    test_only = bench.regime_report("uniform", {k: {s: v for s, v in by.items() if s.startswith("test/")} for k, by in scores.items()}, without, dataset)
    slim = "slim mlp-fold + healed + distilled"
    assert "prior_weight" in full["models"][slim] and "prior_weight" not in test_only["models"][slim]
    assert test_only["models"][slim]["retained_vs_full_finetuned"] == full["models"][slim]["retained_vs_full_finetuned"]
    text = bench.markdown({"config": vars(without) | {"data": str(without.data), "out": str(without.out)}, "kept_layers": [0, 1], "regimes": {"uniform": test_only}})
    assert "no prior columns" in text and f"| {slim} |" in text and text.count("— | —") == 2


def test_popularity_debias_reaches_the_healing_and_the_report(bench, tmp_path: Path) -> None:
    args = bench.parse_args(["--popularity-debias", "0.5", "--rank-negatives", "4"])
    assert bench.heal_config(args, tmp_path / "model", tmp_path / "out").popularity_debias == 0.5
    assert bench.heal_config(args, tmp_path / "model", tmp_path / "out", slim=True).popularity_debias == 0.5  # the slim models alike
    assert bench._rank_recipe(vars(args)).startswith("title loss weighted by train count^-0.5, ranking loss over 1+4")
    plain = bench.parse_args(["--rank-negatives", "4"])
    assert bench.heal_config(plain, tmp_path / "model", tmp_path / "out").popularity_debias == 0.0
    assert bench._rank_recipe(vars(plain)).startswith("ranking loss over 1+4")
    bench.check_work(plain, tmp_path / "w")
    with pytest.raises(SystemExit, match="popularity_debias"):  # it changes the healed models
        bench.check_work(args, tmp_path / "w")


def test_early_stopping_settings_reach_both_healings_and_the_report(bench, tmp_path: Path) -> None:
    """``--val-users`` and ``--val-measure`` go to the full and the slim healing alike, and the budget sentence names them."""
    args = bench.parse_args(["--early-stop-patience", "3", "--eval-every", "100", "--val-measure", "ndcg-both", "--val-users", "256"])
    for config in (bench.heal_config(args, tmp_path, tmp_path / "ft-full"), bench.heal_config(args, tmp_path, tmp_path / "slim", teacher=tmp_path, slim=True)):
        assert (config.val_users, config.val_measure, config.early_stop_patience, config.eval_every) == (256, "ndcg-both", 3, 100)
    assert "stops early on NDCG@10 (mean of uniform and popularity negatives) of 256 validation users, measured every 100 steps (patience 3" in bench._budget(vars(args), 10)
    assert "stops early" not in bench._budget(vars(bench.parse_args([])), 10)
    assert bench.heal_config(bench.parse_args([]), tmp_path, tmp_path / "ft-full").val_users == 32  # finetune's own default
    assert bench.heal_config(bench.parse_args(["--checkpoint-every", "200"]), tmp_path, tmp_path / "ft-full").checkpoint_every == 200


def test_the_chat_format_reaches_healing_and_scoring(bench, tiny_llama: Path, amazon_dir: Path, tmp_path: Path) -> None:
    """``--task-format chat``: both healings train on the prompt `ollama run` renders, and the rows are
    scored in it (the same ranking ``eval --task-format chat`` gives), not in the raw listing."""
    from ollama_slim.recsys.evaluate import evaluate
    from ollama_slim.recsys.metrics import per_user_metrics

    args = bench.parse_args(["--task-format", "chat", "--answers", "4", "--data", str(amazon_dir), "--test-users", "3", "--valid-users", "2", "--dtype", "float32"])
    for config in (bench.heal_config(args, tmp_path, tmp_path / "ft-full"), bench.heal_config(args, tmp_path, tmp_path / "slim", teacher=tmp_path, slim=True)):
        assert (config.task_format, config.answers) == ("chat", 4)
    dataset = load_dataset(args.data)
    chat = bench.scores_of("tiny", tiny_llama, args, dataset, tmp_path / "chat")
    raw = bench.scores_of("tiny", tiny_llama, bench.parse_args(["--data", str(amazon_dir), "--test-users", "3", "--valid-users", "2", "--dtype", "float32"]), dataset, tmp_path / "raw")
    assert not np.allclose(chat["test/uniform"], raw["test/uniform"], atol=1e-3)
    config = bench.eval_config(args, split="test", regime="uniform")
    alone = evaluate(str(tiny_llama), replace(config, resamples=10))
    np.testing.assert_allclose(per_user_metrics(chat["test/uniform"])["rank"], alone.per_user["rank"])
    assert "chat prompt (the model's template" in bench._format(vars(args)) and "4 answers per prompt" in bench._format(vars(args))
    assert bench._format(vars(bench.parse_args([]))) == ""
    bench.check_work(bench.parse_args([]), tmp_path / "w", defaults=vars(bench.parse_args([])))
    with pytest.raises(SystemExit, match="task_format"):  # the chat format changes every healed model and score
        bench.check_work(args, tmp_path / "w", defaults=vars(bench.parse_args([])))


def test_asking_in_chat_needs_a_gguf_and_reports_each_model(bench, capsys) -> None:
    """``--generate-users`` asks the GGUFs: refused without an --outtype; its table holds every model's shares
    and the last row's conversations."""
    with pytest.raises(SystemExit):
        bench.parse_args(["--generate-users", "10", "--outtype", "none"])
    assert "--outtype" in capsys.readouterr().err
    iv = lambda m: {"mean": m, "low": m - 0.1, "high": m + 0.1}  # noqa: E731
    cfg = {"max_tokens": 32, "phrasings": ["next", "own"]}
    example = {"user": 7, "phrasing": "own", "message": "I bought A and B. What next?", "answer": "C (2010)", "match": "C", "target": False, "listed": False}
    generation = {name: {"users": 10, "config": cfg, "figures": {"title": iv(t), "new_title": iv(t - 0.2), "target": iv(0.1)}, "distinct": d,
                         "top_answer": {"answer": "C (2010)", "users": 3}, "examples": [example]}
                  for name, t, d in (("full fine-tuned (q8_0 GGUF, llama.cpp)", 0.9, 0.5), ("slim (q8_0 GGUF, llama.cpp)", 0.6, 0.3))}
    generation["full fine-tuned (q8_0 GGUF, llama.cpp)"]["distinct_titles"] = 0.2  # the slim row's answers were cached before it was measured
    text = "\n".join(bench._generation_lines(generation))
    assert "| full fine-tuned (q8_0 GGUF, llama.cpp) | 0.900 [0.800, 1.000] | 0.700 [0.600, 0.800] | 0.100 [0.000, 0.200] | 0.500 | 0.200 |" in text
    assert "| 0.300 | - | 'C (2010)' x 3 |" in text
    assert "| slim (q8_0 GGUF, llama.cpp) | 0.600 [0.500, 0.700] |" in text and "10 test users, greedy" in text
    cfg["seed"] = 2  # a confirming draw says so
    assert "## asked in chat (10 test users (test seed 2), greedy" in "\n".join(bench._generation_lines(generation))
    assert "Example 1, slim (q8_0 GGUF, llama.cpp) (own), user 7" in text and "-> C (2010)" in text and "'C'." in text
