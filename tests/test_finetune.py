"""Healing by fine-tuning: losses, LoRA/full modes, distillation, bridges, checkpoints, resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
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
    for option, value, message in [("--rank-negatives", "-1", "--rank-negatives must be 0 or more"), ("--rank-weight", "1.5", "--rank-weight must be between 0 and 1"),
                                   ("--general-weight", "0.5", "--general-weight needs a teacher (--distill-from)")]:
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
    assert "its recorded recipe takes their place" in " ".join(help_text.split())  # a prune run's defaults are its own


# --- issue 11: listwise KD, hidden-state alignment, teacher cache, both negative regimes, early stopping ---

_ROWS = [([1, 5, 9, 12], [[30, 31, 32], [40], [50, 51]]), ([1, 7], [[60, 61], [62, 63, 64, 65], [66]])]


def _identity_gaps_teacher(path: Path, dropped: list[int]):
    """``path``'s model with layers ``dropped`` made the identity (zero attention and MLP outputs)."""
    from ollama_slim.models.modeling import load_model

    teacher = load_model(path)
    with torch.no_grad():
        for i in dropped:
            teacher.model.layers[i].self_attn.o_proj.weight.zero_()
            teacher.model.layers[i].mlp.down_proj.weight.zero_()
    return teacher.requires_grad_(False)


def _compact(source: Path, out: Path, kept: list[int]) -> Path:
    """``source`` cut to layers ``kept`` and saved with its ``slim.json`` record, as `build` does."""
    from ollama_slim.models.modeling import load
    from ollama_slim.slimming.build import save_compact, slice_model

    model, tokenizer = load(source)
    save_compact(slice_model(model, kept), tokenizer, out, provenance={"kept": kept, "num_layers": len(model.model.layers)})
    return out


def test_listwise_kd_is_zero_for_the_teacher_itself_and_trains_only_the_student(tiny_llama: Path) -> None:
    from ollama_slim.models.modeling import load_model
    from ollama_slim.slimming.finetune.losses import listwise_kd_loss, student_terms
    from ollama_slim.slimming.finetune.teacher import TeacherPlan, run_teacher

    teacher = load_model(tiny_llama).requires_grad_(False)
    student = wrap_lora(load_model(tiny_llama), _config(tiny_llama, tiny_llama, None))  # LoRA B = 0: the teacher's function
    scores = torch.stack([t["scores"] for t in run_teacher(teacher, _ROWS, TeacherPlan(scores=True), pad_id=2)])  # [B, C]
    assert scores.shape == (2, 3) and not scores.requires_grad
    assert listwise_kd_loss(student_terms(student, _ROWS, pad_id=2).scores, scores, temperature=2.0).item() == 0.0
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    kd = listwise_kd_loss(student_terms(student, _ROWS, pad_id=2).scores, scores, temperature=2.0)
    assert kd.item() > 1e-4
    kd.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in student.named_parameters() if "lora" in n)
    assert all(p.grad is None for p in teacher.parameters())
    flat = torch.tensor([[0.0, -1.0, -2.0]])
    assert listwise_kd_loss(flat, flat).item() == 0.0 and listwise_kd_loss(flat, flat.flip(-1)).item() > 0


@pytest.mark.parametrize("candidates", [1, 3])
def test_alignment_reads_the_teachers_layers_at_their_original_indices(tiny_qwen2: Path, tmp_path: Path, candidates: int) -> None:
    """The student is the teacher cut to 0,2,5 where layers 1,3,4 are the identity: compact layer i is
    original layer kept[i] exactly, so aligning with the right indices costs 0, and a shifted map does not."""
    from ollama_slim.models.lm import recorded
    from ollama_slim.models.modeling import load_model
    from ollama_slim.slimming.build import slice_model
    from ollama_slim.slimming.finetune.distill import aligned_layers, at_gap_end, at_kept, states_at_targets
    from ollama_slim.slimming.finetune.losses import cosine_align, nmse_align, student_terms
    from ollama_slim.slimming.finetune.teacher import TeacherPlan, run_teacher

    teacher = _identity_gaps_teacher(tiny_qwen2, [1, 3, 4])
    student = slice_model(teacher, [0, 2, 5])
    rows = [(p, c[:candidates]) for p, c in _ROWS]
    with recorded(student, layers=(0, 1, 2)) as seen:
        student_terms(student, rows, pad_id=2)
    states = states_at_targets(seen, rows, (0, 1, 2))  # [L, T, d]
    assert states.shape == (3, 5, 64)

    def teacher_states(layers: list[int]) -> torch.Tensor:
        plan = TeacherPlan(scores=candidates > 1, layers=tuple(layers))  # the student's layout: packed with candidates
        return torch.cat([t["hidden"] for t in run_teacher(teacher, rows, plan, pad_id=2)], dim=1)

    assert at_kept([0, 2, 5], 6) == [0, 2, 5] and at_gap_end([0, 2, 5], 6) == [1, 4, 5]
    for layers in ([0, 2, 5], [1, 4, 5]):
        assert nmse_align(states, teacher_states(layers)).item() == 0.0
        assert cosine_align(states, teacher_states(layers)).item() < 1e-6
    for shifted in ([0, 1, 2], [0, 2, 4]):  # the student's own indices; one off at the end
        assert nmse_align(states, teacher_states(shifted)).item() > 0.05
        assert cosine_align(states, teacher_states(shifted)).item() > 0.01
    compact = _compact(tiny_qwen2, tmp_path / "compact", [0, 2, 5])
    kw = dict(distill_from=str(tiny_qwen2), align_weight=1.0)
    plain = load_model(compact)
    assert aligned_layers(_config(compact, compact, None, **kw), teacher=teacher, student=plain, model_dir=compact) == [0, 2, 5]
    assert aligned_layers(_config(compact, compact, None, align_at="gap-end", **kw), teacher=teacher, student=plain, model_dir=compact) == [1, 4, 5]
    with pytest.raises(UsageError, match="was cut from a model of 6"):
        aligned_layers(_config(compact, compact, None, **kw), teacher=plain, student=plain, model_dir=compact)
    with pytest.raises(UsageError, match="has no record of kept layers"):
        aligned_layers(_config(tiny_qwen2, tiny_qwen2, None, **kw), teacher=teacher, student=load_model(tiny_qwen2), model_dir=tiny_qwen2)


def test_cached_teacher_outputs_equal_fresh_ones(tiny_llama: Path, tmp_path: Path) -> None:
    from ollama_slim.models.modeling import load_model
    from ollama_slim.slimming.finetune.teacher import Teacher, TeacherCache, TeacherPlan, run_teacher, teacher_identity

    model = load_model(tiny_llama).requires_grad_(False)
    plan = TeacherPlan(title=True, scores=True, layers=(1, 3))
    fresh = run_teacher(model, _ROWS, plan, pad_id=2)
    assert [t["head_in"].shape for t in fresh] == [(3, 64), (2, 64)] and fresh[0]["hidden"].shape == (2, 3, 64) and fresh[1]["scores"].shape == (3,)
    teacher = Teacher(model=model, plan=plan, cache=TeacherCache(tmp_path / "cache", teacher_identity(tiny_llama)))
    first, again = teacher.targets(_ROWS, pad_id=2), teacher.targets(_ROWS, pad_id=2)
    assert (teacher.forwards, teacher.computed, teacher.cached) == (1, 2, 2) and len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    for ours, got, cached in zip(fresh, first, again):
        assert ours.keys() == got.keys() == cached.keys() == {"head_in", "scores", "hidden"}
        assert all(torch.equal(ours[k], got[k]) and torch.equal(ours[k], cached[k]) for k in ours)
    other = ([1, 8, 8], [[40, 41], [50], [60]])
    mixed = teacher.targets([_ROWS[1], other], pad_id=2)  # one cached, one computed in another batch
    assert (teacher.forwards, teacher.computed, teacher.cached) == (2, 3, 3)
    alone = run_teacher(model, [_ROWS[1]], plan, pad_id=2)[0]
    assert all(torch.allclose(mixed[0][k], alone[k], atol=1e-5) for k in alone)
    title, _ = title_logits(model, [(p, c[0]) for p, c in _ROWS], pad_id=2)
    torch.testing.assert_close(model.lm_head(torch.cat([t["head_in"] for t in again])), title, rtol=0, atol=1e-5)
    assert Teacher(model=model, plan=TeacherPlan(scores=True), cache=teacher.cache).targets(_ROWS, pad_id=2)[0].keys() == {"scores"}  # another plan: another file


def test_teacher_runs_in_the_first_epoch_only_with_its_cache(tiny_llama: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_slim.slimming.finetune import teacher as teacher_module

    calls: list[int] = []
    run = teacher_module.run_teacher
    monkeypatch.setattr(teacher_module, "run_teacher", lambda *a, **kw: calls.append(len(a[1])) or run(*a, **kw))
    after: dict[int, int] = {}
    config = _config(tiny_llama, tiny_data, tmp_path / "out", users=4, steps=6, distill_from=str(tiny_llama), teacher_cache=True,
                     rank_negatives=2, fixed_negatives=True, distill_listwise_weight=0.5)
    result = ft.finetune(config, on_step=lambda p: after.__setitem__(p.step, len(calls)))
    assert result.train_examples == 12  # 3 steps an epoch
    assert after[3] == 3 and sum(calls) == 12 and after[6] == after[3]  # epoch 2: no teacher forward
    assert result.teacher["forwards"] == 3 and result.teacher["cached_examples"] == 12
    assert len(list((tmp_path / "out.checkpoints" / "teacher").glob("*.safetensors"))) == 12


def _skewed_dataset():
    """60 items, three of 0-4 in every other user's train part; user 0 has seen only rare ones (50-54)."""
    from ollama_slim.recsys.data import make_dataset

    sequences = {0: [50, 51, 52, 53, 54]}
    sequences.update({u: [u % 5, (u + 1) % 5, (u + 2) % 5, 10 + u, 55, 56] for u in range(1, 30)})
    return make_dataset("skewed", sequences, {i: f"item {i}" for i in range(60)})


def test_negatives_mix_both_regimes_under_the_seed() -> None:
    from ollama_slim.recsys.data import CandidateSampler, examples, train_popularity
    from ollama_slim.slimming.finetune.data import Negatives, draw_seed

    dataset = _skewed_dataset()
    example = examples(dataset, split="train", history=5, users=[0])[0]
    mixed = Negatives(dataset, count=3, seed=7, regimes=("uniform", "popularity"))
    draws = [mixed.draw(example, step=s, index=0) for s in range(40)]
    assert draws == [Negatives(dataset, count=3, seed=7, regimes=("uniform", "popularity")).draw(example, step=s, index=0) for s in range(40)]
    assert {regime for regime, _ in draws} == {"uniform", "popularity"}
    for step, (regime, items) in enumerate(draws):
        seed = draw_seed(seed=7, step=step, index=0)
        assert items == CandidateSampler(dataset, negatives=3, regime=regime, seed=seed)(example)[1:]
        assert not set(items) & set(dataset.sequences[0])
    counts = train_popularity(dataset)
    mean_pop = lambda regime: np.mean([counts.get(i, 0) for r, items in draws if r == regime for i in items])  # noqa: E731
    assert mean_pop("popularity") > 3 * mean_pop("uniform")
    uniform = Negatives(dataset, count=3, seed=7)
    assert [uniform.draw(example, step=s, index=0)[1] for s in range(5)] == [negative_items(dataset, example, count=3, seed=7, step=s, index=0) for s in range(5)]
    fixed = Negatives(dataset, count=3, seed=7, regimes=("uniform", "popularity"), fixed=True)
    assert len({fixed.draw(example, step=s, index=0) for s in range(10)}) == 1


def test_validation_measures_on_the_tiny_model(tiny_llama: Path, tiny_data: Path) -> None:
    from ollama_slim.models.lm import score_shared_prefix, title_nll
    from ollama_slim.models.modeling import load
    from ollama_slim.recsys.data import load_dataset
    from ollama_slim.recsys.metrics import per_user_metrics
    from ollama_slim.slimming.finetune.validation import make_validator

    model, tokenizer = load(tiny_llama)
    dataset = load_dataset(str(tiny_data))
    config = _config(tiny_llama, tiny_data, None, early_stop_patience=2, val_users=5, batch_size=2)
    loss = make_validator(config, dataset, tokenizer)
    assert len(loss.rows) == 5 and all(len(c) == 1 for _, c in loss.rows)
    with torch.no_grad():
        expected = title_nll(model, [(p, c[0]) for p, c in loss.rows], pad_id=tokenizer.pad_token_id).mean()
    assert loss(model) == pytest.approx(float(expected), rel=1e-5)
    ndcg = make_validator(replace(config, val_measure="ndcg", val_negatives=2), dataset, tokenizer)
    scores = np.stack([score_shared_prefix(model, p, c, pad_id=tokenizer.pad_token_id).numpy() for p, c in ndcg.rows])
    assert ndcg(model) == pytest.approx(float(per_user_metrics(scores)["ndcg@10"].mean()), abs=1e-6)
    assert model.training is False
    with pytest.raises(UsageError, match="--val-negatives 3 is more than the 2 items"):
        make_validator(replace(config, val_measure="ndcg", val_negatives=3), dataset, tokenizer)
    both = make_validator(replace(config, val_measure="ndcg-both", val_negatives=2), dataset, tokenizer)
    assert len(both.rows) == 2 * len(ndcg.rows) and both.rows[: len(ndcg.rows)] == ndcg.rows  # the uniform rows, then the same users' popularity rows
    popular = both.rows[len(ndcg.rows) :]
    assert [p for p, _ in popular] == [p for p, _ in ndcg.rows] and [c[0] for _, c in popular] == [c[0] for _, c in ndcg.rows]
    assert [c[1:] for _, c in popular] != [c[1:] for _, c in ndcg.rows]
    pop_scores = np.stack([score_shared_prefix(model, p, c, pad_id=tokenizer.pad_token_id).numpy() for p, c in popular])
    expected_both = (per_user_metrics(scores)["ndcg@10"].mean() + per_user_metrics(pop_scores)["ndcg@10"].mean()) / 2
    assert both(model) == pytest.approx(float(expected_both), abs=1e-6)


def test_the_answer_measure_counts_distinct_titles_the_users_did_not_list(tiny_llama: Path, tiny_data: Path) -> None:
    """``--val-measure answer``: greedy answers to the training prompts; a listed title, a repeated one and
    text that names no item add nothing; the tiny model's own answers give a share in [0, 1]."""
    from ollama_slim.models.modeling import load
    from ollama_slim.recsys.data import load_dataset
    from ollama_slim.slimming.finetune.validation import make_validator, validation_answers

    model, tokenizer = load(tiny_llama)
    dataset = load_dataset(str(tiny_data))
    config = _config(tiny_llama, tiny_data, None, early_stop_patience=2, val_users=5, batch_size=2)
    asked = make_validator(replace(config, val_measure="answer"), dataset, tokenizer)
    loss = make_validator(config, dataset, tokenizer)
    assert [q.prompt for q in asked.rows] == [p for p, _ in loss.rows] and all(q.listed for q in asked.rows)
    unlisted = [sorted(set(dataset.titles) - set(q.listed)) for q in asked.rows]
    listed_title = dataset.titles[asked.rows[2].listed[0]]
    new = dataset.titles[min(set(unlisted[0]) & set(unlisted[1]))]  # new to the first two users alike
    other = next(dataset.titles[i] for i in unlisted[4] if dataset.titles[i] != new)
    script = iter([new, new, listed_title, "zzz qqq", other])

    class Scripted:
        def get_input_embeddings(self):
            return model.get_input_embeddings()

        def generate(self, input_ids, **_):
            answer = tokenizer(next(script) + "\n", add_special_tokens=False)["input_ids"]
            return torch.cat([input_ids, torch.tensor([answer])], dim=1)

    assert validation_answers(Scripted(), asked.rows, batch=2) == pytest.approx(2 / 5)
    value = asked(model)
    assert 0.0 <= value <= 1.0 and model.training is False
    from ollama_slim.ollama.modelfile import chat_prompt_of

    chat = chat_prompt_of(tiny_llama)
    in_chat = make_validator(replace(config, val_measure="answer", task_format="chat", chat=chat), dataset, tokenizer)
    judge = in_chat.rows[0].judge
    assert judge.end == chat.end and tokenizer.convert_tokens_to_ids(chat.end) in judge.stops  # an answer ends with its turn
    assert all(q.prompt != p.prompt for q, p in zip(in_chat.rows, asked.rows)) and 0.0 <= in_chat(model) <= 1.0


def test_early_stopping_keeps_the_best_weights(tiny_llama: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_slim.slimming.finetune.validation import VAL_MEASURES, ValMeasure

    values, seen = iter([3.0, 2.0, 2.5, 2.6, 1.0]), {}

    def scripted(model, rows, *, batch, pad_id):  # measures 2.0 after step 4, then worse twice: stop after step 8
        seen[len(seen) * 2 + 2] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return next(values)

    monkeypatch.setitem(VAL_MEASURES, "loss", ValMeasure("loss", False, VAL_MEASURES["loss"].rows, scripted))
    config = _config(tiny_llama, tiny_data, tmp_path / "out", steps=20, full=True, lr=1e-3, early_stop_patience=2, eval_every=2)
    progress: list[ft.FinetuneProgress] = []
    result = ft.finetune(config, on_step=progress.append)
    assert (result.steps, result.best_step, result.stopped_early, len(result.losses)) == (8, 4, True, 8)
    measured = [(p.step, p.measured, p.best) for p in progress if p.measured is not None]  # what progress bars and logs show
    assert measured == [(2, 3.0, (2, 3.0)), (4, 2.0, (4, 2.0)), (6, 2.5, (4, 2.0)), (8, 2.6, (4, 2.0))]
    assert progress[5].describe() == f"step 6/20 loss {progress[5].loss:.3f}, validation 2.5000 (best 2.0000 at step 4)"
    assert progress[4].describe() == f"step 5/20 loss {progress[4].loss:.3f}"  # no measure after step 5
    assert result.validation == [{"step": 2, "value": 3.0}, {"step": 4, "value": 2.0}, {"step": 6, "value": 2.5}, {"step": 8, "value": 2.6}]
    assert result.validation_text() == "2: 3.0000, 4: 2.0000 (kept), 6: 2.5000, 8: 2.6000"
    stuck = replace(result, best_step=2, validation=[{"step": s, "value": 0.0} for s in (2, 4, 6)])  # a measure that never moves
    assert stuck.validation_text() == "2: 0.0000 (kept), 4: 0.0000, 6: 0.0000; steps 4, 6 measured the same, not better: the earlier weights are kept"
    saved = _weights(result.out_dir)
    assert all(torch.equal(saved[k], seen[4][k]) for k in saved)
    assert not torch.equal(saved["model.layers.0.self_attn.q_proj.weight"], seen[8]["model.layers.0.self_attn.q_proj.weight"])
    assert json.loads((result.out_dir / "slim.json").read_text())["finetune"]["best_step"] == 4
    again = ft.finetune(config)  # a rerun finds the stopped run and changes nothing
    assert (again.steps, again.best_step, again.resumed_from) == (8, 4, 8)
    assert all(torch.equal(saved[k], v) for k, v in _weights(again.out_dir).items())


def test_a_measure_at_start_keeps_the_starting_weights_when_no_step_beats_them(tiny_llama: Path, tiny_data: Path, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """--val-at-start: a further stage on a healed model measures step 0 too, and early stopping hands back the
    starting weights when every step is worse; without it the best step taken is kept, however bad."""
    from ollama_slim.slimming.finetune.validation import VAL_MEASURES, ValMeasure

    def scripted(values):
        values = iter(values)
        return ValMeasure("loss", False, VAL_MEASURES["loss"].rows, lambda model, rows, *, batch, pad_id: next(values))

    kw = dict(steps=20, full=True, lr=1e-3, early_stop_patience=2, eval_every=2)
    monkeypatch.setitem(VAL_MEASURES, "loss", scripted([1.0, 2.0, 3.0]))
    at_start = ft.finetune(_config(tiny_llama, tiny_data, tmp_path / "start", val_at_start=True, **kw))
    assert (at_start.best_step, at_start.steps, at_start.stopped_early) == (0, 4, True)
    assert at_start.validation_text() == "0: 1.0000 (kept), 2: 2.0000, 4: 3.0000"
    before, after = _weights(tiny_llama), _weights(at_start.out_dir)
    assert all(torch.equal(after[k], before[k].to(after[k].dtype)) for k in after if k in before)
    monkeypatch.setitem(VAL_MEASURES, "loss", scripted([2.0, 3.0, 4.0]))
    plain = ft.finetune(_config(tiny_llama, tiny_data, tmp_path / "plain", **kw))
    assert (plain.best_step, plain.steps) == (2, 6)  # the first measure is after step 2: trained weights are kept
    assert not torch.equal(_weights(plain.out_dir)["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.weight"])
    with pytest.raises(UsageError, match=re.escape("--val-at-start needs early stopping")):
        ft.check_config(_config(tiny_llama, tiny_data, tmp_path / "x", val_at_start=True))
    assert "val_at_start" in _config(tiny_llama, tiny_data, tmp_path / "x", val_at_start=True, **kw).fingerprint()


def test_general_text_kd_is_zero_for_the_teacher_itself_and_aligns_at_the_original_indices(tiny_qwen2: Path) -> None:
    """On text the teacher wrote: the teacher cut to 0,2,5 where 1,3,4 are the identity has its very
    distribution and layer outputs (KL and alignment 0 at the original indices), a changed one does not."""
    from ollama_slim.models.modeling import load_tokenizer
    from ollama_slim.slimming.build import slice_model
    from ollama_slim.slimming.finetune.general import general_loss, teacher_corpus

    teacher = _identity_gaps_teacher(tiny_qwen2, [1, 3, 4])
    student = slice_model(teacher, [0, 2, 5])
    texts = teacher_corpus(teacher, load_tokenizer(tiny_qwen2), texts=3, tokens=7, seed=0, path=Path("unused"), write=False)
    ids = torch.tensor(texts)
    assert ids.shape == (3, 8) and (ids[:, 0] == 1).all()  # the start token, then 7 sampled ones
    kind = "nmse"
    assert general_loss(student, teacher, ids, base=student).item() < 1e-6
    assert general_loss(student, teacher, ids, base=student, align=((0, 1, 2), (0, 2, 5), kind), align_weight=1.0).item() < 1e-6
    assert general_loss(student, teacher, ids, base=student, align=((0, 1, 2), (0, 1, 2), kind), align_weight=1.0).item() > 0.05  # the student's own indices
    with torch.no_grad():
        student.model.layers[2].mlp.down_proj.weight.mul_(3.0)
    student.requires_grad_(True)
    kl = general_loss(student, teacher, ids, base=student)
    assert kl.item() > 1e-4
    kl.backward()
    assert student.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0 and all(p.grad is None for p in teacher.parameters())


def test_the_teachers_text_is_seeded_and_written_once(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_slim.models.modeling import load_model, load_tokenizer
    from ollama_slim.slimming.finetune.general import teacher_corpus

    teacher, tokenizer = load_model(tiny_llama).requires_grad_(False), load_tokenizer(tiny_llama)
    path = tmp_path / "general.json"
    first = teacher_corpus(teacher, tokenizer, texts=20, tokens=5, seed=3, path=path)  # two sampling batches
    assert len(first) == 20 and {len(t) for t in first} == {6} and len({tuple(t) for t in first}) > 10  # sampled, not one greedy text
    assert teacher_corpus(teacher, tokenizer, texts=20, tokens=5, seed=3, path=tmp_path / "again.json") == first  # the seed decides
    assert teacher_corpus(teacher, tokenizer, texts=20, tokens=5, seed=4, path=tmp_path / "other.json") != first
    monkeypatch.setattr(teacher, "generate", lambda *a, **kw: pytest.fail("the written text must be read, not sampled again"))
    assert teacher_corpus(teacher, tokenizer, texts=20, tokens=5, seed=3, path=path) == first
    with pytest.raises(pytest.fail.Exception):  # other settings: that file is not this corpus
        teacher_corpus(teacher, tokenizer, texts=20, tokens=6, seed=3, path=path)


@pytest.mark.parametrize("general", [0.0, 0.5])
def test_interrupted_distillation_resumes_to_the_same_weights(tiny_qwen2: Path, tiny_data: Path, tmp_path: Path, general: float) -> None:
    compact = _compact(tiny_qwen2, tmp_path / "compact", [0, 2, 5])
    kw = dict(users=4, rank_negatives=2, fixed_negatives=True, rank_regimes=("uniform", "popularity"), distill_from=str(tiny_qwen2),
              distill_weight=0.3, distill_listwise_weight=0.5, distill_temperature=2.0, align_weight=0.5, align_kind="nmse", teacher_cache=True,
              early_stop_patience=10, eval_every=2, general_weight=general, general_texts=6, general_tokens=5)
    straight = ft.finetune(_config(compact, tiny_data, tmp_path / "a", **kw))

    def stop_after_five(progress: ft.FinetuneProgress) -> None:
        if progress.step == 5:
            raise KeyboardInterrupt

    config = _config(compact, tiny_data, tmp_path / "b", **kw)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(config, on_step=stop_after_five)
    resumed = ft.finetune(config)
    assert resumed.resumed_from == 4 and resumed.losses == straight.losses
    assert resumed.validation == straight.validation and len(resumed.validation) == 3 and resumed.best_step == straight.best_step
    assert resumed.teacher["cached_examples"] > 0  # steps 5 and 6 read what the interrupted run and epoch 1 wrote
    a, b = _weights(straight.out_dir), _weights(resumed.out_dir)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    corpus = straight.checkpoint_dir / "general.json"
    assert corpus.is_file() == (general > 0) and (general == 0 or len(json.loads(corpus.read_text())["ids"]) == 6)
    if general:  # the general term is in the loss: without it the same steps give other losses
        assert ft.finetune(_config(compact, tiny_data, tmp_path / "c", **{**kw, "general_weight": 0.0})).losses != straight.losses


def test_new_options_are_off_by_default_and_checked() -> None:
    base = ft.FinetuneConfig(model="m", data="d", steps=2)
    assert set(base.fingerprint()) == {"model", "data", "steps", "epochs", "lora_rank", "lora_alpha", "full", "distill_from", "distill_weight",
                                       "train_bridges", "lr", "batch_size", "warmup", "seed", "history", "title_words", "title_tokens", "users", "hf"}
    assert not base.uses_distiller()
    assert replace(base, rank_negatives=2).fingerprint().keys() == base.fingerprint().keys() | {"rank_negatives", "rank_weight"}
    assert "rank_regimes" in replace(base, rank_negatives=2, rank_regimes=("popularity",)).fingerprint()
    assert "eval_every" not in replace(base, eval_every=7).fingerprint() and "eval_every" in replace(base, eval_every=7, early_stop_patience=1).fingerprint()
    teacher = dict(distill_from="t")
    for kw, message in [
        (dict(distill_listwise_weight=-1.0), "--distill-listwise-weight must be 0 or more"),
        (dict(align_weight=float("nan")), "--align-weight must be 0 or more"),
        (dict(distill_temperature=0.0), "--distill-temperature must be positive"),
        (dict(align_weight=1.0), "--align-weight needs a teacher"),
        (dict(teacher_cache=True), "--teacher-cache needs a teacher"),
        (dict(general_weight=0.5), "--general-weight needs a teacher"),
        (dict(general_weight=-0.5, **teacher), "--general-weight must be 0 or more"),
        (dict(general_weight=0.5, general_tokens=0, **teacher), "--general-texts and --general-tokens must be positive"),
        (dict(distill_listwise_weight=0.5, **teacher), "--distill-listwise-weight needs candidates to rank"),
        (dict(distill_listwise_weight=0.5, rank_negatives=2, teacher_cache=True, **teacher), "needs --fixed-negatives"),
        (dict(align_kind="l1"), "--align-kind 'l1' is not known"),
        (dict(align_at="middle"), "--align-at 'middle' is not known"),
        (dict(rank_regimes=("uniform", "uniform")), "--rank-regimes must name each regime once"),
        (dict(rank_regimes=("zipf",)), "--rank-regimes 'zipf' is not known"),
        (dict(early_stop_patience=-1), "--early-stop-patience must be 0 or more"),
        (dict(eval_every=0), "--eval-every, --val-users and --val-negatives must be positive"),
        (dict(val_measure="auc"), "--val-measure 'auc' is not known"),
    ]:
        with pytest.raises(UsageError, match=re.escape(message)):
            ft.check_config(replace(base, **kw))


def test_cli_heals_with_both_regimes_and_early_stopping(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ollama_slim.cli import main

    out = tmp_path / "cli"
    args = ["finetune", str(tiny_llama), "--data", str(tiny_data), "--steps", "3", "--lora-rank", "2", "--batch-size", "2", "--rank-negatives", "2",
            "--rank-regimes", "uniform,popularity", "--fixed-negatives", "--early-stop-patience", "1", "--eval-every", "1", "--val-users", "3", "--out", str(out)]
    done = CliRunner().invoke(main, [*args, "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["best_step"] in (1, 2, 3) and [v["step"] for v in result["validation"]] == list(range(1, result["steps"] + 1))
    record = json.loads((out / "slim.json").read_text())["finetune"]["config"]
    assert record["rank_regimes"] == ["uniform", "popularity"] and record["fixed_negatives"] and record["early_stop_patience"] == 1
    table = CliRunner().invoke(main, args)  # the finished run again: its table shows each measure, the kept one marked
    assert table.exit_code == 0 and "validation" in table.output and "(kept)" in table.output, table.output
    for extra, message in [(["--align-kind", "l1"], "--align-kind 'l1' is not known"), (["--rank-regimes", "uniform,zipf"], "--rank-regimes 'zipf' is not known"),
                           (["--distill-listwise-weight", "0.5"], "--distill-listwise-weight needs a teacher (--distill-from)")]:
        bad = CliRunner().invoke(main, [*args, "--force", *extra])
        assert bad.exit_code == 2 and f"Error: {message}" in bad.output and len(bad.output.strip().splitlines()) == 1, bad.output


def test_answers_are_the_target_then_the_users_next_train_items() -> None:
    from ollama_slim.recsys.data import examples, make_dataset
    from ollama_slim.slimming.finetune.data import answer_items

    dataset = make_dataset("seq", {0: [10, 11, 12, 13, 14, 15, 16]}, {i: f"item {i}" for i in range(10, 17)})
    train = examples(dataset, split="train", history=2, users=[0])  # targets 11..14; 15 validation, 16 test
    assert [e.position for e in train] == [1, 2, 3, 4] and [e.target for e in train] == [11, 12, 13, 14]
    assert answer_items(dataset, train[0], 1) == (11,)
    assert answer_items(dataset, train[0], 3) == (11, 12, 13)
    assert answer_items(dataset, train[2], 3) == (13, 14, 13)  # never the validation or test item: cycled instead
    assert answer_items(dataset, train[3], 4) == (14, 14, 14, 14)


def test_answers_title_loss_is_the_mean_over_answers_and_ranks_the_target_only(tiny_llama: Path) -> None:
    from ollama_slim.models.modeling import load_model
    from ollama_slim.slimming.finetune.losses import rank_loss, student_terms

    model = load_model(tiny_llama)
    rows = [([1, 5, 9, 12], [[30, 31, 32], [40], [50, 51], [52]]), ([1, 7], [[60, 61], [62, 63, 64], [66], [67, 68]])]
    scores = candidate_scores(candidate_logits(model, rows, pad_id=2), candidates=4)
    two = student_terms(model, rows, pad_id=2, answers=2)
    torch.testing.assert_close(two.title, -scores[:, :2].mean(), rtol=0, atol=1e-5)
    expected = 0.6 * two.title + 0.4 * rank_loss(scores[:, [0, 2, 3]])
    torch.testing.assert_close(two.mixed(0.4), expected, rtol=0, atol=1e-5)
    one = student_terms(model, rows, pad_id=2)  # the target alone is the answer: the earlier loss
    torch.testing.assert_close(one.mixed(0.4), 0.6 * one.title + 0.4 * rank_loss(scores), rtol=0, atol=1e-5)
    all_answers = student_terms(model, rows, pad_id=2, answers=4)
    torch.testing.assert_close(all_answers.mixed(0.4), -scores.mean(), rtol=0, atol=1e-5)  # no negatives: no ranking term


def test_finetune_with_answers_trains_and_refuses_zero(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--answers must be 1 or more"):
        ft.check_config(_config(tiny_llama, tiny_data, tmp_path / "x", answers=0))
    result = ft.finetune(_config(tiny_llama, tiny_data, tmp_path / "out", answers=3, rank_negatives=2, full=True, lr=1e-3))
    assert result.losses[-1] < result.losses[0]
    assert "answers" in ft.FinetuneConfig.fingerprint(_config(tiny_llama, tiny_data, None, answers=3))
    assert "answers" not in ft.FinetuneConfig.fingerprint(_config(tiny_llama, tiny_data, None))  # older checkpoints still resume


def test_popularity_debias_weighs_rare_answers_up_and_trains(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    from ollama_slim.models.modeling import load_model
    from ollama_slim.slimming.finetune.data import AnswerWeights
    from ollama_slim.slimming.finetune.losses import student_terms

    weights = AnswerWeights(_skewed_dataset(), beta=1.0)  # items 0-4: 17-18 train counts; 10+u: 1
    w = weights([(0, 11), (12, 1)])
    assert w.shape == (2, 2) and abs(float(w.mean()) - 1.0) < 1e-6
    assert w[0, 1] > 10 * w[0, 0] and w[1, 0] > 10 * w[1, 1]
    assert torch.equal(AnswerWeights(_skewed_dataset(), beta=0.0)([(0, 11)]), torch.ones(1, 2))
    model = load_model(tiny_llama)
    rows = [([1, 5, 9, 12], [[30, 31, 32], [40]]), ([1, 7], [[60, 61], [62, 63, 64]])]
    scores = candidate_scores(candidate_logits(model, rows, pad_id=2), candidates=2)
    weighted = student_terms(model, rows, pad_id=2, answers=2, weights=w)
    torch.testing.assert_close(weighted.title, -(scores * w).mean(), rtol=0, atol=1e-5)
    single = student_terms(model, [(p, c[:1]) for p, c in rows], pad_id=2, weights=w[:, :1])
    torch.testing.assert_close(single.title, -(scores[:, 0] * w[:, 0]).mean(), rtol=0, atol=1e-4)
    with pytest.raises(UsageError, match="--popularity-debias must be 0 or more"):
        ft.check_config(_config(tiny_llama, tiny_data, tmp_path / "x", popularity_debias=-1.0))
    result = ft.finetune(_config(tiny_llama, tiny_data, tmp_path / "out", answers=2, popularity_debias=0.5, full=True, lr=1e-3))
    assert result.losses[-1] < result.losses[0]


def test_item_neighbours_count_followers_in_train_parts_only() -> None:
    from ollama_slim.recsys.data import make_dataset
    from ollama_slim.recsys.neighbours import ItemNeighbours

    titles = {i: f"item {i}" for i in range(1, 10)}
    # train parts: [1, 2, 3, 4] and [1, 2, 5, 6]; the last two items (7, 8 and 9, 8) are valid/test, never counted
    dataset = make_dataset("seq", {0: [1, 2, 3, 4, 7, 8], 1: [1, 2, 5, 6, 9, 8]}, titles)
    near = ItemNeighbours(dataset, window=1, alpha=0.0)
    assert dict(near.scores([1])) == {2: 2} and dict(near.scores([2])) == {3: 1, 5: 1}
    assert 7 not in near.scores([4]) and 8 not in near.scores([6]) and 9 not in near.scores([6])
    assert near.top([1], count=2) == (2,)  # only what ever followed the history
    assert near.top([1, 2]) == (3,)  # the history itself is never an answer; ties: the smaller id
    assert near.top([2], exclude=[3]) == (5,)
    wide = ItemNeighbours(dataset, window=3, alpha=0.0)
    assert wide.scores([1]) == {2: 2, 3: 1, 4: 1, 5: 1, 6: 1}
    assert wide.top([1], exclude=[2]) == (3,)
    lift = ItemNeighbours(dataset, window=3, alpha=1.0)  # divided by train count: 2 (seen twice) falls behind
    assert lift.scores([1])[2] == 1.0 and lift.scores([1])[3] == 1.0


def test_item_neighbours_vocab_answers_among_the_most_taken_items_only(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    from ollama_slim.recsys.data import make_dataset
    from ollama_slim.recsys.neighbours import ItemNeighbours

    titles = {i: f"item {i}" for i in range(1, 12)}
    # train parts [1, 2, 3, 4, 5], [1, 2, 6, 3, 7], [1, 3, 8, 2, 6]: 1, 2 and 3 taken 3 times, 6 twice, the rest once
    dataset = make_dataset("seq", {0: [1, 2, 3, 4, 5, 10, 11], 1: [1, 2, 6, 3, 7, 10, 11], 2: [1, 3, 8, 2, 6, 10, 11]}, titles)
    every = ItemNeighbours(dataset, window=2, alpha=0.0)
    assert every.top([3], count=3) == (2, 4, 5)  # ties: the smaller id
    top4 = ItemNeighbours(dataset, window=2, alpha=0.0, vocab=4)  # answers among 1, 2, 3, 6
    assert dict(top4.scores([3])) == {2: 1} and top4.top([3], count=3) == (2,)  # 4, 5, 7 and 8 followed 3 but are rare
    assert dict(top4.scores([2])) == {3: 2, 6: 2}  # the counts of the items it keeps are every's
    assert ItemNeighbours(dataset, window=2, alpha=0.0, vocab=0).scores([3]) == every.scores([3])
    # vocab_skip leaves the most taken out: ranked 1, 2, 3, 6, ..., so skip 2, vocab 2 answers among 3 and 6
    assert dict(top4.scores([1])) == {2: 2, 3: 2, 6: 1}
    past2 = ItemNeighbours(dataset, window=2, alpha=0.0, vocab=2, vocab_skip=2)
    assert dict(past2.scores([1])) == {3: 2, 6: 1} and past2.top([1]) == (3,)
    with pytest.raises(ValueError, match="vocab must be 0 or more"):
        ItemNeighbours(dataset, vocab=-1)
    with pytest.raises(ValueError, match="vocab_skip must be 0, or positive with a vocab"):
        ItemNeighbours(dataset, vocab_skip=2)
    with pytest.raises(UsageError, match="--cf-vocab must be 0 or more"):
        ft.check_config(_config(tiny_llama, tiny_data, tmp_path / "x", cf_answers=1, cf_vocab=-1))
    with pytest.raises(UsageError, match="--cf-vocab-skip must be 0, or positive with --cf-vocab"):
        ft.check_config(_config(tiny_llama, tiny_data, tmp_path / "x", cf_answers=1, cf_vocab_skip=5))


def test_cf_answers_follow_the_history_never_an_item_taken_and_carry_their_share(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    from ollama_slim.recsys.data import examples, make_dataset
    from ollama_slim.recsys.neighbours import ItemNeighbours
    from ollama_slim.slimming.finetune.data import AnswerWeights, cf_answer_items

    titles = {i: f"item {i}" for i in range(1, 12)}
    dataset = make_dataset("seq", {0: [1, 2, 3, 4, 5, 10, 11], 1: [2, 6, 3, 7, 9, 10, 11], 2: [1, 3, 8, 2, 6, 10, 11]}, titles)
    near = ItemNeighbours(dataset, window=2, alpha=0.0)
    train = examples(dataset, split="train", history=1, users=[0])
    third = train[2]  # history (3,), target 4; user 0 took 1, 2, 3 before it
    assert third.history == (3,) and third.target == 4
    assert dict(near.scores([3])) == {4: 1, 5: 1, 7: 1, 9: 1, 8: 1, 2: 1}
    answers = cf_answer_items(near, dataset, third, 2)
    assert answers == (4, 5) and not set(answers) & {1, 2, 3}  # item 2 followed 3 elsewhere but user 0 took it already
    assert cf_answer_items(near, dataset, train[3], 3) == (5, 5, 5)  # only 5 ever followed 4: repeated
    lonely = make_dataset("one", {0: [1, 2, 3, 4]}, titles)  # train part [1, 2]: nothing ever followed 2
    first = examples(lonely, split="train", history=1, users=[0])[0]
    assert cf_answer_items(ItemNeighbours(lonely), lonely, first, 2) == (first.target, first.target)
    w = AnswerWeights(dataset, cf_answers=1, cf_share=0.5)([(4, 5, 6, 9), (1, 2, 3, 7)])  # three data answers, one cf
    assert abs(float(w.mean()) - 1.0) < 1e-6
    torch.testing.assert_close(w[:, 3], 3 * w[:, 0])  # the one cf answer weighs what the three data answers do together
    with pytest.raises(UsageError, match="--cf-share must be between 0 and 1"):
        ft.check_config(_config(tiny_llama, tiny_data, tmp_path / "x", cf_answers=1, cf_share=1.0))
    assert "cf_answers" not in ft.FinetuneConfig.fingerprint(_config(tiny_llama, tiny_data, None))
    result = ft.finetune(_config(tiny_llama, tiny_data, tmp_path / "out", answers=2, cf_answers=1, full=True, lr=1e-3))
    assert result.losses[-1] < result.losses[0]


def test_holdout_users_are_the_evaluated_ones_and_never_healed_on(tiny_data: Path) -> None:
    """`--holdout-users N`: the N users `eval --users N` ranks (same seed) are in neither the
    train examples nor the validation users; without it every user trains, as before."""
    from ollama_slim.recsys.data import load_dataset
    from ollama_slim.recsys.evaluate import EvalConfig, prepare_cases
    from ollama_slim.slimming.finetune.data import heldout_users, train_examples
    from ollama_slim.slimming.finetune.validation import _valid_examples

    dataset = load_dataset(str(tiny_data))
    config = _config(Path("unused"), tiny_data, None, val_users=3)
    every = {e.user for e in train_examples(config, dataset)}
    assert every == set(dataset.users) and heldout_users(config, dataset) == set()
    for seed in (0, 1):
        held = replace(config, holdout_users=4, seed=seed)
        evaluated = {c.example.user for c in prepare_cases(dataset, EvalConfig(data=str(tiny_data), users=4, negatives=2, seed=seed))}
        assert heldout_users(held, dataset) == evaluated and len(evaluated) == 4
        trained = {e.user for e in train_examples(held, dataset)}
        assert trained == every - evaluated
        assert {e.user for e in _valid_examples(held, dataset)}.isdisjoint(evaluated)
    with pytest.raises(UsageError, match="leaves none of the"):
        train_examples(replace(config, holdout_users=len(dataset.users)), dataset)
    with pytest.raises(UsageError, match="--holdout-users must be 0 or more"):
        ft.check_config(replace(config, holdout_users=-1))


def test_cli_heals_a_prune_run_with_its_own_recipe(tiny_llama: Path, tiny_data: Path, tmp_path: Path) -> None:
    """`finetune RUN` on a `prune` run heals as the run did (prune.json: data, format, teacher, held-out
    users...), options given win; before, it healed with finetune's own defaults (the completion prompt,
    LoRA, no teacher) a model whose Modelfile asks it in chat."""
    from dataclasses import asdict

    from click.testing import CliRunner

    from ollama_slim import paths
    from ollama_slim.cli import main
    from ollama_slim.pipeline.config import PruneConfig, recorded_config
    from ollama_slim.pipeline.layout import RunLayout
    from ollama_slim.pipeline.stages import recorded_healing

    layout = RunLayout(tmp_path / "run")
    _compact(tiny_llama, layout.compact_dir, [0, 2, 5])
    pruned = PruneConfig(model=str(tiny_llama), keep=3, data=str(tiny_data), task_format="completion", steps=2, batch_size=2, lora_rank=2,
                         rank_negatives=2, listwise_weight=1.0, align_weight=0.5, eval_users=3, run_dir=layout.root)
    paths.write_json(layout.prune_record, {"command": "ollama-slim prune ...", "config": asdict(pruned)})
    assert recorded_config(paths.read_json(layout.prune_record)["config"], run_dir=layout.root) == pruned
    chat = replace(pruned, task_format="chat", steps=None, lr=None, rank_negatives=None, answers=None, full=None, teacher=None)
    paths.write_json(tmp_path / "chat" / "prune.json", {"config": asdict(chat)})
    healing = recorded_healing(tmp_path / "chat")  # the chat recipe: every weight, 8 answers, no teacher, into the run's healed/
    assert (healing.task_format, healing.full, healing.answers, healing.distill_from, healing.out_dir) == ("chat", True, 8, None, tmp_path / "chat" / "healed")

    done = CliRunner().invoke(main, ["finetune", str(layout.root), "--json"])
    assert done.exit_code == 0, done.output
    assert "healing as the run did" in done.stderr and f"distill from {tiny_llama}" in done.stderr
    healed = json.loads((layout.healed_dir / "slim.json").read_text())["finetune"]
    assert (healed["steps"], healed["mode"]) == (2, "lora-r2")
    assert {k: healed["config"][k] for k in ("data", "distill_from", "rank_negatives", "distill_listwise_weight", "align_weight", "align_at", "holdout_users", "lora_rank")} == \
        {"data": str(tiny_data), "distill_from": str(tiny_llama), "rank_negatives": 2, "distill_listwise_weight": 1.0, "align_weight": 0.5,
         "align_at": "gap-end", "holdout_users": 3, "lora_rank": 2}
    assert json.loads((layout.root / "finetune.json").read_text())["steps"] == 2
    again = CliRunner().invoke(main, ["finetune", str(layout.root), "--steps", "3", "--lr", "0.01", "--force", "--json"])
    assert again.exit_code == 0, again.output
    record = json.loads((layout.healed_dir / "slim.json").read_text())["finetune"]["config"]
    assert (record["steps"], record["lr"], record["distill_from"]) == (3, 0.01, str(tiny_llama))  # the options given win, the rest stays the run's

    no_data = CliRunner().invoke(main, ["finetune", str(tiny_llama), "--steps", "2", "--out", str(tmp_path / "o")])
    assert no_data.exit_code == 2 and "Error: --data is needed" in no_data.output and len(no_data.output.strip().splitlines()) == 1
    layout.prune_record.write_text("{not json")
    broken = CliRunner().invoke(main, ["finetune", str(layout.root), "--steps", "2"])
    assert broken.exit_code == 2 and f"Error: cannot read the run's settings from {layout.prune_record}" in broken.output, broken.output
