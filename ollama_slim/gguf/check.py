"""The acceptance check of every export: llama.cpp's logits against transformers'.

The GGUF runs in llama-cpp-python (``logits_all``, an f32 KV cache), the Hugging Face
directory in transformers, on the same token ids; thresholds per outtype come from
``_data/gguf_export.json``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ollama_slim.errors import ExportError
from ollama_slim.gguf.tokenizer import export_tables


@dataclass(frozen=True)
class CheckResult:
    """llama.cpp vs transformers on the same token ids (logits of every position)."""

    passed: bool
    reason: str
    n_prompts: int
    n_tokens: int
    max_abs_diff: float
    max_abs_logit: float
    rel_diff: float  # max_abs_diff / max_abs_logit
    top1_agree: int  # prompts whose last-position argmax agrees
    top5_agree: int  # prompts whose transformers argmax is among llama.cpp's top 5
    thresholds: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_thresholds(outtype: str) -> dict[str, Any]:
    """Acceptance thresholds of ``outtype`` (K-quants share one row)."""
    table = export_tables()["check"]
    return dict(table.get(outtype) or table["k_quant"])


def check_gguf(gguf_path: str | Path, hf_dir: str | Path, prompts: list[str] | tuple[str, ...] | None = None, *, thresholds: dict[str, Any] | None = None) -> CheckResult:
    """Run the same token ids through llama.cpp (the GGUF) and transformers (``hf_dir``).

    Compares the logits of every position (``(n_tokens, vocab)`` per prompt): the
    max abs difference relative to the max abs logit, and the last-position argmax.
    Default thresholds are the f32 ones; default prompts the 20 of the export table, plus,
    for families with sliding-window layers, one prompt longer than the window.
    """
    from ollama_slim.models.modeling import load

    prompts = list(prompts or export_tables()["check_prompts"])
    limits = thresholds or check_thresholds("f32")
    model, tokenizer = load(hf_dir)
    token_ids = [tokenizer(p).input_ids[:256] for p in prompts]
    window = _sliding_window(model)
    if window is not None:  # one prompt past the window, so sliding-window layers are checked as such
        joined = [t for ids in token_ids for t in ids]
        token_ids.append((joined * (window // max(len(joined), 1) + 2))[: window + 48])
    hf_logits = _hf_logits(model, token_ids)
    gg_logits = _llama_logits(Path(gguf_path), token_ids)
    return _compare(hf_logits, gg_logits, limits)


def _sliding_window(model: Any) -> int | None:
    """The window of a model whose family mixes sliding-window and full layers (None otherwise, or above 4096 tokens)."""
    from ollama_slim.models.families import family_of

    pattern = family_of(model).layer_pattern
    window = getattr(model.config, pattern.window, None) if pattern is not None else None
    return int(window) if window and int(window) <= 4096 else None


def _hf_logits(model: Any, token_ids: list[list[int]], *, budget_bytes: float = 1e9) -> list[Any]:
    """``(len(ids), vocab)`` float32 logits of transformers for each token list.

    Right-padded batches of similar lengths, each under ``budget_bytes`` of logits (a
    262k-token vocabulary makes a padded batch large): with a causal mask, padding after a
    prompt changes none of its positions.
    """
    import torch

    vocab = model.get_output_embeddings().weight.shape[0]
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    out: dict[int, Any] = {}
    group: list[int] = []
    for i in [*order, None]:
        if i is not None and (not group or (len(group) + 1) * len(token_ids[i]) * vocab * 4 <= budget_bytes):
            group.append(i)
            continue
        width = max(len(token_ids[j]) for j in group)
        batch = torch.zeros((len(group), width), dtype=torch.long)
        mask = torch.zeros_like(batch)
        for row, j in enumerate(group):
            batch[row, : len(token_ids[j])] = torch.tensor(token_ids[j])
            mask[row, : len(token_ids[j])] = 1
        with torch.no_grad():
            logits = model(input_ids=batch, attention_mask=mask, use_cache=False).logits.float()
        for row, j in enumerate(group):
            out[j] = logits[row, : len(token_ids[j])].numpy().copy()
        del logits
        group = [i] if i is not None else []
    return [out[i] for i in range(len(token_ids))]


def _llama_logits(gguf_path: Path, token_ids: list[list[int]]) -> list[Any]:
    """``(len(ids), vocab)`` float32 logits of llama.cpp for each token list."""
    import numpy as np
    from llama_cpp import GGML_TYPE_F32, Llama

    n_ctx = max(len(ids) for ids in token_ids) + 8
    try:
        llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False, n_threads=os.cpu_count() or 1,
                    type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)  # an f32 KV cache: compare the weights, not the cache
    except Exception as err:
        raise ExportError(f"llama.cpp cannot load {gguf_path.name} ({type(err).__name__}: {err})", hint="an export that fails here is not kept; report the model") from None
    out = []
    try:
        for ids in token_ids:
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    finally:
        llm.close()
    return out


def _compare(hf_logits: list[Any], gg_logits: list[Any], limits: dict[str, Any]) -> CheckResult:
    """Max abs difference (relative to max abs logit) and last-position top-1/top-5 agreement."""
    import numpy as np

    n = len(hf_logits)
    max_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(hf_logits, gg_logits))
    max_logit = max(float(np.max(np.abs(a))) for a in hf_logits)
    rel = max_diff / max(max_logit, 1e-12)
    top1 = sum(int(np.argmax(a[-1]) == np.argmax(b[-1])) for a, b in zip(hf_logits, gg_logits))
    top5 = sum(int(np.argmax(a[-1]) in np.argsort(b[-1])[-5:]) for a, b in zip(hf_logits, gg_logits))
    failures = []
    if limits.get("max_rel_diff") is not None and rel > limits["max_rel_diff"]:
        failures.append(f"max |dlogit| {max_diff:.3g} = {rel:.2g} x max |logit| (limit {limits['max_rel_diff']:g})")
    for label, got, share in (("top-1", top1, limits.get("min_top1", 1.0)), ("top-1 in top-5", top5, limits.get("min_top5", 0.0))):
        need = math.ceil(share * n - 1e-9)
        if got < need:
            failures.append(f"{label} agrees on {got}/{n} prompts (need {need})")
    return CheckResult(
        passed=not failures, reason="; ".join(failures) or "ok", n_prompts=n, n_tokens=sum(len(a) for a in hf_logits),
        max_abs_diff=max_diff, max_abs_logit=max_logit, rel_diff=rel, top1_agree=top1, top5_agree=top5, thresholds=dict(limits),
    )
