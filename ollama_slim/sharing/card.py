"""The model card of a shared slim model: ``README.md`` written with ``huggingface_hub``.

Metadata the Hub indexes (``base_model``, licence, tags, datasets, ``model-index`` with
the slim and original figures) and a body that says how to run it, what was kept, how
much quality and speed each quantization has, and the command that reproduces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ollama_slim import paths
from ollama_slim.models.licensing import License, base_model_of, share_tags
from ollama_slim.pipeline.report import quality_table

TASK = "Next-item recommendation"


def write_card(path: Path, *, run: Any, name: str, licence: License, results: list[Any], repo: str | None) -> Path:
    """Write the card of ``name`` (a :class:`~ollama_slim.sharing.share.ShareRun`'s slim model) to ``path``."""
    from huggingface_hub import ModelCard

    data = card_data(run=run, name=name, licence=licence, results=results)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_body(run=run, name=name, licence=licence, results=results, repo=repo)}")
    paths.write_text(path, str(card))
    return path


def card_data(*, run: Any, name: str, licence: License, results: list[Any]) -> Any:
    """``ModelCardData``: base model, licence, tags, datasets and the evaluation results."""
    from huggingface_hub import ModelCardData

    base = base_model_of(run.resolved)
    extra = {"license_name": licence.id, "license_link": licence.link} if licence.hf_id == "other" else {}
    return ModelCardData(
        model_name=name, base_model=base.repo if base else None, license=licence.hf_id, tags=share_tags(run.resolved.get("arch")),
        datasets=[_dataset(run)], pipeline_tag="text-generation", eval_results=eval_results(run, results), **extra,
    )


def _dataset(run: Any) -> str:
    data = (run.slim_eval.get("data") or {}).get("name") or run.prune.get("config", {}).get("data") or "unknown"
    return Path(str(data)).name


def eval_results(run: Any, results: list[Any]) -> list[Any]:
    """NDCG@10 on the run's test users: each GGUF through llama.cpp, then the run's own figures."""
    from huggingface_hub import EvalResult

    config = run.slim_eval.get("config", {})
    common = {"task_type": "text-generation", "task_name": f"{TASK} (1+{config.get('negatives', 19)} {config.get('regime', 'uniform')} candidates)",
              "dataset_type": _dataset(run), "dataset_name": _dataset(run), "dataset_split": "test", "metric_type": "ndcg@10"}
    out = [EvalResult(**common, metric_name=f"NDCG@10, {r.quant} GGUF (llama.cpp)", metric_value=round(r.ndcg["mean"], 4)) for r in results]
    for label, which in (("slim, transformers", "slim"), ("original (zero-shot)", "original"), ("original fine-tuned, same budget", "reference")):
        metric = run.read_json(run.layout.eval_record(which)).get("metrics", {}).get("ndcg@10")
        if metric:
            out.append(EvalResult(**common, metric_name=f"NDCG@10, {label}", metric_value=round(metric["mean"], 4)))
    return out


# --- the body -------------------------------------------------------------------------


def card_body(*, run: Any, name: str, licence: License, results: list[Any], repo: str | None) -> str:
    """The Markdown body of the card."""
    original = run.resolved.get("tag") or run.resolved.get("hf_repo") or run.resolved.get("ref")
    lines = [f"# {name}", ""]
    if licence.attribution:
        lines += [f"**{licence.attribution}**", ""]
    lines += [f"A slim twin of `{original}` for one job, next-item recommendation, made by ollama-slim: it keeps the transformer "
              "layers that matter for the task, folds bridges across the gaps and heals the compact model by fine-tuning.", ""]
    lines += _run_section(name, results, repo) + _kept_section(run) + _quant_section(run, results) + _quality_section(run)
    lines += _licence_section(licence) + _reproduce_section(run)
    return "\n".join(lines) + "\n"


def _run_section(name: str, results: list[Any], repo: str | None) -> list[str]:
    where = f"hf.co/{repo}" if repo else "hf.co/USER/REPO"
    default = next((r.quant for r in results if r.quant == "Q4_K_M"), results[0].quant)
    lines = ["## Run it", "", "```", f"ollama run {where}"]
    lines += [f"ollama run {where}:{r.quant}" for r in results if r.quant != default]
    lines += ["```", "", f"Without a quant tag Ollama takes `{default}`. Ollama reads `template`, `system` and `params` from this repository, "
              "so the chat template, the task's system prompt and the stop tokens are the ones the model was made with. "
              f"Locally: download a GGUF beside the `Modelfile` and `ollama create {name} -f Modelfile`.", ""]
    return lines


def _kept_section(run: Any) -> list[str]:
    selection = run.read_json(run.layout.selection)
    provenance = _provenance(run)
    kept = selection.get("kept") or provenance.get("kept") or []
    bridge = (provenance.get("bridge") or {}).get("kind", "none")
    finetune = provenance.get("finetune") or run.read_json(run.layout.finetune_record)
    recipe = ", ".join(f"{k} {finetune[k]}" for k in ("mode", "steps", "lora_rank", "lr", "batch_size") if k in finetune) or "none"
    return ["## What was kept", "",
            f"- Layers: {len(kept)} of {selection.get('num_layers') or provenance.get('num_layers')} ({', '.join(map(str, kept))}), "
            f"chosen by `{selection.get('strategy', '?')}` selection on validation users.",
            f"- Bridges across the gaps: `{bridge}` (folded into standard weights: a stock {run.resolved.get('arch')} GGUF).",
            f"- Healing: {recipe}, on `{_dataset(run)}` (train split).", ""]


def _provenance(run: Any) -> dict[str, Any]:
    from ollama_slim.slimming.build import read_provenance

    return read_provenance(run.layout.healed_dir)


def _quant_section(run: Any, results: list[Any]) -> list[str]:
    lines = ["## Files and what each quantization costs", "",
             "Each GGUF was loaded by llama.cpp, checked against the transformers model's logits, scored on the run's test users "
             "(NDCG@10 with a 95% bootstrap interval) and timed beside the original in the same run (medians after a warm-up).", "",
             "| file | size | NDCG@10 [95% CI] | prompt tokens/s | generation tokens/s | speed-up prompt / generation |", "|---|---|---|---|---|---|"]
    for r in results:
        ratio = r.speedup or {}
        speed = " / ".join(f"{ratio[k]:.2f}x" if isinstance(ratio.get(k), (int, float)) else "-" for k in ("prompt_tps", "gen_tps"))
        lines.append(f"| `{r.file}` | {r.size_bytes / 2**20:.1f} MiB | {r.ndcg['mean']:.3f} [{r.ndcg['low']:.3f}, {r.ndcg['high']:.3f}] | "
                     f"{_num(r.prompt_tps)} | {_num(r.gen_tps)} | {speed} |")
    return lines + [""]


def _num(value: float | None) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def _quality_section(run: Any) -> list[str]:
    labels = {"original": "original (zero-shot)", "slim": "slim (healed, transformers)", "reference": "original fine-tuned, same budget"}
    quality = {label: run.read_json(run.layout.eval_record(which)) for which, label in labels.items() if run.read_json(run.layout.eval_record(which))}
    lines = ["## Recommendation quality and speed (from the run's report)", ""]
    if quality:
        config = run.slim_eval.get("config", {})
        lines += [f"Test split of `{_dataset(run)}`, {run.slim_eval.get('users')} users, the target among "
                  f"1+{config.get('negatives', 19)} {config.get('regime', 'uniform')} candidates, each scored by its title's length-normalised log-likelihood.", ""]
        lines += quality_table(quality) + [""]
    lines += [f"![{plot.name}]({plot.name})" for plot in run.layout.plots if plot.is_file()]
    return lines + [""]


def _licence_section(licence: License) -> list[str]:
    lines = ["## Licence", "", f"This model is a derivative of its original and carries the original's licence: **{licence.name}**"
             + (f" ({licence.link})" if licence.link else "") + ". See `LICENSE`" + (" and `NOTICE`" if licence.notice else "") + "."]
    if licence.notice:
        lines += ["", licence.notice]
    if licence.name_prefix:
        lines += ["", f"As the licence requires, the model's name begins with \"{licence.name_prefix}\"."]
    return lines + [""]


def _reproduce_section(run: Any) -> list[str]:
    command = run.prune.get("command")
    if not command:
        return []
    return ["## Reproduce", "", "```", command, "```", ""]
