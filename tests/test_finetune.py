"""Healing by fine-tuning: losses, LoRA/full modes, distillation, bridges, checkpoints, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import _CORPUS

from ollama_slim.models.lm import candidate_logits, candidate_scores, title_logits
from ollama_slim.slimming import finetune as ft
from ollama_slim.slimming.finetune.checkpoints import latest_checkpoint
from ollama_slim.slimming.finetune.data import batch_indices, negative_items
from ollama_slim.slimming.finetune.loop import learning_rate
from ollama_slim.slimming.finetune.losses import distill_loss, student_loss, title_loss
from ollama_slim.slimming.finetune.trainee import build_trainee, wrap_lora
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
    from ollama_slim.models.modeling import load_model
    from ollama_slim.models.lm import title_nll

    model = load_model(tiny_llama)
    batch = [([1, 5, 9, 12], [30, 31, 32]), ([1, 7], [40, 41])]
    logits, targets = title_logits(model, batch, pad_id=2)
    expected = title_nll(model, batch, pad_id=2).mean()
    torch.testing.assert_close(title_loss(logits, targets, [3, 2]), expected, rtol=1e-5, atol=1e-6)
    assert distill_loss(logits, logits, [3, 2]).abs() < 1e-6
    assert distill_loss(logits, logits.flip(-1), [3, 2]) > 0.01


def test_title_logits_equal_a_full_forward_then_indexing(tiny_llama: Path) -> None:
    from ollama_slim.models.modeling import load_model

    model = wrap_lora(load_model(tiny_llama), _config(tiny_llama, tiny_llama, None))
    batch = [([1, 5, 9, 12], [30, 31, 32]), ([1, 7], [40, 41]), ([1, 8, 8, 8, 8, 8], [50])]
    logits, targets = title_logits(model, batch, pad_id=2)
    ids = torch.full((3, 7), 2)
    mask = torch.zeros_like(ids)
    for row, (p, t) in enumerate(batch):
        ids[row, : len(p + t)], mask[row, : len(p + t)] = torch.tensor(p + t), 1
    full = model(input_ids=ids, attention_mask=mask).logits
    rows = [0, 0, 0, 1, 1, 2]
    cols = [3, 4, 5, 1, 2, 5]
    assert full.shape[1] == 7 and logits.shape == (6, full.shape[-1])
    torch.testing.assert_close(logits, full[rows, cols], rtol=0, atol=1e-5)
    assert targets.tolist() == [30, 31, 32, 40, 41, 50]


def test_packed_candidate_scores_equal_separate_forwards(tiny_llama: Path, tiny_qwen2: Path) -> None:
    from ollama_slim.models.modeling import load_model

    rows = [([1, 5, 9, 12], [[30, 31, 32], [40], [50, 51]]), ([1, 7], [[60, 61], [62, 63, 64, 65], [66]])]
    for path in (tiny_llama, tiny_qwen2):
        model = load_model(path)
        out = candidate_logits(model, rows, pad_id=2)
        assert out.logits.shape[0] == len(set(out.packed.src.tolist())) < out.where.shape[0]
        scores = candidate_scores(out, candidates=3)
        for b, (prompt, cands) in enumerate(rows):
            for c, cand in enumerate(cands):
                alone, targets = title_logits(model, [(prompt, cand)])
                expected = -torch.nn.functional.cross_entropy(alone, targets)
                torch.testing.assert_close(scores[b, c], expected, rtol=0, atol=1e-4)
        targets_first = [(p, cands[0]) for p, cands in rows]
        loss, title = student_loss(model, rows, rank_weight=0.0, pad_id=2)
        plain, targets = title_logits(model, targets_first, pad_id=2)
        torch.testing.assert_close(title, plain, rtol=0, atol=1e-4)
        torch.testing.assert_close(loss, title_loss(plain, targets, [3, 2]), rtol=0, atol=1e-5)


def test_rank_loss_trains_lora_and_decreases(tiny_llama: Path) -> None:
    from ollama_slim.models.modeling import load_model

    torch.manual_seed(0)
    model = wrap_lora(load_model(tiny_llama), _config(tiny_llama, tiny_llama, None))
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    assert lora and all("lora" in n for n, p in model.named_parameters() if p.requires_grad)
    rows = [([1, 5, 9], [[30, 31], [40, 41, 42], [50]]), ([1, 7, 8], [[60], [61, 62], [63, 64]])]
    optimizer = torch.optim.AdamW(lora, lr=1e-2)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss, _ = student_loss(model, rows, rank_weight=1.0, pad_id=2)
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.1


def test_negatives_are_seeded_per_step_and_never_seen(tiny_data: Path) -> None:
    from ollama_slim.recsys.data import examples, load_dataset

    dataset = load_dataset(str(tiny_data))
    train = examples(dataset, split="train", history=5)
    draw = lambda step, index: negative_items(dataset, train[index], count=2, seed=3, step=step, index=index)  # noqa: E731
    assert draw(4, 7) == draw(4, 7)
    assert len({draw(step, 7) for step in range(12)}) > 1  # another step, another draw (order counts)
    for index in range(len(train)):
        assert not set(draw(0, index)) & set(dataset.sequences[train[index].user])


def test_batches_are_a_pure_function_of_the_step() -> None:
    a = [batch_indices(step=s, batch_size=4, num_examples=10, seed=1) for s in range(5)]
    b = [batch_indices(step=s, batch_size=4, num_examples=10, seed=1) for s in range(5)]
    assert a == b
    assert sorted(sum(a[:2], []) + a[2][:2]) == list(range(10))  # epoch 0 is a permutation
    assert a != [batch_indices(step=s, batch_size=4, num_examples=10, seed=2) for s in range(5)]


def test_learning_rate_warms_up_then_decays() -> None:
    lrs = [learning_rate(s, total=20, peak=1.0, warmup=0.1) for s in range(20)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0
    assert lrs[-1] < lrs[5] < lrs[2] and lrs[-1] >= 0.1


def test_lora_finetune_lowers_the_loss_and_saves_a_plain_model(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    from ollama_slim.models.modeling import load_model

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


@pytest.mark.parametrize("negatives", [0, 2])
def test_interrupted_run_resumes_to_the_same_weights(tiny_qwen2: Path, tiny_data: Path, tmp_path: Path, negatives: int) -> None:
    straight = ft.finetune(_config(tiny_qwen2, tiny_data, tmp_path / "a", rank_negatives=negatives))

    def stop_after_five(progress: ft.FinetuneProgress) -> None:
        if progress.step == 5:  # after the checkpoint of step 4: step 5 is lost and redone
            raise KeyboardInterrupt

    config = _config(tiny_qwen2, tiny_data, tmp_path / "b", rank_negatives=negatives)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(config, on_step=stop_after_five)
    assert not config.out_dir.exists()
    assert latest_checkpoint(tmp_path / "b.checkpoints").name == "ckpt-00000004"
    resumed = ft.finetune(config)
    assert resumed.resumed_from == 4
    assert resumed.losses == straight.losses
    a, b = _weights(straight.out_dir), _weights(resumed.out_dir)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_bf16_mixed_precision_trains_with_the_ranking_loss(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    from accelerate.state import AcceleratorState

    config = _config(tiny_llama, tiny_data, tmp_path / "out", steps=2, rank_negatives=2, mixed_precision="bf16")
    result = ft.finetune(config)
    assert len(result.losses) == 2 and all(loss == loss and loss > 0 for loss in result.losses)
    assert AcceleratorState().mixed_precision == "bf16"
    ft.finetune(replace(config, out_dir=tmp_path / "fp32", mixed_precision=None))  # the same process, another precision
    assert AcceleratorState().mixed_precision == "no"
    assert _weights(result.out_dir)["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float32


def test_checkpoint_made_with_other_settings_is_refused(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    config = _config(tiny_llama, tiny_data, tmp_path / "out", steps=2)
    ft.finetune(config)
    with pytest.raises(RunError, match="other settings"):
        ft.finetune(replace(config, lr=1e-3))
    with pytest.raises(RunError, match="other settings"):
        ft.finetune(replace(config, rank_negatives=2))
    assert config.fingerprint() == replace(config, rank_weight=0.9).fingerprint()  # no negatives: the weight changes nothing
    assert replace(config, rank_negatives=2).fingerprint() != replace(config, rank_negatives=2, rank_weight=0.9).fingerprint()
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
    with pytest.raises(UsageError, match="--rank-negatives must be 0 or more"):
        ft.finetune(_config(tiny_llama, tiny_data, tmp_path / "x", rank_negatives=-1))
    for weight in (-0.1, 1.5, float("nan")):
        with pytest.raises(UsageError, match="--rank-weight must be between 0 and 1"):
            ft.finetune(_config(tiny_llama, tiny_data, tmp_path / "x", rank_negatives=2, rank_weight=weight))
    with pytest.raises(UsageError, match="--rank-negatives 3 is more than the 2 items"):
        ft.finetune(_config(tiny_llama, tiny_data, tmp_path / "x", rank_negatives=3))
    with pytest.raises(UsageError, match="--out is needed"):
        ft.finetune(_config(tiny_llama, tiny_data, None))
    (tmp_path / "taken").mkdir()
    with pytest.raises(UsageError, match="already exists"):
        ft.finetune(_config(tiny_llama, tiny_data, tmp_path / "taken"))


def test_trained_bridges_fold_into_the_saved_model(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    from ollama_slim.slimming.build import save_compact, slice_model
    from ollama_slim.models.modeling import load

    model, tokenizer = load(tiny_llama)
    compact_dir = tmp_path / "compact"
    save_compact(slice_model(model, [0, 2, 5]), tokenizer, compact_dir, provenance={"kept": [0, 2, 5], "num_layers": 6})
    config = _config(compact_dir, tiny_data, tmp_path / "out", steps=4, train_bridges=True, lr=1e-2)
    trainee, _ = build_trainee(config, compact_dir)
    assert [g.slot for g in trainee.bridge.gaps] == [1, 2]
    assert any(name.endswith("slot1") for name in trainee.params)
    result = ft.finetune(config)
    record = json.loads((result.out_dir / "slim.json").read_text())
    assert record["kept"] == [0, 2, 5] and record["bridge"]["trained"]["gaps"][0]["slot"] == 1
    assert not any("slim_bridge" in k for k in _weights(result.out_dir))


_KILL_SCRIPT = """
import sys, time
from pathlib import Path
from ollama_slim.slimming import finetune as ft
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
    checkpoint = latest_checkpoint(tmp_path / "out.checkpoints")
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
    for option, value, message in [("--rank-negatives", "-1", "--rank-negatives must be 0 or more"), ("--rank-weight", "1.5", "--rank-weight must be between 0 and 1")]:
        bad = CliRunner().invoke(main, [*args[:-1], "--force", option, value])
        assert bad.exit_code == 2 and f"Error: {message}" in bad.output and len(bad.output.strip().splitlines()) == 1, bad.output


def test_cli_trains_with_the_ranking_loss(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ollama_slim.cli import main

    out = tmp_path / "ranked"
    args = ["finetune", str(tiny_llama), "--data", str(tiny_data), "--steps", "2", "--lora-rank", "2", "--batch-size", "2",
            "--rank-negatives", "2", "--rank-weight", "0.7", "--out", str(out), "--json"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    record = json.loads((out / "slim.json").read_text())["finetune"]["config"]
    assert record["rank_negatives"] == 2 and record["rank_weight"] == 0.7
    help_text = CliRunner().invoke(main, ["finetune", "--help"]).output
    assert "--rank-negatives" in help_text and "--rank-weight" in help_text
