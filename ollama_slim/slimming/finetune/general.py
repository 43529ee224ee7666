"""General-text distillation: the teacher's next-token distribution on text it writes itself.

Healing on one domain's prompts teaches the slim model that domain; what the dropped layers
held of everything else (another catalogue, general knowledge) is not in those prompts.
Pruning work heals on a general corpus for that (Sheared-LLaMA, Minitron); offline there is
none, so the teacher writes one: ``general_texts`` sequences of ``general_tokens`` tokens
sampled from its start token (seeded, cached beside the checkpoints, so a resumed run trains
on the same text). Each step then adds, with ``general_weight``, the per-token
KL(teacher || student) on a batch of it, and the hidden-state alignment on every token of
it when the distiller aligns layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ollama_slim import paths
from ollama_slim.models.lm import recorded
from ollama_slim.slimming.finetune.losses import ALIGN_LOSSES, distill_loss

SAMPLING = {"do_sample": True, "top_p": 0.95, "temperature": 1.0}
_BATCH = 16  # sequences sampled at once


def teacher_corpus(teacher: Any, tokenizer: Any, *, texts: int, tokens: int, seed: int, path: Path | None = None, write: bool = True) -> list[list[int]]:
    """``texts`` token sequences of ``1 + tokens`` (the start token, then the teacher's sample),
    read from ``path`` when it holds this corpus, else sampled and written there (``write``;
    no ``path``: sampled, not kept)."""
    key = {"texts": texts, "tokens": tokens, "seed": seed, "sampling": SAMPLING}
    if path is not None and path.is_file():
        cached = paths.read_json(path)
        if cached.get("key") == key:
            return cached["ids"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(teacher.parameters()).device
    ids: list[list[int]] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        while len(ids) < texts:
            begin = torch.full((min(_BATCH, texts - len(ids)), 1), start, dtype=torch.long, device=device)
            out = teacher.generate(begin, attention_mask=torch.ones_like(begin), max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=pad, **SAMPLING)
            ids += out[:, : 1 + tokens].tolist()
    if write and path is not None:
        paths.write_json(path, {"key": key, "ids": ids})
    return ids


def general_loss(model: Any, teacher: Any, ids: torch.Tensor, *, base: Any, align: tuple[tuple[int, ...], tuple[int, ...], str] | None = None,
                 align_weight: float = 0.0) -> torch.Tensor:
    """KL(teacher || student) per token of ``ids`` ``[B, S]``, averaged per sequence then over
    the batch; with ``align`` ``(student layers, teacher layers, kind)``, plus ``align_weight`` x
    the alignment of those layers' outputs at every token. ``base``: the transformers model
    inside ``model`` (where the student's layer outputs are recorded); ``teacher``: a bare
    transformers model."""
    student_layers = align[0] if align and align_weight > 0 else ()
    with recorded(base, layers=student_layers) as seen:
        logits = model(input_ids=ids).logits
    teacher_layers = align[1] if student_layers else ()
    with torch.no_grad(), recorded(teacher, layers=teacher_layers) as taught:  # layer outputs before the final norm, as the student's
        teacher_logits = teacher(input_ids=ids.to(next(teacher.parameters()).device)).logits
    batch, length, vocab = logits.shape
    loss = distill_loss(logits.reshape(-1, vocab), teacher_logits.to(logits.device).reshape(-1, vocab), [length] * batch)
    if student_layers:
        student = torch.stack([seen[i] for i in student_layers])  # [L, B, S, d]
        target = torch.stack([taught[j].to(student.device) for j in teacher_layers])
        loss = loss + align_weight * ALIGN_LOSSES[align[2]](student.flatten(1, 2), target.flatten(1, 2))
    return loss
