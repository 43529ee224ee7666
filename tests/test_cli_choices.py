"""The CLI offers what the library has: choices from the registries, defaults from the config dataclasses."""

from __future__ import annotations

import dataclasses
from typing import Any

import click
import pytest
from click.testing import CliRunner

from ollama_slim.bench.speed import BenchConfig, backend_names
from ollama_slim.cli import main
from ollama_slim.gguf.export import ExportConfig, outtypes
from ollama_slim.models.modeling import DTYPES
from ollama_slim.pipeline.config import PruneConfig
from ollama_slim.pipeline.stages import STAGES
from ollama_slim.recsys.evaluate import EVAL_SPLITS, REGIMES, EvalConfig
from ollama_slim.recsys.scorers import SCORERS
from ollama_slim.slimming.bridges import BRIDGES
from ollama_slim.slimming.build import BuildConfig
from ollama_slim.slimming.finetune import FinetuneConfig
from ollama_slim.slimming.finetune.distill import ALIGN_TARGETS
from ollama_slim.slimming.finetune.losses import ALIGN_LOSSES
from ollama_slim.slimming.finetune.validation import VAL_MEASURES
from ollama_slim.slimming.importance import METHODS, ScoreConfig
from ollama_slim.slimming.selection import STRATEGIES, SelectConfig

# (command, option) -> every name the registry holds, in its order
CHOICES: dict[tuple[str, str], list[str]] = {
    ("prune", "--strategy"): list(STRATEGIES), ("prune", "--bridge"): list(BRIDGES), ("prune", "--outtype"): outtypes(),
    ("prune", "--from"): list(STAGES), ("prune", "--dtype"): list(DTYPES),
    ("select", "--strategy"): list(STRATEGIES), ("select", "--dtype"): list(DTYPES), ("score", "--dtype"): list(DTYPES),
    ("build", "--bridge"): list(BRIDGES), ("build", "--dtype"): list(DTYPES), ("export", "--outtype"): outtypes(),
    ("bench", "--backend"): backend_names(), ("eval", "--backend"): ["auto", *SCORERS],
    ("eval", "--split"): list(EVAL_SPLITS), ("eval", "--regime"): list(REGIMES),
    ("finetune", "--align-kind"): list(ALIGN_LOSSES), ("finetune", "--align-at"): list(ALIGN_TARGETS), ("finetune", "--val-measure"): list(VAL_MEASURES),
}
COMMA_LISTS = {("prune", "--methods"): list(METHODS), ("score", "--methods"): list(METHODS)}
CONFIGS = {"prune": PruneConfig, "score": ScoreConfig, "select": SelectConfig, "build": BuildConfig, "finetune": FinetuneConfig,
           "export": ExportConfig, "bench": BenchConfig, "eval": EvalConfig}


def _option(command: str, flag: str) -> click.Option:
    return next(p for p in main.commands[command].params if isinstance(p, click.Option) and flag in p.opts)


@pytest.mark.parametrize(("command", "flag"), sorted(CHOICES))
def test_every_registered_name_is_a_choice(command: str, flag: str) -> None:
    option = _option(command, flag)
    assert isinstance(option.type, click.Choice) and list(option.type.choices) == CHOICES[command, flag]


@pytest.mark.parametrize(("command", "flag"), sorted(COMMA_LISTS))
def test_comma_lists_name_their_registry_and_check_against_it(command: str, flag: str, tmp_path) -> None:
    help_text = " ".join(CliRunner().invoke(main, [command, "--help"], terminal_width=500).output.split())
    assert all(name in help_text for name in COMMA_LISTS[command, flag])
    args = [command, "m", "--keep", "2"] if command == "prune" else [command, "m", "--data", "d"]
    result = CliRunner().invoke(main, [*args, flag, f"{COMMA_LISTS[command, flag][0]},magic", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "'magic'" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def _default(option: click.Option) -> Any:
    """The option's default as its config holds it: none is None, a comma list a tuple."""
    default = None if option.default is getattr(click.core, "UNSET", None) else option.default
    return tuple(default.split(",")) if isinstance(default, str) and option.callback is not None else default


FROM_RUN = {"eval": {"history", "title_words", "task_format"}}  # default: the prune run's of the model, else the config's


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_defaults_are_the_configs(command: str) -> None:
    fields = {f.name: f.default for f in dataclasses.fields(CONFIGS[command]) if f.default is not dataclasses.MISSING}
    options = [p for p in main.commands[command].params if isinstance(p, click.Option) and p.name in fields and not p.is_flag]
    assert options, command
    from_run = [p for p in options if p.name in FROM_RUN.get(command, ())]
    assert all(_default(p) is None and p.show_default == f"the run's, else {fields[p.name]}" for p in from_run), command
    differ = {p.name: (_default(p), fields[p.name]) for p in options if p not in from_run and _default(p) != fields[p.name]}
    assert not differ, f"`{command}` defaults that are not its config's: {differ}"


@pytest.mark.parametrize(("args", "message"), [
    (["prune", "m", "--keep", "2", "--bridge", "magic"], "--bridge 'magic' is not known"),
    (["select", "run", "--keep", "2", "--strategy", "magic"], "unknown selection strategy 'magic'"),
    (["build", "m", "--layers", "0", "--bridge", "magic"], "--bridge 'magic' is not known"),
    (["eval", "m", "--data", "d", "--regime", "magic"], "--regime 'magic' is not known"),
    (["bench", "a", "b", "--backend", "magic"], "--backend 'magic' is not known"),
    (["export", "dir", "--outtype", "magic"], "--outtype 'magic' is not known"),
])
def test_a_name_no_registry_holds_is_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
