"""Each stage's resume key comes from its config: every option reruns exactly the stages it feeds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from ollama_slim.pipeline.config import PruneConfig
from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.pipeline.prune import prune
from ollama_slim.pipeline.runner import OUTPUT_NEUTRAL
from ollama_slim.pipeline.stages import STAGES, stage_options
from toy_data import write_toy_data

HEALING = {"finetune", "reference"}
PROMPT = {"score", "select", "finetune", "reference", "eval"}  # every stage that builds a prompt
# PruneConfig field -> the stages whose own config it changes (the report quotes every option, so it is added to each).
FEEDS: dict[str, set[str]] = {
    "model": {"resolve", "score", "build", "finetune", "reference", "register"},  # register: the default name; finetune: the teacher
    "keep": {"select"},
    "min_retained": {"select"},
    "name": {"register"},
    "data": {"score", "select", "build", "eval"} | HEALING,
    "methods": {"score"},
    "strategy": {"select"},
    "select_data": {"select", "build"},
    "bridge": {"build"},
    "own_text": {"build"},
    "steps": HEALING, "batch_size": HEALING, "lora_rank": HEALING, "lr": HEALING, "rank_negatives": HEALING, "rank_weight": HEALING, "rank_regimes": HEALING,
    "answers": HEALING, "popularity_debias": HEALING, "full": HEALING, "cf_answers": HEALING, "cf_share": HEALING, "cf_vocab": HEALING,
    "teacher": {"finetune"}, "listwise_weight": {"finetune"}, "distill_temperature": {"finetune"}, "align_weight": {"finetune"},  # the reference has no teacher
    "general_weight": {"finetune"}, "general_texts": set(),  # the text count feeds healing only while the weight is on (test below)
    "outtype": {"export", "bench", "eval"},  # bench times the original exported at that outtype; eval asks it in chat
    "register": {"register"},
    "hf": {"resolve", "score", "select", "build", "finetune", "reference"},
    "calib_users": {"score"},
    "val_users": {"select"},
    "eval_users": {"eval"} | HEALING,  # healing holds the evaluated users out
    "history": PROMPT,
    "title_words": PROMPT,
    "task_format": PROMPT,
    "reference": {"reference", "eval"},
    "cross_domain": {"eval"},
    "host": {"register"},
    "dtype": {"score", "select"},
    "bench_repeats": {"bench"},
    "seed": PROMPT,
}


def _base(tmp_path: Path) -> PruneConfig:
    """A completion-format run (its recipe has the teacher on, so every teacher option feeds finetune)."""
    return PruneConfig(model="smollm2:135m", keep=10, run_dir=tmp_path / "run", reference=True, task_format="completion")


def _other(name: str, value: Any, tmp_path: Path) -> Any:
    """A different value for field ``name`` of the right kind."""
    special = {"model": "qwen2.5:0.5b", "strategy": "backward", "outtype": "f16", "methods": ("angular",), "run_dir": tmp_path / "moved",
               "from_stage": "score", "name": "other-slim", "hf": str(tmp_path / "twin"), "task_format": "chat", "min_retained": 0.9,
               "teacher": "none", "rank_regimes": ("uniform",), "popularity_debias": 0.5, "cf_share": 0.25, "general_weight": 12.0}
    if name in special:
        return special[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if isinstance(value, int) else value / 2
    return f"{value}x" if isinstance(value, str) else "x"


def _changed_stages(base: PruneConfig, changed: PruneConfig) -> set[str]:
    before = stage_options(base, RunLayout(base.root()))
    after = stage_options(changed, RunLayout(changed.root()))
    return {stage for stage in STAGES if before[stage] != after[stage]}


def test_every_prune_option_is_classified() -> None:
    fields = {f.name for f in dataclasses.fields(PruneConfig)}
    unclassified = fields - set(FEEDS) - OUTPUT_NEUTRAL
    assert not unclassified, f"classify these PruneConfig fields: add them to FEEDS here, or to OUTPUT_NEUTRAL in pipeline/runner.py: {unclassified}"
    assert not set(FEEDS) & OUTPUT_NEUTRAL


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(PruneConfig)])
def test_changing_an_option_reruns_exactly_the_stages_it_feeds(field: str, tmp_path: Path) -> None:
    base = _base(tmp_path)
    changed = dataclasses.replace(base, **{field: _other(field, getattr(base, field), tmp_path)})
    expected = set() if field in OUTPUT_NEUTRAL else FEEDS[field] | {"report"}
    assert _changed_stages(base, changed) == expected


def test_the_general_text_count_reruns_healing_while_the_general_weight_is_on(tmp_path: Path) -> None:
    base = dataclasses.replace(_base(tmp_path), general_weight=12.0)
    assert _changed_stages(base, dataclasses.replace(base, general_texts=base.general_texts * 2)) == {"finetune", "report"}


def test_a_moved_run_keeps_its_keys(tmp_path: Path) -> None:
    base = _base(tmp_path)
    moved = dataclasses.replace(base, run_dir=tmp_path / "elsewhere" / "copy")
    assert stage_options(base, RunLayout(base.root())) == stage_options(moved, RunLayout(moved.root()))


def test_history_reruns_score_and_select_and_the_report_shows_the_export_check(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resume bug: `prune ... --history 10` after `prune ...` must not keep scores and a selection made with other prompts."""
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "store"))
    config = PruneConfig(model="llama3.2:1b", hf=str(tiny_llama), keep=3, run_dir=tmp_path / "run", data=str(write_toy_data(tmp_path / "toy")),
                         methods=("block-influence",), bridge="none", steps=0, calib_users=4, val_users=4, eval_users=4, bench_repeats=1,
                         reference=False, register=False)
    first = prune(config)
    assert first.skipped == []
    check = json.loads((config.run_dir / "export.json").read_text())["check"]
    report = (config.run_dir / "report.md").read_text()  # the report shows export's acceptance figures
    assert f"| `q8_0` | {check['rel_diff']:.2g} " in report and f"| {check['top1_agree']}/20 | {check['top5_agree']}/20 |" in report
    again = prune(dataclasses.replace(config, history=config.history + 5))
    assert again.skipped == ["resolve"] and again.ran[:2] == ["score", "select"]
    assert prune(dataclasses.replace(config, history=config.history + 5)).ran == []


def test_select_data_measures_the_selection_on_every_data_set(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`prune --select-data D --own-text`: the select stage measures D's validation users beside --data's, the bridges are
    fitted on both sets' train prompts and the original's own text; healing and eval keep --data."""
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "store"))
    data, other = write_toy_data(tmp_path / "toy"), write_toy_data(tmp_path / "other", seed=1)
    config = PruneConfig(model="llama3.2:1b", hf=str(tiny_llama), keep=3, run_dir=tmp_path / "run", data=str(data), select_data=(str(other),),
                         methods=("block-influence",), bridge="mlp-fold", steps=0, calib_users=4, val_users=4, eval_users=4, bench_repeats=1,
                         reference=False, register=False, own_text=True)
    prune(config)
    selection = json.loads((config.run_dir / "selection.json").read_text())
    assert (selection["data"], selection["also_data"]) == (str(data), [str(other)])
    compact = json.loads((config.run_dir / "compact" / "slim.json").read_text())
    assert (compact["data"], compact["calib_data"], compact["own_text"], compact["bridge"]["kind"]) == (str(data), [str(other)], True, "mlp-fold")
    from ollama_slim.models.modeling import load_model, load_tokenizer
    from ollama_slim.recsys.data import load_dataset
    from ollama_slim.slimming.bridges import mixed_calibration

    three = mixed_calibration(tokenizer=load_tokenizer(tiny_llama), datasets=[load_dataset(data), load_dataset(other)],
                              own_text_of=load_model(tiny_llama))  # each data set a third of the tokens, the original's text the last
    assert (compact["bridge"]["calibration"]["sequences"], compact["bridge"]["calibration"]["tokens"]) == (len(three), sum(map(len, three)))
    assert json.loads((config.run_dir / "eval_slim.json").read_text())["config"]["data"] == str(data)
    report = (config.run_dir / "report.md").read_text()
    assert "--select-data " + str(other) in report and "--own-text" in report


def test_options_added_later_leave_a_finished_runs_keys_alone(tmp_path: Path) -> None:
    """A new option at its default (task_format, the prompt's chat, the build's bridge fallback) is not in any key."""
    from ollama_slim.pipeline.runner import KEY_LATER

    base = _base(tmp_path)
    text = json.dumps(stage_options(base, RunLayout(base.root())), default=str)
    for name in KEY_LATER:
        assert f'"{name}"' not in text, name
    chat = json.dumps(stage_options(dataclasses.replace(base, task_format="chat"), RunLayout(base.root())), default=str)
    assert '"chat"' in chat and '"task_format"' in chat
