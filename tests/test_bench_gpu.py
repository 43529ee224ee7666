"""tools/bench_gpu.sh: every command it would run parses with the tools' own options."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from tool_modules import TOOLS, load_tool


def test_every_gpu_command_parses(tmp_path: Path) -> None:
    out = subprocess.run(["bash", str(TOOLS / "bench_gpu.sh"), str(tmp_path / "gpu")], env={**os.environ, "DRY_RUN": "1"},
                         capture_output=True, text=True, check=True).stdout
    commands = [shlex.split(line) for line in out.splitlines() if line.strip()]
    assert len(commands) == 8 and not (tmp_path / "gpu" / "quality-work").exists()  # printed, not run
    parsers = {"bench_quality.py": load_tool("bench_quality").parse_args, "bench_keep_curve.py": load_tool("bench_keep_curve").parse_args}
    models = set()
    chat = [c for c in commands if c[0] == "ollama-slim"]
    assert len(chat) == 2
    from ollama_slim.cli.prune import command as prune

    for command in chat:  # the chat part: prune's own options, parsed by click without running
        assert command[1] == "prune"
        params = prune.make_context("prune", command[2:]).params
        assert params["task_format"] == "chat" and params["full"] and params["steps"] >= 2000 and params["run_dir"].parent == tmp_path / "gpu"
    recipes = sorted((p["answers"], p["cf_answers"], p["cf_vocab"]) for p in (prune.make_context("prune", c[2:]).params for c in chat))
    assert recipes == [(1, 1, 150), (8, 0, 0)]  # the catalogue recipe, and examples/smollm2-personal.yaml's
    for command in commands[: len(commands) - len(chat)]:
        assert command[0] == "python"
        args = parsers[Path(command[1]).name](command[2:])
        assert args.test_users >= 1000 and args.full and args.device_map == "cuda" and args.rank_regimes == "uniform,popularity"
        assert args.out.parent == tmp_path / "gpu"
        models.add(args.model)
    assert models == {"smollm2:135m", "qwen2.5:0.5b"}
    only = subprocess.run(["bash", str(TOOLS / "bench_gpu.sh"), str(tmp_path / "gpu")], env={**os.environ, "DRY_RUN": "1", "PARTS": "curve"},
                          capture_output=True, text=True, check=True).stdout
    assert len(only.splitlines()) == 1 and "bench_keep_curve.py" in only


def test_keep10_part_is_the_readme_gpu_row(tmp_path: Path) -> None:
    """PARTS=keep10 (not a default part) runs the CPU's best recipe at the GPU's budget, as the README prints it."""
    out = subprocess.run(["bash", str(TOOLS / "bench_gpu.sh"), str(tmp_path / "gpu")], env={**os.environ, "DRY_RUN": "1", "PARTS": "keep10"},
                         capture_output=True, text=True, check=True).stdout
    (command,) = [shlex.split(line) for line in out.splitlines() if line.strip()]
    args = load_tool("bench_quality").parse_args(command[2:])
    assert args.kept == "0,1,2,8,11,20,21,24,27,29" and args.test_users >= 1000 and args.full and args.outtype == "q8_0"
    assert (args.steps, args.slim_steps, args.batch_size, args.early_stop_patience) == (400, 1200, 16, 3)
    assert args.out == tmp_path / "gpu" / "keep10"


def test_keep10_both_part_guards_both_regimes(tmp_path: Path) -> None:
    """PARTS=keep10-both: keep10's recipe to a larger budget, both healings early-stopped on NDCG@10 over both regimes."""
    out = subprocess.run(["bash", str(TOOLS / "bench_gpu.sh"), str(tmp_path / "gpu")], env={**os.environ, "DRY_RUN": "1", "PARTS": "keep10,keep10-both"},
                         capture_output=True, text=True, check=True).stdout
    keep10, both = (load_tool("bench_quality").parse_args(shlex.split(line)[2:]) for line in out.splitlines() if line.strip())
    assert (both.steps, both.slim_steps, both.val_measure, both.val_users) == (1000, 1500, "ndcg-both", 64)
    assert (keep10.val_measure, keep10.val_users) == ("ndcg", 32)
    same = {k: v for k, v in vars(keep10).items() if k not in ("steps", "slim_steps", "val_measure", "val_users", "checkpoint_every", "out")}
    assert same == {k: v for k, v in vars(both).items() if k in same} and both.out == tmp_path / "gpu" / "keep10-both"


def test_keep10_pop_part_changes_only_the_loss(tmp_path: Path) -> None:
    """PARTS=keep10-pop: keep10's recipe and budget, the ranking loss alone over popularity negatives, ndcg-both stopping."""
    out = subprocess.run(["bash", str(TOOLS / "bench_gpu.sh"), str(tmp_path / "gpu")], env={**os.environ, "DRY_RUN": "1", "PARTS": "keep10,keep10-pop"},
                         capture_output=True, text=True, check=True).stdout
    keep10, pop = (load_tool("bench_quality").parse_args(shlex.split(line)[2:]) for line in out.splitlines() if line.strip())
    assert (pop.rank_regimes, pop.rank_weight, pop.val_measure, pop.val_users) == ("popularity", 1.0, "ndcg-both", 32)
    assert (keep10.rank_regimes, keep10.rank_weight) == ("uniform,popularity", 0.5)
    same = {k: v for k, v in vars(keep10).items() if k not in ("rank_regimes", "rank_weight", "val_measure", "val_users", "out")}
    assert same == {k: v for k, v in vars(pop).items() if k in same} and pop.out == tmp_path / "gpu" / "keep10-pop"


def test_keep10_chat_part_is_keep10_pop_in_the_shipped_format(tmp_path: Path) -> None:
    """PARTS=keep10-chat: keep10-pop's recipe, healed and scored on the chat prompt, 4 answers a prompt, 200 users asked in chat,
    with some title loss left (at rank weight 1 the answers would not be trained at all)."""
    out = subprocess.run(["bash", str(TOOLS / "bench_gpu.sh"), str(tmp_path / "gpu")], env={**os.environ, "DRY_RUN": "1", "PARTS": "keep10-pop,keep10-chat"},
                         capture_output=True, text=True, check=True).stdout
    pop, chat = (load_tool("bench_quality").parse_args(shlex.split(line)[2:]) for line in out.splitlines() if line.strip())
    assert (chat.task_format, chat.answers, chat.generate_users) == ("chat", 4, 200) and 0.5 <= chat.rank_weight < 1
    assert (pop.task_format, pop.answers, pop.generate_users, pop.rank_weight) == ("completion", 1, 0, 1)
    same = {k: v for k, v in vars(pop).items() if k not in ("task_format", "answers", "generate_users", "rank_weight", "out")}
    assert same == {k: v for k, v in vars(chat).items() if k in same} and chat.out == tmp_path / "gpu" / "keep10-chat"
