"""Layer selection strategies, their files and errors, on tiny models; the Done-when run on SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ollama_slim import paths
from ollama_slim.cli import main
from ollama_slim.errors import RunError, SelectionError, UsageError
from ollama_slim.slimming.importance import ScoreConfig, score_layers
from ollama_slim.slimming.selection import STRATEGIES, SelectConfig, check_target, select_layers
from toy_data import write_toy_data


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_data(tmp_path_factory.mktemp("toy-data"))


@pytest.fixture(scope="module")
def scored_run(tiny_llama: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("scored-run")
    score_layers(ScoreConfig(model=str(tiny_llama), data=str(toy_data), methods=("block-influence", "ablation"), calib_users=6, run_dir=run))
    return run


def _select(run: Path, **kw) -> object:
    return select_layers(SelectConfig(source=str(run), val_users=6, batch_size=3, **kw))


def test_ranked_follows_the_fused_order(scored_run: Path) -> None:
    order = json.loads((scored_run / "scores.json").read_text())["order"]
    result = _select(scored_run, keep=3, strategy="ranked")
    assert result.kept == sorted(order[:3])
    assert [len(s.layers) for s in result.steps] == [1, 2, 3]
    assert [s.changed for s in result.steps] == order[:3]
    data = json.loads((scored_run / "selection.json").read_text())
    assert (data["model"], data["num_layers"], data["kept"], data["strategy"]) == (result.model, 6, sorted(order[:3]), "ranked")
    assert data["scores"]["order"] == order and len(data["steps"]) == 3
    assert {"layers", "val_loss", "ndcg10"} <= set(data["steps"][0])
    assert (scored_run / "selection.png").read_bytes()[:4] == b"\x89PNG"


def test_backward_removes_the_least_harmful_layer_each_step(scored_run: Path) -> None:
    result = _select(scored_run, keep=2, strategy="backward")
    sizes = [len(s.layers) for s in result.steps]
    assert sizes == [5, 4, 3, 2] and result.kept == result.steps[-1].layers
    for before, after in zip([list(range(6))] + [s.layers for s in result.steps], result.steps):
        assert set(before) - set(after.layers) == {after.changed}
    search = result.cache["search"]
    assert search["layer_forwards"] < search["naive_layer_forwards"]


def test_backward_with_a_tiny_cache_selects_the_same_layers(scored_run: Path) -> None:
    roomy = _select(scored_run, keep=3, strategy="backward")
    cramped = select_layers(SelectConfig(source=str(scored_run), keep=3, strategy="backward", val_users=6, batch_size=3, cache_gb=1e-9))
    assert cramped.kept == roomy.kept
    assert [s.val_loss for s in cramped.steps] == pytest.approx([s.val_loss for s in roomy.steps], abs=1e-6)
    assert cramped.cache["search"]["layer_forwards"] > roomy.cache["search"]["layer_forwards"]


def test_forward_adds_the_most_helpful_layer(scored_run: Path) -> None:
    result = _select(scored_run, keep=2, strategy="forward")
    assert [len(s.layers) for s in result.steps] == [1, 2]
    first = result.steps[0]
    # the first pick is the single layer with the lowest validation loss among all six
    assert first.changed in first.layers and result.steps[1].changed not in first.layers


def test_strategies_are_registered() -> None:
    assert {"ranked", "backward", "forward"} <= set(STRATEGIES)


@pytest.mark.parametrize(("kw", "message"), [
    ({"keep": 0}, "--keep must be at least 1, got 0"),
    ({"keep": -2}, "--keep must be at least 1, got -2"),
    ({"keep": 6}, "--keep 6 keeps every layer: the model has 6"),
    ({"keep": 9}, "--keep 9 keeps every layer: the model has 6"),
    ({}, "give either --keep K or --min-retained R"),
    ({"keep": 2, "min_retained": 0.9}, "give either --keep K or --min-retained R"),
    ({"min_retained": 1.5}, "--min-retained must be in (0, 1]"),
    ({"keep": 2, "strategy": "annealing"}, "unknown selection strategy 'annealing'"),
])
def test_bad_targets_are_usage_errors(scored_run: Path, kw: dict, message: str) -> None:
    with pytest.raises(UsageError) as info:
        _select(scored_run, **kw)
    assert message in info.value.one_line() and "\n" not in info.value.one_line()


def test_scores_of_another_model_are_refused(scored_run: Path, tiny_qwen2: Path, tmp_path: Path) -> None:
    scores = paths.read_json(scored_run / "scores.json")
    paths.write_json(tmp_path / "scores.json", scores)
    with pytest.raises(SelectionError, match="was made for"):
        select_layers(SelectConfig(source=str(tiny_qwen2), keep=2, run_dir=tmp_path, val_users=4))
    paths.write_json(tmp_path / "scores.json", scores | {"model": str(tiny_qwen2), "num_layers": 30, "fused": [0.0] * 30})
    with pytest.raises(SelectionError, match="for a model with 30 layers"):
        select_layers(SelectConfig(source=str(tiny_qwen2), keep=2, run_dir=tmp_path, val_users=4))
    assert not (tmp_path / "selection.json").exists()


def test_run_directory_without_scores(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="has no scores.json"):
        select_layers(SelectConfig(source=str(tmp_path), keep=2))


def test_selection_on_two_data_sets_measures_the_users_of_both(scored_run: Path, toy_data: Path, tmp_path: Path) -> None:
    other = write_toy_data(tmp_path / "other", seed=1)
    alone = select_layers(SelectConfig(source=str(scored_run), keep=3, strategy="ranked", data=str(other), val_users=6, batch_size=3))
    one = _select(scored_run, keep=3, strategy="ranked")
    two = _select(scored_run, keep=3, strategy="ranked", also_data=(str(other),))
    assert [s.layers for s in two.steps] == [s.layers for s in one.steps]  # the order is the scores'; only the measure changes
    for a, b, both in zip([one.full, *one.steps], [alone.full, *alone.steps], [two.full, *two.steps]):
        assert both.val_loss == pytest.approx((a.val_loss + b.val_loss) / 2, abs=1e-5)  # 6 users from each set
        assert both.ndcg10 == pytest.approx((a.ndcg10 + b.ndcg10) / 2, abs=1e-6)
    assert one.full.val_loss != pytest.approx(alone.full.val_loss, abs=1e-3)
    assert json.loads((scored_run / "selection.json").read_text())["also_data"] == [str(other)]


def test_cli_select_takes_data_twice(tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    other = write_toy_data(tmp_path / "other", seed=1)
    result = CliRunner().invoke(main, ["select", str(tiny_llama), "--keep", "2", "--strategy", "backward", "--data", str(toy_data), "--data", str(other),
                                       "--val-users", "4", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "4 validation users from each of 2 data sets" in " ".join(result.output.split())
    data = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert (data["data"], data["also_data"], len(data["kept"])) == (str(toy_data), [str(other)], 2)


def test_check_target_accepts_good_values() -> None:
    check_target(keep=1, min_retained=None, num_layers=2)
    check_target(keep=None, min_retained=1.0, num_layers=2)


def test_cli_select_writes_files_and_table(tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["select", str(tiny_llama), "--keep", "2", "--strategy", "backward", "--data", str(toy_data),
                                       "--val-users", "4", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    assert "kept 2 of 6" in result.output and "with prefix caching" in result.output
    data = json.loads((run / "selection.json").read_text())
    assert data["strategy"] == "backward" and len(data["kept"]) == 2 and data["scores"] is None
    assert (run / "selection.png").is_file()


def test_cli_select_ranked_scores_first_when_needed(tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["select", str(tiny_llama), "--keep", "3", "--strategy", "ranked", "--data", str(toy_data), "--val-users", "4",
                                       "--run-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "scores.json").read_text())["methods"].keys() == {"ablation"}  # RANKED_METHODS
    assert json.loads((tmp_path / "selection.json").read_text())["scores"]["order"]


@pytest.mark.parametrize(("args", "message"), [
    (["--keep", "0"], "--keep must be at least 1, got 0"),
    (["--keep", "6"], "--keep 6 keeps every layer"),
    (["--keep", "2", "--strategy", "magic"], "unknown selection strategy 'magic'"),
])
def test_cli_select_errors_are_one_line(scored_run: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["select", str(scored_run), *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_done_when_score_then_select_on_smollm2(smollm2, amazon_dir: Path, tmp_path: Path) -> None:
    """The issue's Done-when commands, with few users to fit the CI budget."""
    run = tmp_path / "run"
    runner = CliRunner()
    scored = runner.invoke(main, ["score", "smollm2:135m", "--data", str(amazon_dir), "--methods", "block-influence,angular,ablation",
                                  "--calib-users", "16", "--run-dir", str(run)])
    assert scored.exit_code == 0, scored.output
    scores = json.loads((run / "scores.json").read_text())
    assert scores["num_layers"] == 30 and set(scores["methods"]) == {"block-influence", "angular", "ablation"}
    assert scores["order"][0] == 0  # the first layer of SmolLM2 is by far the most important one
    selected = runner.invoke(main, ["select", str(run), "--keep", "10", "--strategy", "ranked", "--val-users", "8"])
    assert selected.exit_code == 0, selected.output
    data = json.loads((run / "selection.json").read_text())
    assert data["model"] == "smollm2:135m" and data["num_layers"] == 30 and len(data["kept"]) == 10
    assert data["steps"][-1]["val_loss"] > data["full"]["val_loss"]
    assert (run / "scores.png").stat().st_size > 1000 and (run / "selection.png").stat().st_size > 1000
