"""Healing by fine-tuning: losses, LoRA/full modes, distillation, bridges, checkpoints, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import _CORPUS

from ollama_slim import finetune as ft
from ollama_slim.errors import RunError, UsageError


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain-format data set: 12 users, 8 items titled from the tiny tokenizer's corpus."""
    out = tmp_path_factory.mktemp("tiny-data")
    items = [{"item_id": 100 + i, "title": t} for i, t in enumerate(_CORPUS[:8])]
    (out / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    rows = ["user_id\titem_id\ttimestamp"]
    for user in range(12):
        seq = [(user * 3 + k) % 8 for k in range(6)]
        rows += [f"{user}\t{100 + i}\t{1000 + n}" for n, i in enumerate(seq)]
    (out / "interactions.tsv").write_text("\n".join(rows) + "\n")
    return out


def _config(model: Path, data: Path, out: Path, **kw) -> ft.FinetuneConfig:
    base = dict(model=str(model), data=str(data), out_dir=out, steps=6, lora_rank=4, lr=5e-3, batch_size=4, checkpoint_every=2, seed=3)
    base.update(kw)
    return ft.FinetuneConfig(**base)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def test_title_loss_matches_scoring_title_nll(tiny_llama: Path) -> None:
    from ollama_slim.modeling import load_model
    from ollama_slim.scoring import title_nll

    model = load_model(tiny_llama)
    batch = [([1, 5, 9, 12], [30, 31, 32]), ([1, 7], [40, 41])]
    logits, targets = ft.title_logits(model, batch, pad_id=2)
    expected = title_nll(model, batch, pad_id=2).mean()
    torch.testing.assert_close(ft.title_loss(logits, targets, [3, 2]), expected, rtol=1e-5, atol=1e-6)
    assert ft.distill_loss(logits, logits, [3, 2]).abs() < 1e-6
    assert ft.distill_loss(logits, logits.flip(-1), [3, 2]) > 0.01


def test_batches_are_a_pure_function_of_the_step() -> None:
    a = [ft.batch_indices(step=s, batch_size=4, num_examples=10, seed=1) for s in range(5)]
    b = [ft.batch_indices(step=s, batch_size=4, num_examples=10, seed=1) for s in range(5)]
    assert a == b
    assert sorted(sum(a[:2], []) + a[2][:2]) == list(range(10))  # epoch 0 is a permutation
    assert a != [ft.batch_indices(step=s, batch_size=4, num_examples=10, seed=2) for s in range(5)]


def test_learning_rate_warms_up_then_decays() -> None:
    lrs = [ft.learning_rate(s, total=20, peak=1.0, warmup=0.1) for s in range(20)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0
    assert lrs[-1] < lrs[5] < lrs[2] and lrs[-1] >= 0.1


def test_lora_finetune_lowers_the_loss_and_saves_a_plain_model(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    from ollama_slim.modeling import load_model

    seen: list[ft.FinetuneProgress] = []
    result = ft.finetune(_config(tiny_llama, tiny_data, tmp_path / "out", steps=12), on_step=seen.append)
    assert [p.step for p in seen] == list(range(1, 13))
    assert sum(result.losses[-3:]) < sum(result.losses[:3])
    weights = _weights(result.out_dir)
    assert not any("lora" in k for k in weights)
    before, after = _weights(tiny_llama), weights
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])
    model = load_model(result.out_dir)  # a stock model again
    assert model.config.tie_word_embeddings
    record = json.loads((result.out_dir / "slim.json").read_text())
    assert record["finetune"]["mode"] == "lora-r4" and record["finetune"]["steps"] == 12


def test_interrupted_run_resumes_to_the_same_weights(tiny_qwen2: Path, tiny_data: Path, tmp_path: Path) -> None:
    straight = ft.finetune(_config(tiny_qwen2, tiny_data, tmp_path / "a"))

    def stop_after_five(progress: ft.FinetuneProgress) -> None:
        if progress.step == 5:  # after the checkpoint of step 4: step 5 is lost and redone
            raise KeyboardInterrupt

    config = _config(tiny_qwen2, tiny_data, tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(config, on_step=stop_after_five)
    assert not config.out_dir.exists()
    assert ft.latest_checkpoint(tmp_path / "b.checkpoints").name == "ckpt-00000004"
    resumed = ft.finetune(config)
    assert resumed.resumed_from == 4
    assert resumed.losses == straight.losses
    a, b = _weights(straight.out_dir), _weights(resumed.out_dir)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_checkpoint_made_with_other_settings_is_refused(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    config = _config(tiny_llama, tiny_data, tmp_path / "out", steps=2)
    ft.finetune(config)
    with pytest.raises(RunError, match="other settings"):
        ft.finetune(replace(config, lr=1e-3))
    again = ft.finetune(replace(config, lr=1e-3, force=True))  # --force starts over
    assert again.resumed_from == 0 and len(again.losses) == 2


def test_full_finetune_with_distillation(tiny_llama: Path, tiny_qwen2: Path, tiny_data: Path, tmp_path: Path) -> None:
    config = _config(tiny_llama, tiny_data, tmp_path / "out", steps=3, full=True, distill_from=str(tiny_llama), distill_weight=1.0, lr=1e-3)
    result = ft.finetune(config)
    assert result.mode == "full"
    assert result.losses[0] < 1e-5  # the teacher is the student at step 0: KL = 0
    assert result.losses[-1] > 0


def test_teacher_with_another_vocabulary_is_refused(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    other = tmp_path / "other"
    shutil.copytree(tiny_llama, other)
    config = AutoConfig.from_pretrained(tiny_llama)
    config.vocab_size += 8
    AutoModelForCausalLM.from_config(config).save_pretrained(other)
    with pytest.raises(UsageError, match="another vocabulary"):
        ft.finetune(_config(tiny_llama, tiny_data, tmp_path / "out", distill_from=str(other)))


def test_bad_options_are_one_line_errors(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="either --steps or --epochs"):
        ft.finetune(_config(tiny_llama, tiny_data, tmp_path / "x", steps=None))
    with pytest.raises(UsageError, match="--lora-rank must be positive"):
        ft.finetune(_config(tiny_llama, tiny_data, tmp_path / "x", lora_rank=0))
    with pytest.raises(UsageError, match="--out is needed"):
        ft.finetune(_config(tiny_llama, tiny_data, None))
    (tmp_path / "taken").mkdir()
    with pytest.raises(UsageError, match="already exists"):
        ft.finetune(_config(tiny_llama, tiny_data, tmp_path / "taken"))


def test_trained_bridges_fold_into_the_saved_model(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    from ollama_slim.build import save_compact, slice_model
    from ollama_slim.modeling import load

    model, tokenizer = load(tiny_llama)
    compact_dir = tmp_path / "compact"
    save_compact(slice_model(model, [0, 2, 5]), tokenizer, compact_dir, provenance={"kept": [0, 2, 5], "num_layers": 6})
    config = _config(compact_dir, tiny_data, tmp_path / "out", steps=4, train_bridges=True, lr=1e-2)
    trainee, _ = ft._build_trainee(config, compact_dir)
    assert [g.slot for g in trainee.bridge.gaps] == [1, 2]
    assert any(name.endswith("slot1") for name in trainee.params)
    result = ft.finetune(config)
    record = json.loads((result.out_dir / "slim.json").read_text())
    assert record["kept"] == [0, 2, 5] and record["bridge"]["trained"]["gaps"][0]["slot"] == 1
    assert not any("slim_bridge" in k for k in _weights(result.out_dir))


_KILL_SCRIPT = """
import sys, time
from pathlib import Path
from ollama_slim import finetune as ft
config = ft.FinetuneConfig(model=sys.argv[1], data=sys.argv[2], out_dir=Path(sys.argv[3]), steps=40, lora_rank=4, lr=5e-3, batch_size=4, checkpoint_every=1, seed=3)
ft.finetune(config, on_step=lambda p: print("step", p.step, flush=True))
"""


def test_sigkill_during_finetune_leaves_a_complete_checkpoint(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [sys.executable, "-c", _KILL_SCRIPT, str(tiny_llama), str(tiny_data), str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    for line in proc.stdout:  # kill it mid-run, once a few checkpoints exist
        if line.startswith("step 3"):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    checkpoint = ft.latest_checkpoint(tmp_path / "out.checkpoints")
    assert checkpoint is not None
    step = json.loads((checkpoint / "state.json").read_text())["step"]
    assert 3 <= step < 40
    assert (checkpoint / "trainable.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step 40" in done.stdout and f"step {step}\n" not in done.stdout
    assert (out / "model.safetensors").is_file()


def test_cli_finetunes_and_reports_errors_in_one_line(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ollama_slim.cli import main

    out = tmp_path / "cli-out"
    args = ["finetune", str(tiny_llama), "--data", str(tiny_data), "--steps", "2", "--lora-rank", "2", "--batch-size", "2", "--out", str(out), "--json"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["steps"] == 2 and (out / "model.safetensors").is_file()
    bad = CliRunner().invoke(main, ["finetune", str(tiny_llama), "--data", str(tiny_data), "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2
    assert "Error: give either --steps or --epochs (exactly one). e.g. --steps 150" in bad.output
