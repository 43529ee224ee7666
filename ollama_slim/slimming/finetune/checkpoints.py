"""Checkpoints of a fine-tuning run: written atomically, found after a kill, refused if made with other settings.

A checkpoint ``ckpt-<step>`` holds the trainable tensors, the optimizer state, the torch
RNG state and ``state.json`` (step, losses, the config's fingerprint; with early stopping
its state, and its best tensors in ``best.safetensors``); ``latest.json`` names the newest
complete one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ollama_slim import paths
from ollama_slim.errors import RunError
from ollama_slim.slimming.finetune.config import FinetuneConfig
from ollama_slim.slimming.finetune.trainee import Trainee
from ollama_slim.slimming.finetune.validation import EarlyStop

CHECKPOINT_POINTER = "latest.json"
CHECKPOINT_FORMAT = 1
BEST_FILE = "best.safetensors"


def save_checkpoint(directory: Path, *, step: int, trainee: Trainee, optimizer: Any, config: FinetuneConfig, losses: list[float],
                    early: EarlyStop | None = None) -> Path:
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
        if early is not None:
            state["early_stop"] = early.state()
            if early.best_params:
                save_file(early.best_params, str(tmp / BEST_FILE))
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


def _same_settings(state: dict[str, Any], config: FinetuneConfig) -> bool:
    """Whether a checkpoint's ``state.json`` records ``config``'s fingerprint (compared as JSON)."""
    return state.get("config") == json.loads(json.dumps(config.fingerprint()))


def load_checkpoint(checkpoint: Path, *, trainee: Trainee, optimizer: Any, config: FinetuneConfig) -> tuple[int, list[float]]:
    """Restore trainable tensors, optimizer and RNG from ``checkpoint``: ``(step, losses)``."""
    from safetensors.torch import load_file

    state = paths.read_json(checkpoint / "state.json")
    if not _same_settings(state, config):
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


def load_early_stop(checkpoint: Path, early: EarlyStop) -> None:
    """Restore ``early`` from ``checkpoint`` (left as it is when the checkpoint has no such state)."""
    from safetensors.torch import load_file

    state = paths.read_json(checkpoint / "state.json").get("early_stop")
    if state is not None:
        best = checkpoint / BEST_FILE
        early.restore(state, load_file(str(best)) if best.is_file() else {})


def resume(directory: Path, *, trainee: Trainee, optimizer: Any, config: FinetuneConfig) -> tuple[int, list[float]]:
    """``(step, losses)`` of the last checkpoint in ``directory``, or ``(0, [])``.

    With ``config.force``, checkpoints made with other settings are discarded.
    """
    for stale in directory.glob(".ckpt-*"):  # temp dirs of a write that was killed
        shutil.rmtree(stale, ignore_errors=True)
    checkpoint = latest_checkpoint(directory) if directory.is_dir() else None
    if checkpoint is None:
        return 0, []
    if config.force and not _same_settings(paths.read_json(checkpoint / "state.json"), config):
        shutil.rmtree(directory, ignore_errors=True)  # --force: other settings, start over
        return 0, []
    return load_checkpoint(checkpoint, trainee=trainee, optimizer=optimizer, config=config)
