"""tools/bench_keep_curve.py: each K's layers from one selection path, healed, shipped, scored and timed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tool_modules import load_tool


@pytest.fixture(scope="module")
def curve_tool():
    return load_tool("bench_keep_curve")


def test_bad_keeps_and_no_outtype_are_refused(curve_tool) -> None:
    with pytest.raises(SystemExit):
        curve_tool.parse_args(["--keeps", "8,ten"])
    with pytest.raises(SystemExit):
        curve_tool.parse_args(["--outtype", "none"])
    assert curve_tool.parse_args(["--keeps", "12,8,12"]).keep_list == [8, 12]


@pytest.mark.slow
def test_the_curve_on_a_tiny_model(curve_tool, tiny_llama: Path, amazon_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.md").write_text("# a run's report\n")
    args = ["--model", str(tiny_llama), "--data", str(amazon_dir), "--keeps", "2,4", "--select-users", "4", "--test-users", "4",
            "--valid-users", "2", "--steps", "2", "--batch-size", "2", "--rank-negatives", "2", "--listwise-weight", "1",
            "--outtype", "f32", "--mixed-precision", "no", "--dtype", "float32", "--calib-tokens", "256", "--speed-repeats", "1",
            "--threads", "1", "--out", str(tmp_path / "curve"), "--report", str(run / "report.md")]
    report = curve_tool.main(args)
    kept = {row["keep"]: row["kept"] for row in report["points"]}
    assert sorted(kept) == [2, 4] and len(kept[2]) == 2 and len(kept[4]) == 4
    assert set(kept[2]) <= set(kept[4])  # one selection path: the smaller set lies inside the larger
    for row in report["points"]:
        assert row["speed"]["prompt"] > 0 and row["speed"]["generation"] > 0 and 0 < row["speed"]["size"] < 1
        for regime in ("uniform", "popularity"):
            assert 0.0 <= row["regimes"][regime]["ndcg@10"]["mean"] <= 1.0 and "retained" in row["regimes"][regime]["retained"]
    written = json.loads((tmp_path / "curve.json").read_text())["points"]
    assert [(p["keep"], p["kept"], p["speed"]) for p in written] == [(p["keep"], p["kept"], p["speed"]) for p in report["points"]]
    text = (run / "report.md").read_text()
    assert text.startswith("# a run's report") and "![keep versus quality](curve.png)" in text and (run / "curve.png").stat().st_size > 0
    curve_tool.main(args)  # a rerun reads every cache and replaces its section of the report
    assert (run / "report.md").read_text().count("Keep versus quality") == 1
    twins = curve_tool.main(args + ["--measure", "transformers"])  # the same healed models, scored in transformers (f32: the GGUF's twin)
    assert "transformers, float32)" in (run / "report.md").read_text() and [p["kept"] for p in twins["points"]] == [p["kept"] for p in report["points"]]
    for ours, theirs in zip(twins["points"], report["points"]):
        for regime in ("uniform", "popularity"):
            assert abs(ours["regimes"][regime]["ndcg@10"]["mean"] - theirs["regimes"][regime]["ndcg@10"]["mean"]) < 0.05


def test_a_work_directory_made_before_an_option_still_resumes(curve_tool, tmp_path: Path) -> None:
    """An option added since (at its default) does not refuse an older work directory; a changed setting does."""
    args = curve_tool.parse_args(["--keeps", "8,10"])
    work = tmp_path / "curve-work"
    curve_tool.check_work(args, work)
    recipe = json.loads((work / "recipe.json").read_text())
    del recipe["val_users"]  # as written before --val-users existed
    (work / "recipe.json").write_text(json.dumps(recipe))
    curve_tool.check_work(args, work)
    with pytest.raises(SystemExit, match=r"other settings \(val_users\)"):
        curve_tool.check_work(curve_tool.parse_args(["--keeps", "8,10", "--val-users", "64"]), work)
