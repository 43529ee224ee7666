"""The run report: ``report.md`` with PNG plots, what a user shares beside the GGUF.

It says plainly what each quality figure compares: a healed slim model against the
untuned original is not "quality retained"; only a reference fine-tuned with the same
budget gives the retained share of lift (design §3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_slim import paths
from ollama_slim.pipeline.layout import RunLayout

METRIC_ROWS = ("ndcg@10", "mrr", "hr@1", "hr@5", "hr@10")
_SPEED_LABELS = {"prompt_tps": "prompt tokens/s", "gen_tps": "generation tokens/s", "size": "file size", "peak_memory": "peak memory"}


@dataclass
class ReportInputs:
    """Everything the report shows, collected by the pipeline from the run directory."""

    run_dir: Path
    model: dict[str, Any]  # resolve.json
    slim_name: str
    data: str
    dataset: dict[str, Any]
    kept: list[int]
    num_layers: int
    bridge: str
    finetune: dict[str, Any]
    quality: dict[str, dict[str, Any]]  # label -> EvalResult.to_json()
    retained: dict[str, Any] | None
    cross_domain: dict[str, dict[str, Any]] = field(default_factory=dict)
    bench: dict[str, Any] | None = None
    export: dict[str, Any] | None = None  # export.json: the llama.cpp acceptance check
    files: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    registered: str | None = None
    notes: list[str] = field(default_factory=list)
    generation: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> GenerationResult.to_json(): asked in chat


def _fmt(interval: dict[str, float] | float) -> str:
    if isinstance(interval, dict):
        return f"{interval['mean']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"
    return f"{interval:.3f}"


def quality_table(quality: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: random, popularity, then each evaluated model, metric by metric."""
    first = next(iter(quality.values()))
    head = "| model | " + " | ".join(METRIC_ROWS) + " |"
    rows = [head, "|" + "---|" * (len(METRIC_ROWS) + 1)]
    rows.append("| random | " + " | ".join(_fmt(first["baselines"]["random"][m]) for m in METRIC_ROWS) + " |")
    rows.append("| popularity (train counts) | " + " | ".join(_fmt(first["baselines"]["popularity"][m]) for m in METRIC_ROWS) + " |")
    for label, result in quality.items():
        rows.append(f"| {label} | " + " | ".join(_fmt(result["metrics"][m]) for m in METRIC_ROWS) + " |")
    return rows


def _quality_statement(inputs: ReportInputs) -> list[str]:
    r = inputs.retained
    if r is None:
        return [
            "**What this compares:** the healed slim model against the *untuned* original. That is not",
            "\"quality retained\": the slim model was fine-tuned and the original was not. Run `prune` with",
            "`--reference` to fine-tune the full model with the same recipe and budget and get the retained",
            "share of lift (design §3).",
        ]
    verdict = "significant" if r["full_lift_significant"] else "NOT significant, so the retained share is no measurement"
    return [
        f"**Quality retained on lift** (slim − random) / (reference − random), NDCG@10: "
        f"**{r['retained']:.2f}** [{r['retained_low']:.2f}, {r['retained_high']:.2f}]; raw ratio slim / reference "
        f"{r['raw']:.2f} [{r['raw_low']:.2f}, {r['raw_high']:.2f}] (flattering: chance is not 0).",
        f"The reference's lift over random is {r['full_lift']:+.3f} [{r['full_lift_low']:+.3f}, {r['full_lift_high']:+.3f}]: {verdict}.",
        "Both were fine-tuned with the same recipe and budget and scored on the same users and candidates.",
    ]


def _speed_lines(bench: dict[str, Any] | None) -> list[str]:
    if not bench:
        return ["No speed benchmark in this run."]
    ratios = bench.get("ratios", {})
    ceilings = bench.get("ceilings", {})
    lines = [f"Backend: `{bench.get('backend', '?')}`, medians of {bench.get('config', {}).get('repeats', '?')} repeats after a warm-up, original and slim in the same run.", ""]
    lines += ["| measure | ratio slim / original | ceiling from parameter counts |", "|---|---|---|"]
    for key, value in ratios.items():
        ceiling = ceilings.get(key)
        shown = f"{value:.2f}x" if isinstance(value, (int, float)) else "-"
        lines.append(f"| {_SPEED_LABELS.get(key, key)} | {shown} | {f'{ceiling:.2f}x' if isinstance(ceiling, (int, float)) else '-'} |")
    return lines


def speed_quality_plot(inputs: ReportInputs, out: Path) -> Path | None:
    """Generation tokens/s against NDCG@10 for original and slim (PNG), if both are known."""
    speeds = _generation_speeds(inputs.bench)
    points = {label: (speeds.get(key), inputs.quality.get(label, {}).get("metrics", {}).get("ndcg@10", {}).get("mean")) for label, key in (("original (zero-shot)", "original"), ("slim (healed)", "slim"))}
    points = {k: v for k, v in points.items() if None not in v}
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for label, (x, y) in points.items():
        ax.scatter([x], [y], s=60)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6))
    first = next(iter(inputs.quality.values()))
    ax.axhline(first["baselines"]["random"]["ndcg@10"], ls="--", c="grey", label="random")
    ax.axhline(first["baselines"]["popularity"]["ndcg@10"]["mean"], ls=":", c="grey", label="popularity")
    ax.set_xlabel("generation tokens/s")
    ax.set_ylabel("NDCG@10 (test)")
    ax.set_title("speed vs quality")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with paths.atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out


def _generation_speeds(bench: dict[str, Any] | None) -> dict[str, float]:
    if not bench:
        return {}
    out = {}
    for key in ("original", "slim"):
        entry = bench.get(key, {})
        value = entry.get("gen_tps")
        if isinstance(value, dict):
            value = value.get("median")
        if value is not None:
            out[key] = float(value)
    return out


def render(inputs: ReportInputs) -> str:
    """The Markdown text of the report."""
    m, layout = inputs.model, RunLayout(inputs.run_dir)
    kept = ", ".join(map(str, inputs.kept))
    lines = [
        f"# ollama-slim report: {m.get('tag') or m.get('ref')} → {inputs.slim_name}", "",
        "## Model and data", "",
        f"- Original: `{m.get('tag') or m.get('ref')}` ({m.get('arch')}, {m.get('num_layers')} layers, {m.get('num_params', 0) / 1e6:.1f}M parameters), "
        f"Hugging Face twin `{m.get('hf_repo') or '-'}`, weights from {m.get('source')} (`{m.get('origin')}`).",
        f"- Data: `{inputs.data}` — {inputs.dataset.get('users')} users, {inputs.dataset.get('items')} items, {inputs.dataset.get('interactions')} interactions "
        f"(leave-one-out; layer scores on train, selection on validation, figures below on test).",
        f"- Kept layers ({len(inputs.kept)} of {inputs.num_layers}): {kept}; bridge: {inputs.bridge}.",
        f"- Healing: {_describe_finetune(inputs.finetune)}.",
        "", f"![layer scores]({layout.scores_png.name})", "", f"![selection curve]({layout.selection_png.name})", "",
        "## Recommendation quality (test split)", "",
        *quality_table(inputs.quality), "", *_quality_statement(inputs), "",
    ]
    if inputs.cross_domain:
        lines += ["## Cross-domain check", "", *quality_table(inputs.cross_domain), ""]
    if inputs.generation:
        lines += ["## Asked in chat (as `ollama run` asks it)", "", *generation_lines(inputs.generation), ""]
    lines += ["## Speed", "", *_speed_lines(inputs.bench), "", f"![speed vs quality]({layout.speed_quality_png.name})", ""]
    lines += ["## Export check (llama.cpp against transformers)", "", *_export_lines(inputs.export), ""]
    lines += _files_and_timings(inputs)
    lines += ["## Reproduce", "", "```", *inputs.commands, "```", ""]
    if inputs.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in inputs.notes], ""]
    return "\n".join(lines)


GENERATION_COLUMNS = (("title", "a catalogue title"), ("new_title", "a title the user did not list"), ("target", "the held-out next item"),
                      ("target_or_top10", "the target, or ranked top-10"))


def _distinct_titles(result: dict[str, Any]) -> str:
    """A result's distinct titles not listed per user, "-" for one recorded before it was measured."""
    value = result.get("distinct_titles")
    return "-" if value is None else f"{value:.2f}"


def generation_lines(generation: dict[str, dict[str, Any]]) -> list[str]:
    """The chat measure: shares of users whose greedy answer is a catalogue title..., distinct answers, and example conversations."""
    first = next(iter(generation.values()))
    config = first.get("config", {})
    lines = [f"Each of {first.get('users')} test users asks the GGUF in one of the phrasings {', '.join(config.get('phrasings', []))} "
             f"(never used in healing), with the Modelfile's TEMPLATE and SYSTEM; greedy answers of at most {config.get('max_tokens')} tokens, "
             "matched to the catalogue (normalised; a year, when given, must be right). Shares of users, 95% intervals:", "",
             "| model | " + " | ".join(name for _, name in GENERATION_COLUMNS) + " | distinct answers | distinct titles not listed | most common answer |",
             "|---|" + "---|" * (len(GENERATION_COLUMNS) + 3)]
    for label, result in generation.items():
        figures = result.get("figures", {})
        cells = [_fmt(figures[key]) if key in figures else "-" for key, _ in GENERATION_COLUMNS]
        top = result.get("top_answer", {})
        answer = str(top.get("answer", "")).replace("|", "\\|").replace("\n", " ")[:40]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {result.get('distinct', 0):.2f} | {_distinct_titles(result)} | `{answer}` ({top.get('users', 0)} users) |")
    examples = next((r.get("examples") for label, r in generation.items() if label.startswith("slim")), None) or []
    for n, example in enumerate(examples, start=1):
        said = str(example.get("message", "")).replace("\n", " / ")
        verdict = ("the target" if example.get("target") else "a catalogue title the user did not list" if example.get("new_title")
                   else "a title the user listed" if example.get("title") else "not a catalogue title")
        lines += ["", f"Example {n} (slim): user: \"{said}\" -> answer: \"{example.get('answer', '')}\": {verdict} "
                      f"(the held-out next item: {example.get('target_title', '?')})"]
    return lines


def _export_lines(export: dict[str, Any] | None) -> list[str]:
    """The acceptance figures of the GGUF: logit difference, top-1 and top-5 agreement."""
    check = (export or {}).get("check")
    if not check:
        return ["No acceptance check in this run."]
    n = check["n_prompts"]
    return [
        "| outtype | max abs logit difference / max abs logit | top-1 agreement | top-5 agreement | passed |", "|---|---|---|---|---|",
        f"| `{export.get('outtype', '?')}` | {check['rel_diff']:.2g} ({check['max_abs_diff']:.3g} / {check['max_abs_logit']:.3g}) | "
        f"{check['top1_agree']}/{n} | {check['top5_agree']}/{n} | {'yes' if check['passed'] else 'no'} |",
        "", f"The same {n} prompts through both, logits of every position compared.",
    ]


def _describe_finetune(info: dict[str, Any]) -> str:
    if not info:
        return "none"
    shown = ("mode", "steps", "lr", "batch_size", "distill_from", "examples", "final_loss") + (() if info.get("mode") == "full" else ("lora_rank",))
    parts = [f"{k}={v}" for k, v in info.items() if k in shown]
    if "answers" in info:
        parts.append(info["answers"])
    if "ranking" in info:
        parts.append(f"ranking over {info['ranking']}")
    parts += [info[key] for key in ("teacher", "holdout") if key in info]
    return ", ".join(parts) or "done"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _files_and_timings(inputs: ReportInputs) -> list[str]:
    lines = ["## Files", "", "| file | size |", "|---|---|"]
    lines += [f"| `{name}` | {_size(size)} |" for name, size in inputs.files.items()]
    if inputs.registered:
        lines += ["", f"Registered in Ollama as `{inputs.registered}`: `ollama run {inputs.registered}`."]
    total = sum(inputs.timings.values()) or 1.0
    lines += ["", "## Time per stage", "", "| stage | seconds | share |", "|---|---|---|"]
    lines += [f"| {stage} | {sec:.1f} | {100 * sec / total:.0f}% |" for stage, sec in inputs.timings.items()]
    return lines + [""]


def write_report(inputs: ReportInputs) -> Path:
    """Write ``report.md`` (and ``speed_quality.png``) into the run directory, atomically."""
    layout = RunLayout(inputs.run_dir)
    speed_quality_plot(inputs, layout.speed_quality_png)
    return paths.write_text(layout.report, render(inputs))
