"""`prune`: the whole chain on the real SmolLM2, resuming, --from, and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from ollama_slim.cli import main
from ollama_slim.pipeline.prune import PruneConfig, command_line, prune
from hub_server import hf_hub  # noqa: F401 - fixture

pytest_plugins: list[str] = []

SECRET = "hf_" + "t0ken" * 7
ARTIFACTS = ("model.gguf", "Modelfile", "report.md", "scores.png", "selection.png", "speed_quality.png", "bench.json", "eval_original.json", "eval_slim.json")


def _config(run_dir: Path, **overrides) -> PruneConfig:
    """A shortened prune: few users, few steps, the cheap scorers."""
    base = dict(model="smollm2:135m", keep=10, run_dir=run_dir, data="movielens-100k", methods=("block-influence", "angular"), bridge="none",
                steps=4, batch_size=2, checkpoint_every=2, calib_users=4, val_users=4, eval_users=4, outtype="q8_0", bench_repeats=1, reference=False)
    return PruneConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from ollama_server import OllamaStandIn

    with OllamaStandIn(tmp_path_factory.mktemp("ollama-store")) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, server, smollm2):
    """One shortened prune, end to end, registered in the stand-in Ollama server."""
    import os

    run_dir = tmp_path_factory.mktemp("prune") / "run"
    from conftest import AMAZON

    cross = str(AMAZON) if (AMAZON / "interactions.tsv").is_file() else "movielens-100k"
    config = _config(run_dir, host=server.url, name="smollm2-slim", reference=True, cross_domain=cross, teacher="original", listwise_weight=1.0,
                     align_weight=0.5, rank_negatives=2, rank_regimes=("uniform", "popularity"), general_weight=1.0, general_texts=4)
    os.environ["HF_TOKEN"] = SECRET  # must never reach a file of the run
    try:
        return config, prune(config)
    finally:
        os.environ.pop("HF_TOKEN", None)


@pytest.mark.slow
def test_prune_end_to_end_registers_and_reports(finished_run, server) -> None:
    config, result = finished_run
    for name in ARTIFACTS:
        assert (config.run_dir / name).is_file(), name
    assert result.registered == "smollm2-slim"
    assert server.store.find("smollm2-slim") is not None
    report = (config.run_dir / "report.md").read_text()
    assert "| random |" in report and "| popularity" in report
    assert command_line(config) in report
    assert "generation tokens/s" in report
    assert "Quality retained on lift" in report and "reference: full model fine-tuned, same budget" in report
    assert "## Cross-domain check" in report and (config.run_dir / "eval_cross_slim.json").is_file()
    asked = json.loads((config.run_dir / "generation_reference.json").read_text())  # the reference asked in chat, like the slim model
    assert asked["users"] == config.eval_users and not (config.run_dir / "reference.q8_0.gguf").exists()  # measured, then removed
    assert "| full model healed the same way (reference)" in report
    healing = json.loads((config.run_dir / "finetune.json").read_text())
    assert healing["teacher"]["forwards"] > 0  # distilled from the original (listwise KD, alignment)
    assert "distilled from the original" in report and "KL on 4 texts it wrote itself weight 1" in report
    assert not list(config.run_dir.glob("*.checkpoints")) and not (config.run_dir / "finetune").exists()  # healed: checkpoints dropped
    for path in config.run_dir.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".md", ""}:
            assert SECRET not in path.read_text(errors="ignore"), path


@pytest.mark.slow
def test_rerun_skips_every_stage(finished_run) -> None:
    config, _ = finished_run
    again = prune(config)
    assert again.ran == []
    assert "finetune" in again.skipped and "export" in again.skipped


@pytest.mark.slow
def test_from_stage_redoes_that_stage_and_later(finished_run) -> None:
    config, _ = finished_run
    before = (config.run_dir / "model.gguf").stat().st_mtime_ns
    redo = prune(PruneConfig(**{**config.__dict__, "from_stage": "export", "register": False}))
    assert redo.ran[:1] == ["export"] and "finetune" in redo.skipped and "build" in redo.skipped
    assert (config.run_dir / "model.gguf").stat().st_mtime_ns != before


@pytest.mark.slow
def test_interrupted_finetune_resumes_to_the_same_weights(finished_run, tmp_path: Path) -> None:
    config, _ = finished_run
    run_dir = tmp_path / "interrupted"
    shutil.copytree(config.run_dir, run_dir, ignore=shutil.ignore_patterns("healed*", "finetune.json", "*.gguf", "Modelfile", "eval_*", "report.md", "bench.json", "register.json"))
    interrupted = _config(run_dir, register=False, **{k: getattr(config, k) for k in ("teacher", "listwise_weight", "align_weight", "rank_negatives", "rank_regimes",
                                                                                 "general_weight", "general_texts")})

    def stop_after_checkpoint(message: str) -> None:
        if message.startswith("finetune: step 3/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune(interrupted, progress=stop_after_checkpoint)
    assert not (run_dir / "healed" / "config.json").exists()
    resumed = prune(interrupted)
    assert resumed.skipped[:4] == ["resolve", "score", "select", "build"]
    want = load_file(str(config.run_dir / "healed" / "model.safetensors"))
    got = load_file(str(run_dir / "healed" / "model.safetensors"))
    assert want.keys() == got.keys()
    for key in want:
        assert (want[key] == got[key]).all(), key


def test_bad_options_fail_fast_with_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, expected in [
        (["prune", "smollm2:135m", "--keep", "0"], "--keep must be at least 1"),
        (["prune", "smollm2:135m", "--keep", "10", "--strategy", "greedy"], "--strategy 'greedy' is not known"),
        (["prune", "smollm2:135m", "--keep", "10", "--name", "bad name!"], "not a valid Ollama model name"),
        (["prune", "smollm2:135m"], "prune needs MODEL and --keep"),
        (["prune", "smollm2:135m", "--keep", "8", "--min-retained", "0.9"], "give either --keep or --min-retained (exactly one)"),
        (["prune", "smollm2:135m", "--min-retained", "1.5"], "--min-retained must be in (0, 1]"),
        (["prune", "smollm2:135m", "--keep", "10", "--rank-weight", "2"], "--rank-weight must be between 0 and 1"),
        (["prune", "smollm2:135m", "--keep", "10", "--rank-negatives", "-1"], "--rank-negatives must be 0 or more"),
        (["prune", "smollm2:135m", "--keep", "10", "--teacher", "original", "--rank-negatives", "0"], "--listwise-weight needs candidates to rank"),
        (["prune", "smollm2:135m", "--keep", "10", "--task-format", "completion", "--rank-negatives", "0"], "--listwise-weight needs candidates to rank"),
        (["prune", "smollm2:135m", "--keep", "10", "--rank-regimes", "uniform,zipf"], "zipf"),
        (["prune", "smollm2:135m", "--keep", "10", "--task-format", "completion", "--align-weight", "-1"], "--align-weight must be 0 or more"),
        (["prune", "smollm2:135m", "--keep", "10", "--general-weight", "12"], "--general-weight needs a teacher"),  # chat's recipe has none
        (["prune", "smollm2:135m", "--keep", "10", "--task-format", "completion", "--general-weight", "-1"], "--general-weight must be 0 or more"),
        (["prune", "smollm2:135m", "--keep", "10", "--task-format", "completion", "--general-weight", "2", "--general-texts", "0"],
         "--general-texts and --general-tokens must be positive"),
        (["prune", "smollm2:135m", "--keep", "10", "--select-data", f"movielens-100k,{tmp_path / 'no-such-data'}"], "no-such-data' not found"),
        (["prune", "smollm2:135m", "--keep", "10", "--cross-domain", "movielens-1m"], "data set 'movielens-1m' not found"),
    ]:
        result = runner.invoke(main, [*args, "--run-dir", str(tmp_path / "run")])
        assert result.exit_code != 0, args
        assert expected in result.output, result.output
        assert not (tmp_path / "run").exists(), "nothing may be written before the options are checked"


def test_the_slim_model_is_distilled_from_the_original_only_when_asked(tmp_path: Path) -> None:
    from ollama_slim.pipeline.layout import RunLayout
    from ollama_slim.pipeline.runner import config_key
    from ollama_slim.pipeline.stages import _finetune_config, _reference_config
    from ollama_slim.slimming.finetune.config import FinetuneConfig

    layout = RunLayout(tmp_path / "run")
    chat = _finetune_config(_config(tmp_path / "run"), layout)  # the default, chat: every weight, 8 answers, no teacher
    assert (chat.distill_from, chat.full, chat.answers, chat.rank_negatives, chat.task_format) == (None, True, 8, 0, "chat")
    assert _finetune_config(_config(tmp_path / "run", teacher="none"), layout).distill_from is None
    heal = _finetune_config(_config(tmp_path / "run", task_format="completion"), layout)  # the completion recipe: distilled from the original
    assert (heal.distill_from, heal.distill_weight, heal.distill_listwise_weight, heal.distill_temperature, heal.align_weight, heal.align_at) == \
        ("smollm2:135m", 0.0, 2.0, 2.0, 0.5, "gap-end")
    assert heal.rank_regimes == ("uniform", "popularity") and heal.rank_negatives == 4
    twin = _finetune_config(_config(tmp_path / "run", hf="Org/Model", task_format="completion"), layout)
    assert (twin.distill_from, twin.distill_hf) == ("smollm2:135m", "Org/Model")  # the weights the slim one was cut from, resolved the same way
    reference = _reference_config(_config(tmp_path / "run", teacher="original", listwise_weight=1.0, rank_negatives=4, reference=True), layout)
    assert reference.distill_from is None  # the full model is not taught by itself
    assert _finetune_config(_config(tmp_path / "run", task_format="completion", listwise_weight=0.0, align_weight=0.0), layout).distill_from is None  # no weight: nothing to distil
    general = _finetune_config(_config(tmp_path / "run", task_format="completion", general_weight=12.0, general_texts=512), layout)
    assert (general.distill_from, general.general_weight, general.general_texts, general.distill_listwise_weight) == ("smollm2:135m", 12.0, 512, 2.0)
    alone = _finetune_config(_config(tmp_path / "run", task_format="completion", listwise_weight=0.0, align_weight=0.0, general_weight=5.0), layout)
    assert (alone.distill_from, alone.general_weight) == ("smollm2:135m", 5.0)  # the general text alone is a teacher term too
    assert (heal.general_weight, heal.general_texts) == (0.0, FinetuneConfig.general_texts)  # off: finetune's own default, as before
    assert config_key(heal, root=layout.root) == config_key(  # the text count is no part of a healing that does not use it
        _finetune_config(_config(tmp_path / "run", task_format="completion", general_texts=64), layout), root=layout.root)
    # the healing recipe is in the slim model's healing key, so a run healed the earlier way heals again
    assert config_key(heal, root=layout.root) != config_key(_finetune_config(_config(tmp_path / "run", teacher="none"), layout), root=layout.root)


def test_config_file_supplies_options(tmp_path: Path) -> None:
    cfg = tmp_path / "prune.yaml"
    cfg.write_text("model: smollm2:135m\nkeep: 0\n")
    result = CliRunner().invoke(main, ["prune", "--config", str(cfg)])
    assert result.exit_code == 2 and "--keep must be at least 1" in result.output


def test_config_file_with_an_unknown_option_is_one_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "prune.yaml"
    cfg.write_text("model: smollm2:135m\nkeep: 10\ncf_vocb: 100\n")  # misspelt: silently ignored, it would heal another way
    result = CliRunner().invoke(main, ["prune", "--config", str(cfg)])
    assert result.exit_code == 2 and "no prune option named cf_vocb" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("example", sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_files_name_prune_options(example: Path) -> None:
    import yaml

    from ollama_slim.cli.prune import command

    data = yaml.safe_load(example.read_text(encoding="utf-8"))
    ctx = command.make_context("prune", ["--config", str(example), "--help"], resilient_parsing=True)
    assert ctx.default_map == {k.replace("-", "_"): v for k, v in data.items()}
    assert f"--config {example.relative_to(example.parents[1]).as_posix()}" in example.read_text(encoding="utf-8").splitlines()[0]


def test_default_names_and_command_line(tmp_path: Path) -> None:
    assert PruneConfig(model="qwen", keep=4).slim_name == "qwen-slim"
    assert PruneConfig(model="smollm2:135m", keep=4).slim_name == "smollm2-slim"
    line = command_line(PruneConfig(model="qwen2.5:0.5b", keep=10, steps=300, register=False))
    assert line == "ollama-slim prune qwen2.5:0.5b --keep 10 --steps 300 --no-register"


def test_reproduce_command_parses_back_to_the_same_config(tmp_path: Path) -> None:
    import shlex

    from ollama_slim.cli.prune import command

    config = PruneConfig(model="smollm2:135m", keep=8, steps=3, checkpoint_every=1, bench_repeats=2, seed=4, title_words=7, bridge="none",
                         methods=("angular",), register=False, reference=True, run_dir=tmp_path / "r", cross_domain="movielens-100k",
                         rank_negatives=4, rank_regimes=("uniform", "popularity"), teacher="original", listwise_weight=1.0, align_weight=0.5,
                         select_data=("ml-100k", str(tmp_path / "amazon")))
    params = command.make_context("prune", shlex.split(command_line(config))[2:]).params
    assert params["methods"] == ("angular",)  # --methods parses to the config's tuple
    assert params["select_data"] == ("ml-100k", str(tmp_path / "amazon"))
    given = command.make_context("prune", ["smollm2:135m", "--keep", "8", "--select-data", "a", "--select-data", "b,a,c"]).params
    assert given["select_data"] == ("a", "b", "c")  # repeated or comma-separated, each once
    params["run_dir"] = Path(params["run_dir"])
    assert PruneConfig(**params) == config


def test_each_task_format_brings_its_healing_recipe() -> None:
    import shlex

    from ollama_slim.cli.prune import command
    from ollama_slim.pipeline.config import RECIPES

    def parsed(line: str) -> PruneConfig:
        return PruneConfig(**command.make_context("prune", shlex.split(line)[2:]).params)

    chat = PruneConfig(model="smollm2:135m", keep=10)
    assert chat.task_format == "chat" and (chat.steps, chat.lr, chat.full, chat.answers, chat.teacher, chat.rank_negatives) == (200, 1e-4, True, 8, "none", 0)
    completion = PruneConfig(model="smollm2:135m", keep=10, task_format="completion")
    assert {k: getattr(completion, k) for k in RECIPES["completion"]} == RECIPES["completion"] and completion.distills()
    assert RECIPES["chat"] != RECIPES["completion"]
    # the command line names the format, not its recipe; options given beside it win over the recipe
    assert command_line(completion) == "ollama-slim prune smollm2:135m --keep 10 --task-format completion"
    assert parsed(command_line(completion)) == completion and parsed("ollama-slim prune smollm2:135m --keep 10") == chat
    lora_chat = PruneConfig(model="smollm2:135m", keep=10, full=False, steps=50)
    assert command_line(lora_chat) == "ollama-slim prune smollm2:135m --keep 10 --steps 50 --no-full"
    assert parsed(command_line(lora_chat)) == lora_chat and lora_chat.answers == 8
    assert parsed("ollama-slim prune m --keep 2 --task-format completion --full --teacher none").full is True


@pytest.mark.slow
def test_share_the_quickstart_run(finished_run, server, hf_hub, tmp_path: Path) -> None:
    """`share` on the quickstart run: a Hub folder whose GGUFs, card, licence and Ollama files agree; uploaded to the
    stand-in Hub and pushed to the stand-in Ollama; then evaluated back through `hf.co/USER/REPO:Q8_0`."""
    import json

    from gguf import GGUFReader
    from huggingface_hub import ModelCard

    from ollama_slim.models.licensing import license_by_id
    from ollama_slim.ollama.modelfile import read_modelfile

    config, _ = finished_run
    out = tmp_path / "hub"
    registered = CliRunner().invoke(main, ["register", str(config.run_dir), "--name", "smollm2-slim", "--host", server.url, "--force"])
    assert registered.exit_code == 0, registered.output  # an earlier test reran the run with --no-register
    args = ["share", str(config.run_dir), "--out", str(out), "--users", "4", "--repeats", "1", "--ollama", "me/smollm2-slim", "--host", server.url,
            "--hf", "alice/smollm2-slim-rec-GGUF", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert [q["file"] for q in record["folder"]["quants"]] == ["smollm2-slim-Q4_K_M.gguf", "smollm2-slim-Q8_0.gguf"]
    for quant in record["folder"]["quants"]:
        assert quant["check"]["passed"] and quant["gen_tps"] > 0
        fields = {k: v.contents() for k, v in GGUFReader(str(out / quant["file"])).fields.items() if k.startswith("general.")}
        assert fields["general.license"] == "apache-2.0" and fields["general.base_model.0.repo_url"] == "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"
        assert "recommendation" in fields["general.tags"]
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    assert {"gguf", "ollama", "recommendation", "layer-pruning", "llama"} <= set(card.data.tags) and len(card.data.eval_results) >= 4
    spec = read_modelfile(config.run_dir / "Modelfile")
    assert json.loads((out / "params").read_text())["stop"] == list(spec.stops) and (out / "system").read_text() == spec.system
    assert (out / "LICENSE").read_text() == license_by_id("apache-2.0", source="x").text and spec.license == (out / "LICENSE").read_text()
    assert server.registry.get("me/smollm2-slim:latest") == record["ollama"]["digest"]
    repo = hf_hub.repo("alice/smollm2-slim-rec-GGUF")
    assert {"smollm2-slim-Q4_K_M.gguf", "smollm2-slim-Q8_0.gguf", "template", "system", "params", "README.md", "LICENSE"} <= set(repo.head.files)
    assert "ollama run hf.co/alice/smollm2-slim-rec-GGUF" in (out / "README.md").read_text()
    commits = len(repo.commits)
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    second = json.loads(again.stdout)
    assert second["folder"]["reused"] and second["hf"]["unchanged"] and second["ollama"]["unchanged"]
    assert len(hf_hub.repo("alice/smollm2-slim-rec-GGUF").commits) == commits
    shared = CliRunner().invoke(main, ["eval", "hf.co/alice/smollm2-slim-rec-GGUF:Q8_0", "--data", config.data, "--users", "4", "--history", str(config.history), "--json"])
    assert shared.exit_code == 0, shared.output
    assert json.loads(shared.stdout)["backend"] == "llama-cpp"


def test_an_unknown_task_format_is_refused_before_its_recipe_is_read(tmp_path: Path) -> None:
    """A config file or the Python API can name a format the CLI's choice would refuse: it has no recipe."""
    from ollama_slim.errors import UsageError
    from ollama_slim.pipeline.prune import check_config

    config = PruneConfig(model="smollm2:135m", keep=10, run_dir=tmp_path / "run", task_format="raw")
    assert config.steps is None  # no recipe filled it
    with pytest.raises(UsageError, match="--task-format 'raw' is not known"):
        check_config(config)
