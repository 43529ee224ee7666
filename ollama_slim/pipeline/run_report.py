"""Collect a prune run's stage files into the report (report.md + plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ollama_slim import paths
from ollama_slim.pipeline.config import PruneConfig, command_line
from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.pipeline.report import ReportInputs, write_report
from ollama_slim.recsys.retained import retained_on_lift


def _read(path: Path) -> dict[str, Any]:
    return paths.read_json(path) if path.is_file() else {}


def _retained(evals: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    if "reference" not in evals:
        return None
    slim, full = evals["slim"], evals["reference"]
    random = slim["baselines"]["random"]["ndcg@10"]
    result = retained_on_lift(slim["per_user"]["ndcg@10"], full["per_user"]["ndcg@10"], random=random)
    return result.to_json()


def _strip(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "per_user"}


def _healing_terms(c: PruneConfig) -> dict[str, str]:
    """The healing loss beyond the title loss, in words: the ranking negatives and the teacher."""
    terms = {}
    if c.answers > 1:
        terms["answers"] = f"each prompt trained on the target and the user's next {c.answers - 1} items"
    if c.popularity_debias > 0:
        terms["answers"] = terms.get("answers", "answers") + f" weighted by train count^-{c.popularity_debias}"
    if c.cf_answers > 0:
        terms["answers"] = terms.get("answers", "the target") + (f"; and on the top {c.cf_answers} of an item-to-item recommender for its history "
                                                                 f"({c.cf_share:g} of the title loss"
                                                                 + (f"; answers among the {c.cf_vocab} most taken items)" if c.cf_vocab else ")"))
    if c.rank_negatives:
        terms["ranking"] = f"1+{c.rank_negatives} candidates ({' and '.join(c.rank_regimes)} negatives, weight {c.rank_weight})"
    if c.distills():
        parts = []
        if c.listwise_weight > 0:
            parts.append(f"listwise KD weight {c.listwise_weight} at T {c.distill_temperature}")
        if c.align_weight > 0:
            parts.append(f"alignment at the gap ends weight {c.align_weight}")
        if c.general_weight > 0:
            parts.append(f"KL on {c.general_texts} texts it wrote itself weight {c.general_weight:g}")
        terms["teacher"] = "distilled from the original (" + ", ".join(parts) + ")"
    if c.eval_users:
        terms["holdout"] = f"the {c.eval_users} evaluated users held out"
    return terms


def _bridge(c: PruneConfig, layout: RunLayout) -> str:
    """The bridge the build used (the family may not allow the one asked for), as the report says it."""
    built = _read(layout.build_record).get("bridge") or {}
    kind = built.get("kind", c.bridge)
    return f"`{kind}`" if kind == c.bridge else f"`{kind}` (`{c.bridge}` asked; the {_read(layout.resolve).get('arch', '?')} family does not allow it)"


def write_run_report(config: PruneConfig, layout: RunLayout) -> Path:
    """Write ``report.md`` for the run of ``config`` from the result files in ``layout``."""
    c = config
    evals = {label: _read(layout.eval_record(label)) for label in c.eval_targets()}
    labels = {"original": "original (zero-shot)", "slim": "slim (healed)", "shipped": f"slim as shipped ({c.outtype} GGUF through llama.cpp)",
              "reference": "reference: full model fine-tuned, same budget"}
    quality = {labels[k]: _strip(v) for k, v in evals.items() if k in labels}
    cross = {labels[k.removeprefix("cross_")] + f" on {c.cross_domain}": _strip(v) for k, v in evals.items() if k.startswith("cross_")}
    selection, finetune, register = _read(layout.selection), _read(layout.finetune_record), _read(layout.register)
    original_gguf = layout.original_gguf(c.outtype)
    files = {p.name: p.stat().st_size for p in (layout.gguf, original_gguf, layout.modelfile) if p.is_file()}
    inputs = ReportInputs(
        run_dir=layout.root, model=_read(layout.resolve), slim_name=c.slim_name, data=c.data, dataset=evals["slim"].get("data", {}),
        kept=selection.get("kept", []), num_layers=selection.get("num_layers", 0), bridge=_bridge(c, layout),
        finetune={"mode": finetune.get("mode", "lora"), "steps": c.steps, "lora_rank": c.lora_rank, "lr": c.lr, "batch_size": c.batch_size,
                  "final_loss": finetune.get("final_loss"), **_healing_terms(c)},
        quality=quality, retained=_retained(evals), cross_domain=cross, bench=_read(layout.bench), export=_read(layout.export_record) or None, files=files,
        timings={k: v.get("seconds", 0.0) for k, v in _read(layout.state).items() if isinstance(v, dict)},
        commands=[command_line(c), f"ollama-slim bench {original_gguf} {layout.gguf}"], registered=register.get("name") if register.get("registered", True) and register else None,
        notes=_notes(c, layout),
        generation={label: _read(layout.generation_record(key)) for key, label in ASKED_IN_CHAT.items()
                    if layout.generation_record(key).is_file() and (key != "reference" or c.wants_reference())},
    )
    return write_report(inputs)


ASKED_IN_CHAT = {"slim": "slim (shipped GGUF)", "original": "original, asked the slim model's way",
                 "reference": "full model healed the same way (reference), asked the slim model's way"}  # generation_<key>.json -> report row


def _notes(c: PruneConfig, layout: RunLayout) -> list[str]:
    notes = []
    if not c.register:
        notes.append(f"Not registered (--no-register): `ollama-slim register {layout.gguf} --name {c.slim_name}` does it once an Ollama server answers.")
    if not c.use_reference():
        notes.append("No reference fine-tune of the full model (off by default without a GPU; --reference turns it on): the quality table compares the healed slim model with the untuned original.")
    return notes
