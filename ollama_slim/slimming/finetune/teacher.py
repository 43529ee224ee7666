"""The teacher's side of distillation (design §6): its outputs per example, computed once and cached.

What the teacher gives each example (float32), as :class:`TeacherPlan` asks:

- ``head_in`` [T, d]: its LM head's input at the positions that predict the target title
  (its title-token distribution is ``lm_head(head_in)``: d numbers a token, not V);
- ``scores`` [C]: the length-normalised log-likelihood of each candidate, the target first
  (the score evaluation ranks by, from one packed forward);
- ``hidden`` [L, T, d]: the outputs of its decoder layers ``plan.layers`` at those positions.

With a cache directory each example's outputs are one safetensors file named by a hash of
the teacher's identity, the plan, the compute dtype and the exact token ids of the prompt
and candidates (which fix the example, its candidates, the prompt settings and the
tokenizer), written atomically: after the first epoch the teacher runs no forward pass,
and a resumed run finds what the interrupted one wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ollama_slim.models.lm import FINAL_NORM, Row, candidate_logits, candidate_scores, compute_dtype, recorded, target_positions, title_logits

CACHE_FORMAT = 1
Targets = dict[str, torch.Tensor]  # one example's teacher outputs: "head_in", "scores", "hidden"


@dataclass(frozen=True)
class TeacherPlan:
    """What the teacher must give: its title distribution, its candidate scores, its layer outputs."""

    title: bool = False
    scores: bool = False
    layers: tuple[int, ...] = ()


def run_teacher(teacher: Any, rows: list[Row], plan: TeacherPlan, *, pad_id: int = 0) -> list[Targets]:
    """The teacher's outputs for ``rows`` (one forward, no grad), one dict per row, float32.

    With ``plan.scores`` every candidate is packed after its prompt (:func:`candidate_logits`);
    otherwise only the target title follows the prompt. Either way the target sits at
    :func:`target_positions`, where ``head_in`` and ``hidden`` are read.
    """
    with torch.no_grad(), recorded(teacher, layers=plan.layers, final_norm=plan.title) as seen:
        if plan.scores:
            scores = candidate_scores(candidate_logits(teacher, rows, pad_id=pad_id), candidates=len(rows[0][1])).float()
        else:
            title_logits(teacher, [(prompt, cands[0]) for prompt, cands in rows], pad_id=pad_id)
    row, col = target_positions(rows)
    lengths = [len(cands[0]) for _, cands in rows]
    per: dict[str, list[torch.Tensor]] = {}
    if plan.title:
        states = seen[FINAL_NORM]
        per["head_in"] = list(states[row.to(states.device), col.to(states.device)].float().split(lengths))
    if plan.layers:
        stacked = torch.stack([seen[i][row.to(seen[i].device), col.to(seen[i].device)].float() for i in plan.layers])  # [L, T, d]
        per["hidden"] = list(stacked.split(lengths, dim=1))
    if plan.scores:
        per["scores"] = list(scores.unbind(0))
    return [{name: values[b].clone(memory_format=torch.contiguous_format) for name, values in per.items()} for b in range(len(rows))]


def teacher_identity(model_dir: Path) -> str:
    """A hash of the teacher's directory and its weight and config files (name, size, mtime):
    rewriting the teacher makes its cached outputs stale, and they are recomputed."""
    model_dir = Path(model_dir).resolve()
    files = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps([str(model_dir), stats]).encode()).hexdigest()


@dataclass(frozen=True)
class TeacherCache:
    """A directory of teacher outputs, one safetensors file per example (never pickle)."""

    directory: Path
    identity: str

    def key(self, row: Row, plan: TeacherPlan, dtype: torch.dtype) -> str:
        """The hash that names ``row``'s outputs: teacher, plan, dtype and token ids."""
        prompt, cands = row
        blob = {"format": CACHE_FORMAT, "teacher": self.identity, "plan": asdict(plan), "dtype": str(dtype), "prompt": prompt, "candidates": cands}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    def load(self, key: str) -> Targets | None:
        """The outputs stored under ``key``, or ``None`` (also for a damaged file: recomputed)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.directory / f"{key}.safetensors"
        if not path.is_file():
            return None
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError):
            return None

    def save(self, key: str, targets: Targets) -> None:
        """Store ``targets`` under ``key`` atomically (temp file + rename)."""
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{key}.{os.getpid()}.tmp"
        save_file({name: t.detach().cpu().contiguous() for name, t in targets.items()}, str(tmp))
        os.replace(tmp, self.directory / f"{key}.safetensors")


@dataclass
class Teacher:
    """The frozen teacher, what it must give, its cache (if any) and what it cost."""

    model: Any
    plan: TeacherPlan
    cache: TeacherCache | None = None
    forwards: int = 0  # teacher forward passes run
    computed: int = 0  # examples computed by them
    cached: int = 0  # examples found in the cache

    def targets(self, rows: list[Row], *, pad_id: int = 0) -> list[Targets]:
        """The teacher's outputs for each of ``rows``: from the cache where found, else one forward."""
        if self.cache is None:
            return self._run(rows, pad_id)
        dtype = compute_dtype(self.model, self.model.get_input_embeddings().weight.device)
        keys = [self.cache.key(row, self.plan, dtype) for row in rows]
        found = [self.cache.load(key) for key in keys]
        missing = [i for i, targets in enumerate(found) if targets is None]
        self.cached += len(rows) - len(missing)
        if missing:
            for i, targets in zip(missing, self._run([rows[i] for i in missing], pad_id)):
                self.cache.save(keys[i], targets)
                found[i] = targets
        return found

    def _run(self, rows: list[Row], pad_id: int) -> list[Targets]:
        self.forwards += 1
        self.computed += len(rows)
        return run_teacher(self.model, rows, self.plan, pad_id=pad_id)

    def summary(self) -> dict[str, Any]:
        """What the teacher cost this run (JSON-able)."""
        where = str(self.cache.directory) if self.cache is not None else None
        return {"forwards": self.forwards, "computed_examples": self.computed, "cached_examples": self.cached, "cache": where}
