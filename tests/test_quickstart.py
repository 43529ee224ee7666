"""The quickstart as a user sees it: `prune` (and `share`) print their own lines and nothing of the
libraries' (progress bars, warnings, llama.cpp's log) unless --verbose; the README's quickstart
figures are what tools/quickstart_figures.py renders from the run it measured.

The commands run in a subprocess, as from a shell, so that what native code writes to file
descriptors 1 and 2 is captured too (click's CliRunner only sees Python's streams).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_slim.pipeline.prune import STAGES
from tool_modules import load_tool
from toy_data import write_toy_data

REPO = Path(__file__).resolve().parents[1]
THIRD_PARTY = ("Loading weights", "Writing model shards", "it/s]", "FutureWarning", "UserWarning", "warnings.warn", "llama_")
TINY_PRUNE = ["--keep", "3", "--methods", "block-influence", "--bridge", "none", "--steps", "2", "--batch-size", "2", "--checkpoint-every", "2",
              "--calib-users", "4", "--val-users", "4", "--eval-users", "4", "--bench-repeats", "1", "--no-reference", "--no-register"]


def _cli(args: list[str], home: Path) -> str:
    """``ollama-slim ARGS`` in a subprocess with an isolated home; everything it printed (stdout and stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_SLIM_DEBUG", "OLLAMA_HOST")}
    env |= {"HOME": str(home), "OLLAMA_SLIM_HOME": str(home / "slim"), "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1",
            "OLLAMA_MODELS": str(home / "ollama"), "COLUMNS": "120"}
    done = subprocess.run([sys.executable, "-m", "ollama_slim.cli", *args], cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert done.returncode == 0, done.stdout
    return done.stdout


def _third_party(output: str) -> list[str]:
    return [marker for marker in THIRD_PARTY if marker in output]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> tuple[Path, Path, str]:
    """The quickstart's shape on the tiny model (`prune llama3.2:1b --keep 3 ...`): (home, run dir, what it printed)."""
    home = tmp_path_factory.mktemp("quickstart")
    data = write_toy_data(home / "toy")
    run = home / "run"
    output = _cli(["prune", "llama3.2:1b", "--hf", str(tiny_llama), "--data", str(data), *TINY_PRUNE, "--run-dir", str(run)], home)
    return home, run, output


def test_prune_shows_its_stage_lines_and_nothing_of_the_libraries(quickstart: tuple[Path, Path, str]) -> None:
    _, run, output = quickstart
    assert _third_party(output) == [], output
    assert "Warning" not in output, output
    for stage in STAGES:
        assert re.search(rf"^  ✓ {stage} +\d+\.\d+s", output, re.M), (stage, output)
    assert output.splitlines()[0] == f"ollama-slim prune llama3.2:1b -> llama3.2-slim in {run}"
    assert re.search(rf"^done in \d+\.\ds \(ran {len(STAGES)} stages, skipped 0\)$", output, re.M), output
    assert re.search(r"^  ✓ finetune +\d+\.\ds  step 2/2 loss \d", output, re.M), output
    assert re.search(r"^  ✓ eval +\d+\.\ds  slim 4/4 users; in chat \d/4 answers are catalogue titles$", output, re.M), output


def test_prune_verbose_lets_the_libraries_through(quickstart: tuple[Path, Path, str], tiny_llama: Path) -> None:
    home, run, _ = quickstart
    output = _cli(["prune", "llama3.2:1b", "--hf", str(tiny_llama), "--data", str(home / "toy"), *TINY_PRUNE, "--run-dir", str(run),
                   "--from", "eval", "--verbose"], home)
    assert {"Loading weights", "it/s]"} <= set(_third_party(output)), output
    assert re.search(r"^  - bench +skipped", output, re.M) and re.search(r"^  ✓ eval +\d", output, re.M), output


def test_share_silences_llama_cpp_unless_verbose(quickstart: tuple[Path, Path, str]) -> None:
    home, run, _ = quickstart
    args = ["share", str(run), "--quants", "Q8_0", "--repeats", "0", "--users", "2"]
    quiet = _cli([*args, "--out", str(home / "hub")], home)
    assert _third_party(quiet) == [] and "ollama-slim share" in quiet, quiet
    verbose = _cli([*args, "--out", str(home / "hub-verbose"), "-v"], home)
    assert {"Loading weights", "llama_"} <= set(_third_party(verbose)), verbose


# -- the README's figures ------------------------------------------------------------


@pytest.fixture(scope="module")
def figures_tool():
    return load_tool("quickstart_figures")


def test_readme_quickstart_figures_are_the_measured_ones(figures_tool) -> None:
    saved = json.loads(figures_tool.FIGURES.read_text(encoding="utf-8"))
    assert saved["command"] == figures_tool.COMMAND
    readme = figures_tool.README.read_text(encoding="utf-8")
    assert f"```\n{figures_tool.COMMAND}\n```" in readme  # the quickstart command the figures were measured with
    assert figures_tool.readme_block(readme) == figures_tool.render(saved), "rerun tools/quickstart_figures.py --write-readme"


def test_figures_are_read_from_the_run(figures_tool, quickstart: tuple[Path, Path, str]) -> None:
    _, run, _ = quickstart
    figures = figures_tool.collect(run, wall=12.3, rerun=1.0, cpu=20.0, load=(0.5, 3.5))
    slim = json.loads((run / "eval_slim.json").read_text())
    assert figures["ndcg10"]["slim"]["mean"] == round(slim["metrics"]["ndcg@10"]["mean"], 4)
    assert figures["ndcg10"]["random"] == round(slim["baselines"]["random"]["ndcg@10"], 4)
    assert list(figures["stages"]) == list(STAGES) and figures["eval"]["users"] == 4
    text = " ".join(figures_tool.render(figures).split())  # as read, whatever the wrapping
    assert "**12 s** end to end, 20 s of CPU time" in text and "load average 0.5 at the start and 3.5 at the end: other jobs" in text
    assert f"slim healed {slim['metrics']['ndcg@10']['mean']:.3f}" in text
    asked = json.loads((run / "generation_slim.json").read_text())  # what the slim GGUF answered in chat
    assert figures["chat"]["slim"]["title"] == round(asked["figures"]["title"]["mean"], 4) and figures["chat"]["slim"]["users"] == 4
    assert f"the slim GGUF gives a catalogue title for {asked['figures']['title']['mean']:.2f} of the users" in text
    assert figures["defaults"]["task_format"] == "chat" and "--task-format chat --full --answers 8" in text  # prune's default recipe


def test_write_readme_replaces_only_the_marked_block(figures_tool) -> None:
    readme = f"# title\n\nbefore\n{figures_tool.BEGIN}\nold figures\n{figures_tool.END}\nafter\n"
    new = figures_tool.with_block(readme, "new figures")
    assert new == f"# title\n\nbefore\n{figures_tool.BEGIN}\nnew figures\n{figures_tool.END}\nafter\n"
    assert figures_tool.readme_block(new) == "new figures"
    with pytest.raises(Exception, match="quickstart-figures"):
        figures_tool.readme_block("# no markers\n")
