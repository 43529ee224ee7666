"""The model being trained: LoRA or full, optional trainable bridges, the teacher, and the merged result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ollama_slim.errors import UsageError
from ollama_slim.models.families import family_of
from ollama_slim.slimming.bridges import Bridge, GapMaps, find_gaps, fold_bridge
from ollama_slim.slimming.finetune.config import FinetuneConfig

BRIDGE_ATTR = "slim_bridge"


def lora_targets(model: Any) -> list[str]:
    """Leaf names of the linear layers LoRA adapts (family table ``lora_targets``), for peft.

    Mixture-of-experts families adapt attention only: their experts are 3-D parameters,
    not ``nn.Linear`` modules, and stay frozen under LoRA (a full fine-tune trains them).
    """
    return sorted(family_of(model).lora_targets)


def wrap_lora(model: Any, config: FinetuneConfig) -> Any:
    """``model`` inside a peft LoRA wrapper of ``config.lora_rank`` on every projection."""
    from peft import LoraConfig, get_peft_model

    alpha = config.lora_alpha if config.lora_alpha is not None else 2.0 * config.lora_rank
    lora = LoraConfig(r=config.lora_rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=lora_targets(model), bias="none")
    return get_peft_model(model, lora)


def base_model(model: Any) -> Any:
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


def _register_bridge_params(model: Any, bridge: Bridge) -> None:
    """Hang the bridge maps on the model (so data parallel syncs their gradients)."""
    setattr(base_model(model), BRIDGE_ATTR, torch.nn.ParameterDict({f"slot{g.slot}": g.mlp for g in bridge.gaps}))


@dataclass
class Trainee:
    """The model being trained, its trainable tensors by name, and the bridge (if any)."""

    model: Any
    params: dict[str, torch.nn.Parameter]
    bridge: Bridge | None
    mode: str


def build_trainee(config: FinetuneConfig, model_dir: Path) -> tuple[Trainee, Any]:
    """Load the model (safetensors), wrap it for LoRA or full training, add bridges: ``(trainee, tokenizer)``."""
    from ollama_slim.models.modeling import LoadOptions, load
    from ollama_slim.slimming.build import read_provenance

    torch.manual_seed(config.seed)
    model, tokenizer = load(model_dir, LoadOptions())
    model.config.use_cache = False
    if config.full:
        mode = "full"
    else:
        model, mode = wrap_lora(model, config), f"lora-r{config.lora_rank}"
    bridge = None
    if config.train_bridges:
        record = read_provenance(model_dir)
        if "kept" not in record or "num_layers" not in record:
            raise UsageError(f"{model_dir} has no record of kept layers (slim.json)", hint="train bridges only on a model made by `ollama-slim build`")
        bridge = trainable_bridge(model, kept=list(record["kept"]), num_layers=int(record["num_layers"]))
        _register_bridge_params(model, bridge)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    return Trainee(model=model, params=params, bridge=bridge, mode=mode), tokenizer


def load_teacher(config: FinetuneConfig, student: Any) -> Any | None:
    """The frozen distillation teacher (``None`` without ``distill_from``); its vocabulary must be the student's."""
    from ollama_slim.models.modeling import load_model

    if config.distill_from is None:
        return None
    teacher = load_model(config.teacher_dir())
    if teacher.get_input_embeddings().weight.shape[0] != student.get_input_embeddings().weight.shape[0]:
        raise UsageError(f"teacher {config.distill_from} has another vocabulary than the student", hint="distil from a model with the same tokenizer")
    teacher.requires_grad_(False)
    return teacher


def merged_model(trainee: Trainee, accelerator: Any) -> Any:
    """A standard transformers model: LoRA merged, trained bridges folded (float32)."""
    model = accelerator.unwrap_model(trainee.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if trainee.bridge is not None:
        delattr(model, BRIDGE_ATTR)
        fold_bridge(model, Bridge(kind=trainee.bridge.kind, gaps=[GapMaps(slot=g.slot, target=g.target, mlp=g.mlp.detach()) for g in trainee.bridge.gaps]))
    return model.float()
