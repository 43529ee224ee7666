"""Every stage command run alone leaves its result file in the run directory (the tiny Llama, toy data)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from ollama_server import OllamaStandIn, ollama_server  # noqa: F401 - fixture

from ollama_slim.cli import main
from ollama_slim.pipeline.layout import RunLayout
from toy_data import write_toy_data


def _commands(model: str, data: str, run: RunLayout) -> list[tuple[list[str], list[Path]]]:
    """Each stage's command, in run order, and the files it must leave."""
    r = str(run.root)
    return [
        (["resolve", model, "--run-dir", r], [run.resolve]),
        (["score", model, "--data", data, "--methods", "block-influence", "--calib-users", "4", "--run-dir", r], [run.scores, run.scores_png]),
        (["select", r, "--keep", "3", "--strategy", "ranked", "--val-users", "4"], [run.selection, run.selection_png]),
        (["build", model, "--run-dir", r], [run.compact_dir / "config.json", run.build_record]),
        (["finetune", r, "--data", data, "--steps", "2", "--batch-size", "2", "--checkpoint-every", "2"], [run.healed_dir / "config.json", run.finetune_record]),
        (["export", r, "--outtype", "f32"], [run.gguf, run.modelfile, run.original_gguf("f32"), run.export_record]),
        (["register", r, "--name", "tiny-slim"], [run.register]),
        (["bench", str(run.original_gguf("f32")), r, "--backend", "llama-cpp", "--repeats", "1", "--tokens", "4"], [run.bench]),
        (["eval", str(run.healed_dir), "--data", data, "--users", "4", "--negatives", "3", "--run-dir", r, "--label", "slim"], [run.eval_record("slim")]),
    ]


def test_each_stage_command_leaves_its_result_file(tiny_llama: Path, tmp_path: Path, ollama_server: OllamaStandIn) -> None:
    run = RunLayout(tmp_path / "run")
    data = str(write_toy_data(tmp_path / "toy"))
    for args, files in _commands(str(tiny_llama), data, run):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, f"{args[0]}: {result.output}"
        missing = [f.name for f in files if not f.exists()]
        assert not missing, f"`ollama-slim {args[0]}` left no {missing}"
    assert json.loads(run.resolve.read_text())["num_layers"] == 6
    assert json.loads(run.build_record.read_text())["kept"] == json.loads(run.selection.read_text())["kept"]
    assert json.loads(run.finetune_record.read_text())["steps"] == 2
    export = json.loads(run.export_record.read_text())
    assert export["outtype"] == "f32" and export["check"]["passed"] and export["check"]["top1_agree"] == export["check"]["n_prompts"]
    assert json.loads(run.register.read_text())["name"] == "tiny-slim"
    assert json.loads(run.bench.read_text())["backend"] == "llama-cpp"
    assert json.loads(run.eval_record("slim").read_text())["config"]["negatives"] == 3


def test_export_of_a_run_takes_no_out(tmp_path: Path) -> None:
    run = RunLayout(tmp_path / "run")
    run.compact_dir.mkdir(parents=True)
    result = CliRunner().invoke(main, ["export", str(run.root), "--out", str(tmp_path / "x.gguf")])
    assert result.exit_code == 2 and "--out does not go with a run directory" in result.output
    result = CliRunner().invoke(main, ["export", str(run.root)])
    assert result.exit_code == 1 and f"run directory {run.root} has no model to export" in result.output


def test_eval_label_must_be_a_file_name_part(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["eval", "x", "--data", "movielens-100k", "--run-dir", str(tmp_path), "--label", "../up"])
    assert result.exit_code == 2 and "cannot be part of a file name" in result.output
