"""The ``finetune`` stage: heal a compact model (or fine-tune the full reference), design §6.

Next-item title loss on the train split (the target title given the history prompt),
optionally mixed with a ranking loss over the target and seeded negatives (each candidate
scored like evaluation scores it, all packed after one prompt in one row), optionally
distillation from a teacher (KL on the target title tokens), through LoRA
(``peft``, merged before saving) or full fine-tuning; bridges may train too and fold at
the end. Checkpoints are written atomically every N steps; a rerun resumes from the last
one and ends with the same weights as an uninterrupted run with the same seed. Runs under
``accelerate launch`` (data parallel, bf16); on one CPU the accelerator is a no-op.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ollama_slim import paths
from ollama_slim.slimming.bridges import GapMaps, Bridge, attach_bridge, find_gaps, fold_bridge
from ollama_slim.errors import RunError, UsageError
from ollama_slim.models.families import family_of
from ollama_slim.models.scoring import title_logits

CHECKPOINT_POINTER = "latest.json"
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run. ``steps`` or ``epochs`` (over the train examples), not both.

    ``lora_rank`` > 0 trains LoRA adapters (merged at the end); ``full`` trains every
    weight. ``distill_from`` names a teacher with the same tokenizer; ``distill_weight``
    mixes its KL into the loss. ``train_bridges`` adds identity-initialised MLP maps on
    the gaps recorded in the compact model's ``slim.json`` and folds them at the end.
    ``rank_negatives`` > 0 draws that many never-interacted items per example and step
    and mixes a softmax cross-entropy over the 1 + k candidates' length-normalised
    title log-likelihoods into the loss with ``rank_weight``.
    """

    model: str
    data: str
    out_dir: Path | None = None
    steps: int | None = None
    epochs: float | None = None
    lora_rank: int = 16
    lora_alpha: float | None = None
    full: bool = False
    distill_from: str | None = None
    distill_weight: float = 0.5
    rank_negatives: int = 0
    rank_weight: float = 0.5
    train_bridges: bool = False
    lr: float = 2e-4
    batch_size: int = 8
    warmup: float = 0.05
    checkpoint_every: int = 50
    seed: int = 0
    history: int = 5
    title_words: int = 10
    title_tokens: int = 16
    users: int | None = None
    mixed_precision: str | None = None  # None: what `accelerate launch` says (no on CPU)
    hf: str | None = None
    force: bool = False

    def fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must share with the run that resumes it.

        Without ranking negatives the ranking settings change nothing and are left
        out, so checkpoints made before they existed still resume.
        """
        skip = {"out_dir", "checkpoint_every", "force", "mixed_precision"}
        if self.rank_negatives == 0:
            skip |= {"rank_negatives", "rank_weight"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass(frozen=True)
class FinetuneProgress:
    """What the progress callback sees after each optimizer step."""

    step: int
    total: int
    loss: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class FinetuneResult:
    out_dir: Path
    checkpoint_dir: Path
    mode: str
    steps: int
    resumed_from: int
    final_loss: float | None
    trainable_params: int
    train_examples: int
    seconds: float
    losses: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out_dir"], data["checkpoint_dir"] = str(self.out_dir), str(self.checkpoint_dir)
        return data


# --- where things are ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Places:
    model_dir: Path
    out_dir: Path
    checkpoint_dir: Path


def _places(config: FinetuneConfig) -> _Places:
    """Model to train, final directory and checkpoint directory for ``config.model``."""
    from ollama_slim.pipeline.layout import RunLayout
    from ollama_slim.models.sources import resolve

    root = Path(config.model)
    if root.is_dir() and RunLayout(root).compact_dir.is_dir() and config.hf is None:
        layout = RunLayout(root)
        out = Path(config.out_dir) if config.out_dir else layout.healed_dir
        return _Places(model_dir=layout.compact_dir, out_dir=out, checkpoint_dir=layout.finetune_dir)
    model_dir = resolve(config.model, hf=config.hf).model_dir
    if config.out_dir is None:
        raise UsageError(f"{config.model} is not a run directory, so --out is needed", hint="pass --out DIR for the fine-tuned model")
    out = Path(config.out_dir)
    return _Places(model_dir=Path(model_dir), out_dir=out, checkpoint_dir=out.with_name(out.name + ".checkpoints"))


def check_config(config: FinetuneConfig) -> None:
    """Refuse options that cannot work (:class:`UsageError`), before anything is loaded."""
    if (config.steps is None) == (config.epochs is None):
        raise UsageError("give either --steps or --epochs (exactly one)", hint="e.g. --steps 150")
    if (config.steps is not None and config.steps <= 0) or (config.epochs is not None and config.epochs <= 0):
        raise UsageError("--steps and --epochs must be positive")
    if config.batch_size <= 0 or config.checkpoint_every <= 0 or config.lr <= 0:
        raise UsageError("--batch-size, --checkpoint-every and --lr must be positive")
    if not config.full and config.lora_rank <= 0:
        raise UsageError(f"--lora-rank must be positive, got {config.lora_rank}", hint="or pass --full to train every weight")
    if config.rank_negatives < 0:
        raise UsageError(f"--rank-negatives must be 0 or more, got {config.rank_negatives}", hint="0 trains on the title loss alone")
    if not 0.0 <= config.rank_weight <= 1.0:
        raise UsageError(f"--rank-weight must be between 0 and 1, got {config.rank_weight}", hint="e.g. --rank-weight 0.5")


def _check_negatives(config: FinetuneConfig, dataset: Any, train: list[Any]) -> None:
    """Every train user must have ``rank_negatives`` items they never interacted with."""
    if config.rank_negatives == 0:
        return
    fewest = len(dataset.items) - max(len(set(dataset.sequences[user])) for user in {e.user for e in train})
    if config.rank_negatives > fewest:
        raise UsageError(f"--rank-negatives {config.rank_negatives} is more than the {fewest} items some user never interacted with",
                         hint=f"use --rank-negatives {fewest} or fewer")


# --- data ---------------------------------------------------------------------------------


def _train_examples(config: FinetuneConfig, dataset: Any) -> list[Any]:
    from ollama_slim.recsys.data import examples, select_users

    users = select_users(dataset, config.users, seed=config.seed)
    found = examples(dataset, split="train", history=config.history, users=users)
    if not found:
        raise UsageError(f"data set {dataset.name} has no train examples", hint="each user needs at least 4 interactions to train on")
    return found


def batch_indices(*, step: int, batch_size: int, num_examples: int, seed: int) -> list[int]:
    """Example indices of optimizer step ``step`` (0-based): a seeded permutation per epoch.

    A pure function of its arguments, so a resumed run sees exactly the same batches.
    """
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, num_examples)
        out.append(int(_epoch_order(seed, epoch, num_examples)[offset]))
    return out


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order of the examples in ``epoch``: [num_examples]."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def _prompt_config(config: FinetuneConfig) -> Any:
    from ollama_slim.recsys.prompt import PromptConfig

    return PromptConfig(history=config.history, title_words=config.title_words, title_tokens=config.title_tokens)


def negative_items(dataset: Any, example: Any, *, count: int, seed: int, step: int, index: int) -> tuple[int, ...]:
    """``count`` uniform negatives (items the user never interacted with) for train
    example ``index`` at optimizer step ``step``: a pure function of its arguments."""
    from ollama_slim.recsys.data import CandidateSampler

    draw_seed = int(np.random.SeedSequence([seed, step, index]).generate_state(1)[0])
    return CandidateSampler(dataset, negatives=count, seed=draw_seed)(example)[1:]


def _encode(tokenizer: Any, dataset: Any, batch: list[Any], config: FinetuneConfig, negatives: list[tuple[int, ...]] | None = None) -> list[tuple[list[int], list[list[int]]]]:
    """``(prompt_ids, [target_ids, negative_ids...])`` per example, encoded like evaluation."""
    from ollama_slim.recsys.prompt import candidate_text, encode_candidates, encode_prompt, prompt_text

    prompt = _prompt_config(config)
    rows = []
    for example, negs in zip(batch, negatives or [()] * len(batch)):
        texts = [candidate_text(dataset, item, prompt) for item in (example.target, *negs)]
        rows.append((encode_prompt(tokenizer, prompt_text(dataset, example, prompt)), encode_candidates(tokenizer, texts, prompt)))
    return rows


# --- losses -------------------------------------------------------------------------------


def _compute_dtype(model: Any, device: torch.device) -> torch.dtype:
    """The dtype attention runs in: autocast's if it is on, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return model.get_input_embeddings().weight.dtype


@dataclass(frozen=True)
class CandidateLogits:
    """Logits at the packed positions that predict candidate tokens.

    ``logits`` [K, V] at the K distinct such positions (a prompt's last position predicts
    every candidate's first token); ``where`` [M]: the row of ``logits`` that predicts
    ``packed.tgt[m]``, a token of candidate ``packed.group[m]``. Duplicated rows are never
    materialised: their backward would sum with atomic adds, in no fixed order on the CPU.
    """

    logits: torch.Tensor
    where: torch.Tensor
    packed: Any


def candidate_logits(model: Any, rows: list[tuple[list[int], list[list[int]]]], *, pad_id: int = 0) -> CandidateLogits:
    """Logits predicting every candidate token, all candidates packed after their prompt.

    ``rows`` holds ``(prompt_ids, [candidate_ids, ...])`` with as many candidates in every
    row. One forward per row (:func:`ollama_slim.slimming.importance.subsets.pack`: each candidate
    sees the prompt and its own earlier tokens, at positions continuing the prompt's);
    the head runs only where a candidate token is predicted.
    """
    from ollama_slim.slimming.importance.subsets import pack

    device = model.get_input_embeddings().weight.device
    packed = pack(rows, dtype=_compute_dtype(model, device), pad_id=pad_id)
    needed, where = torch.unique(packed.src, return_inverse=True)  # sorted, as a mask keeps them
    keep = torch.zeros(packed.ids.numel(), dtype=torch.bool)
    keep[needed] = True
    logits = model(input_ids=packed.ids.to(device), attention_mask=packed.bias.to(device), position_ids=packed.positions.to(device),
                   logits_to_keep=keep.view_as(packed.ids).to(device)).logits
    return CandidateLogits(logits=logits, where=where.to(logits.device), packed=packed)


def candidate_scores(out: CandidateLogits, *, candidates: int) -> torch.Tensor:
    """Mean log-prob of each candidate's tokens (the evaluation score): [B, candidates]."""
    device, size = out.logits.device, out.packed.size * candidates
    logp = torch.log_softmax(out.logits.float(), dim=-1)[out.where, out.packed.tgt.to(device)]  # [M]
    group = out.packed.group.to(device)
    total = torch.zeros(size, device=device).index_add(0, group, logp)
    count = torch.zeros(size, device=device).index_add(0, group, torch.ones_like(logp))
    return (total / count.clamp(min=1)).view(out.packed.size, candidates)


def rank_loss(scores: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over candidate scores ``[B, C]``, the target in column 0."""
    return F.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device))


def student_loss(model: Any, rows: list[tuple[list[int], list[list[int]]]], *, rank_weight: float, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Training loss of ``rows`` (target first among each row's candidates) and the target
    title logits ``[T, V]`` (for distillation).

    One candidate per row: the title loss. More: ``(1 - rank_weight)`` x title loss +
    ``rank_weight`` x :func:`rank_loss`, both from one packed forward.
    """
    lengths = [len(cands[0]) for _, cands in rows]
    if len(rows[0][1]) == 1:
        logits, targets = title_logits(model, [(p, cands[0]) for p, cands in rows], pad_id=pad_id)
        return title_loss(logits, targets, lengths), logits
    out = candidate_logits(model, rows, pad_id=pad_id)
    width = len(rows[0][1])
    is_target = (out.packed.group % width == 0).to(out.logits.device)
    target_logits = out.logits[out.where[is_target]]  # distinct positions: no duplicated rows
    title = title_loss(target_logits, out.packed.tgt.to(out.logits.device)[is_target], lengths)
    ranking = rank_loss(candidate_scores(out, candidates=width))
    return (1.0 - rank_weight) * title + rank_weight * ranking, target_logits


def title_loss(logits: torch.Tensor, targets: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Mean over examples of the mean NLL of their title tokens (``title_nll``'s mean)."""
    nll = F.cross_entropy(logits.float(), targets, reduction="none")
    per_example = torch.stack([chunk.mean() for chunk in torch.split(nll, lengths)])
    return per_example.mean()


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """KL(teacher || student) per title token ``[T, V]`` logits, averaged like :func:`title_loss`."""
    logq = torch.log_softmax(student.float(), -1)
    logp = torch.log_softmax(teacher.float(), -1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return torch.stack([chunk.mean() for chunk in torch.split(kl, lengths)]).mean()


# --- the model to train -------------------------------------------------------------------


def lora_targets(model: Any) -> list[str]:
    """Leaf names of every projection in a decoder layer (family table), for peft."""
    fam = family_of(model)
    names = [*fam.attn_in, fam.attn_out, *fam.mlp_in, fam.mlp_out]
    return sorted({name.rsplit(".", 1)[-1] for name in names})


def _wrap_lora(model: Any, config: FinetuneConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    alpha = config.lora_alpha if config.lora_alpha is not None else 2.0 * config.lora_rank
    lora = LoraConfig(r=config.lora_rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=lora_targets(model), bias="none")
    return get_peft_model(model, lora)


def _base(model: Any) -> Any:
    """The transformers model inside a peft wrapper (or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def trainable_bridge(model: Any, *, kept: list[int], num_layers: int) -> Bridge:
    """Identity-initialised, trainable MLP maps ``T [d, d]`` on every gap after a kept layer."""
    dim = model.get_input_embeddings().weight.shape[1]
    bridge = Bridge(kind="trained-mlp")
    for slot, target in find_gaps(kept, num_layers=num_layers):
        if slot > 0:
            eye = torch.eye(dim, dtype=torch.float32, device=model.get_input_embeddings().weight.device)
            bridge.gaps.append(GapMaps(slot=slot, target=target, mlp=torch.nn.Parameter(eye)))
    return bridge


BRIDGE_ATTR = "slim_bridge"


def _register_bridge_params(model: Any, bridge: Bridge) -> None:
    """Hang the bridge maps on the model (so data parallel syncs their gradients)."""
    setattr(_base(model), BRIDGE_ATTR, torch.nn.ParameterDict({f"slot{g.slot}": g.mlp for g in bridge.gaps}))


@dataclass
class _Trainee:
    """The model being trained, its trainable tensors by name, and the bridge (if any)."""

    model: Any
    params: dict[str, torch.nn.Parameter]
    bridge: Bridge | None
    mode: str


def _build_trainee(config: FinetuneConfig, model_dir: Path) -> tuple[_Trainee, Any]:
    """Load the model (safetensors), wrap it for LoRA or full training, add bridges."""
    from ollama_slim.slimming.build import read_provenance
    from ollama_slim.models.modeling import LoadOptions, load

    torch.manual_seed(config.seed)
    model, tokenizer = load(model_dir, LoadOptions())
    model.config.use_cache = False
    if config.full:
        mode = "full"
    else:
        model, mode = _wrap_lora(model, config), f"lora-r{config.lora_rank}"
    bridge = None
    if config.train_bridges:
        record = read_provenance(model_dir)
        if "kept" not in record or "num_layers" not in record:
            raise UsageError(f"{model_dir} has no record of kept layers (slim.json)", hint="train bridges only on a model made by `ollama-slim build`")
        bridge = trainable_bridge(model, kept=list(record["kept"]), num_layers=int(record["num_layers"]))
        _register_bridge_params(model, bridge)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    return _Trainee(model=model, params=params, bridge=bridge, mode=mode), tokenizer


def _load_teacher(config: FinetuneConfig, student: Any) -> Any | None:
    from ollama_slim.models.modeling import load_model
    from ollama_slim.models.sources import resolve

    if config.distill_from is None:
        return None
    teacher = load_model(resolve(config.distill_from).model_dir)
    if teacher.get_input_embeddings().weight.shape[0] != student.get_input_embeddings().weight.shape[0]:
        raise UsageError(f"teacher {config.distill_from} has another vocabulary than the student", hint="distil from a model with the same tokenizer")
    teacher.requires_grad_(False)
    return teacher


# --- checkpoints --------------------------------------------------------------------------


def save_checkpoint(directory: Path, *, step: int, trainee: _Trainee, optimizer: Any, config: FinetuneConfig, losses: list[float]) -> Path:
    """Write ``ckpt-<step>`` atomically (temp dir + rename), then point ``latest.json`` at it.

    A kill at any moment leaves the previous complete checkpoint or the new one.
    """
    from safetensors.torch import save_file

    final = directory / f"ckpt-{step:08d}"
    with paths.atomic_dir(final) as tmp:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in trainee.params.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        state = {"format": CHECKPOINT_FORMAT, "step": step, "losses": losses, "config": config.fingerprint()}
        paths.write_json(tmp / "state.json", state)
    paths.write_json(directory / CHECKPOINT_POINTER, {"checkpoint": final.name, "step": step})
    for old in directory.glob("ckpt-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint ``latest.json`` names, or the newest complete ``ckpt-*`` directory."""
    pointer = directory / CHECKPOINT_POINTER
    if pointer.is_file():
        try:
            named = directory / paths.read_json(pointer)["checkpoint"]
            if (named / "state.json").is_file():
                return named
        except (ValueError, KeyError, TypeError):
            pass
    complete = sorted(d for d in directory.glob("ckpt-*") if (d / "state.json").is_file())
    return complete[-1] if complete else None


def load_checkpoint(checkpoint: Path, *, trainee: _Trainee, optimizer: Any, config: FinetuneConfig) -> tuple[int, list[float]]:
    """Restore trainable tensors, optimizer and RNG from ``checkpoint``: ``(step, losses)``."""
    from safetensors.torch import load_file

    state = paths.read_json(checkpoint / "state.json")
    if state.get("config") != json.loads(json.dumps(config.fingerprint())):
        raise RunError(f"checkpoint {checkpoint} was made with other settings", hint=f"rerun with the same options, or delete {checkpoint.parent} to start over")
    tensors = load_file(str(checkpoint / "trainable.safetensors"))
    if set(tensors) != set(trainee.params):
        raise RunError(f"checkpoint {checkpoint} does not match the model being trained", hint=f"delete {checkpoint.parent} to start over")
    with torch.no_grad():
        for name, param in trainee.params.items():
            param.copy_(tensors[name].to(param.dtype))
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    torch.set_rng_state(torch.load(checkpoint / "rng.pt", weights_only=True)["torch"])
    return int(state["step"]), list(state.get("losses", []))


# --- the loop -----------------------------------------------------------------------------


def learning_rate(step: int, *, total: int, peak: float, warmup: float) -> float:
    """Linear warm-up over ``warmup`` of the steps, then linear decay to 10% of ``peak``."""
    ramp = max(1, int(round(warmup * total)))
    if step < ramp:
        return peak * (step + 1) / ramp
    return peak * (1.0 - 0.9 * (step - ramp) / max(1, total - ramp))


def total_steps(config: FinetuneConfig, num_examples: int) -> int:
    if config.steps is not None:
        return config.steps
    return max(1, math.ceil(config.epochs * num_examples / config.batch_size))


@dataclass
class _Loop:
    """Everything one optimizer step needs."""

    config: FinetuneConfig
    trainee: _Trainee
    teacher: Any | None
    tokenizer: Any
    dataset: Any
    examples: list[Any]
    optimizer: Any
    accelerator: Any
    total: int


def _step_rows(loop: _Loop, step: int) -> list[tuple[list[int], list[list[int]]]]:
    """This process's share of step ``step``'s batch, encoded with its candidates."""
    acc, config = loop.accelerator, loop.config
    indices = batch_indices(step=step, batch_size=config.batch_size, num_examples=len(loop.examples), seed=config.seed)
    mine = indices[acc.process_index :: acc.num_processes] or indices[:1]
    chosen = [loop.examples[i] for i in mine]
    negatives = None
    if config.rank_negatives > 0:
        negatives = [negative_items(loop.dataset, loop.examples[i], count=config.rank_negatives, seed=config.seed, step=step, index=i) for i in mine]
    return _encode(loop.tokenizer, loop.dataset, chosen, config, negatives)


def _step_loss(loop: _Loop, step: int) -> torch.Tensor:
    """The loss of this process's share of step ``step``'s batch (scalar)."""
    rows = _step_rows(loop, step)
    pad = loop.tokenizer.pad_token_id or 0
    with loop.accelerator.autocast():
        loss, logits = student_loss(loop.trainee.model, rows, rank_weight=loop.config.rank_weight, pad_id=pad)
        if loop.teacher is not None:
            batch = [(p, cands[0]) for p, cands in rows]
            with torch.no_grad():
                teacher_logits, _ = title_logits(loop.teacher, batch, pad_id=pad)
            w = loop.config.distill_weight
            loss = (1.0 - w) * loss + w * distill_loss(logits, teacher_logits, [len(t) for _, t in batch])
    return loss


def _train_step(loop: _Loop, step: int) -> float:
    """One optimizer step; returns the loss averaged over processes."""
    lr = learning_rate(step, total=loop.total, peak=loop.config.lr, warmup=loop.config.warmup)
    for group in loop.optimizer.param_groups:
        group["lr"] = lr
    loop.optimizer.zero_grad(set_to_none=True)
    loss = _step_loss(loop, step)
    loop.accelerator.backward(loss)
    loop.accelerator.clip_grad_norm_(list(loop.trainee.params.values()), 1.0)
    loop.optimizer.step()
    return float(loop.accelerator.reduce(loss.detach(), reduction="mean"))


def _run_loop(loop: _Loop, *, start: int, losses: list[float], checkpoint_dir: Path, on_step: Callable[[FinetuneProgress], None] | None) -> list[float]:
    """Steps ``start..total-1``, a checkpoint every ``checkpoint_every`` steps and at the end."""
    began = time.perf_counter()
    model = loop.trainee.model
    model.train()
    with attach_bridge(_base(loop.accelerator.unwrap_model(model)), loop.trainee.bridge) if loop.trainee.bridge else nullcontext():
        for step in range(start, loop.total):
            losses.append(_train_step(loop, step))
            done = step + 1
            if done % loop.config.checkpoint_every == 0 or done == loop.total:
                loop.accelerator.wait_for_everyone()
                if loop.accelerator.is_main_process:
                    save_checkpoint(checkpoint_dir, step=done, trainee=loop.trainee, optimizer=loop.optimizer, config=loop.config, losses=losses)
            if on_step is not None:
                lr = loop.optimizer.param_groups[0]["lr"]
                on_step(FinetuneProgress(step=done, total=loop.total, loss=losses[-1], lr=lr, seconds=time.perf_counter() - began))
    model.eval()
    return losses


# --- the stage ----------------------------------------------------------------------------


def finetune(config: FinetuneConfig, *, on_step: Callable[[FinetuneProgress], None] | None = None) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``config.data``; resume from the last checkpoint if any.

    ``on_step`` is called after every optimizer step (progress bars, early stops: an
    exception it raises, e.g. KeyboardInterrupt, stops the run and keeps the checkpoints).
    """
    from ollama_slim.recsys.data import load_dataset

    began = time.perf_counter()
    check_config(config)
    places = _places(config)
    if places.out_dir.exists() and not config.force and latest_checkpoint(places.checkpoint_dir) is None:
        raise UsageError(f"{places.out_dir} already exists", hint="pass --force to replace it, or choose another --out")
    dataset = load_dataset(config.data)
    train = _train_examples(config, dataset)
    _check_negatives(config, dataset, train)
    trainee, tokenizer = _build_trainee(config, places.model_dir)
    teacher = _load_teacher(config, trainee.model)
    accelerator = _accelerator(config)
    optimizer = torch.optim.AdamW(list(trainee.params.values()), lr=config.lr, weight_decay=0.0)
    start, losses = _resume(places.checkpoint_dir, trainee=trainee, optimizer=optimizer, config=config)
    trainee.model, optimizer = accelerator.prepare(trainee.model, optimizer)
    if teacher is not None:
        teacher = accelerator.prepare_model(teacher, evaluation_mode=True)
    loop = _Loop(config=config, trainee=trainee, teacher=teacher, tokenizer=tokenizer, dataset=dataset, examples=train,
                 optimizer=optimizer, accelerator=accelerator, total=total_steps(config, len(train)))
    if start > loop.total:
        raise RunError(f"checkpoint in {places.checkpoint_dir} is past step {loop.total}", hint=f"delete {places.checkpoint_dir} to start over")
    losses = _run_loop(loop, start=start, losses=losses, checkpoint_dir=places.checkpoint_dir, on_step=on_step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_final(trainee, accelerator, tokenizer=tokenizer, places=places, config=config, losses=losses)
    return FinetuneResult(
        out_dir=places.out_dir, checkpoint_dir=places.checkpoint_dir, mode=trainee.mode, steps=loop.total, resumed_from=start,
        final_loss=losses[-1] if losses else None, trainable_params=sum(p.numel() for p in trainee.params.values()),
        train_examples=len(train), seconds=time.perf_counter() - began, losses=losses,
    )


def _accelerator(config: FinetuneConfig) -> Any:
    """An ``Accelerator`` with this run's mixed precision.

    Its state is a process-wide singleton: a second run in the same process (the quality
    benchmark heals several models) would keep the first run's precision, or refuse
    another one. That part is dropped first; the distributed setup (``PartialState``)
    stays, and ``None`` still means what ``accelerate launch`` says.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)  # accelerate's own tests do this between runs
    return Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())


def _resume(directory: Path, *, trainee: _Trainee, optimizer: Any, config: FinetuneConfig) -> tuple[int, list[float]]:
    """``(step, losses)`` of the last checkpoint in ``directory``, or ``(0, [])``.

    With ``config.force``, checkpoints made with other settings are discarded.
    """
    for stale in directory.glob(".ckpt-*"):  # temp dirs of a write that was killed
        shutil.rmtree(stale, ignore_errors=True)
    checkpoint = latest_checkpoint(directory) if directory.is_dir() else None
    if checkpoint is None:
        return 0, []
    if config.force and paths.read_json(checkpoint / "state.json").get("config") != json.loads(json.dumps(config.fingerprint())):
        shutil.rmtree(directory, ignore_errors=True)  # --force: other settings, start over
        return 0, []
    return load_checkpoint(checkpoint, trainee=trainee, optimizer=optimizer, config=config)


def merged_model(trainee: _Trainee, accelerator: Any) -> Any:
    """A standard transformers model: LoRA merged, trained bridges folded (float32)."""
    model = accelerator.unwrap_model(trainee.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if trainee.bridge is not None:
        delattr(model, BRIDGE_ATTR)
        fold_bridge(model, Bridge(kind=trainee.bridge.kind, gaps=[GapMaps(slot=g.slot, target=g.target, mlp=g.mlp.detach()) for g in trainee.bridge.gaps]))
    return model.float()


def _save_final(trainee: _Trainee, accelerator: Any, *, tokenizer: Any, places: _Places, config: FinetuneConfig, losses: list[float]) -> None:
    from ollama_slim.slimming.build import read_provenance, save_compact

    model = merged_model(trainee, accelerator)
    model.config.use_cache = True
    provenance = read_provenance(places.model_dir)
    record = {"model_dir": str(places.model_dir), "mode": trainee.mode, "steps": len(losses), "final_loss": losses[-1] if losses else None, "config": config.fingerprint()}
    provenance["finetune"] = record
    if trainee.bridge is not None:
        provenance.setdefault("bridge", {})["trained"] = trainee.bridge.summary()
    save_compact(model, tokenizer, places.out_dir, provenance=provenance)
