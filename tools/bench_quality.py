"""Quality benchmark of issue 7 (design §3 protocol): is the slim model as good as the full one?

Models, all scored on the same seeded test users and 1+19 candidates, in two negative
regimes (uniform, popularity-proportional):
  zero-shot full | full fine-tuned (the reference) | slim keep-K plain drop, no healing |
  slim keep-K bridged + healed | slim keep-K bridged + healed + distilled from the full fine-tuned model
beside the random and popularity baselines, and each healed slim model again as it ships: exported
to GGUF at ``--outtype`` (q8_0, the default of ``prune``) and scored through llama.cpp on the
same users and candidates. Slim and full are fine-tuned with the same
recipe and budget. Quality retained = (slim - random) / (full - random) on NDCG@10 with a
paired bootstrap interval, the raw ratio beside it. Each model's LLM score is also
combined with the log-popularity prior, ``score + w log(1 + train count)``, with ``w``
chosen on validation users (same regime), and compared with popularity alone.

Every stage caches its output under OUT/work, so a rerun continues where it stopped.

Full configuration (documented command; ~90 minutes on one GPU, far more on 2 CPU cores):
    python tools/bench_quality.py --test-users 500 --valid-users 200 --steps 300 --batch-size 8 --out bench/quality
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ollama_slim.recsys.data import load_dataset  # noqa: E402
from ollama_slim.recsys.evaluate import EvalConfig, popularity_scores, prepare_cases, score_cases  # noqa: E402
from ollama_slim.recsys.prompt import TASK_FORMATS  # noqa: E402
from ollama_slim.recsys.metrics import bootstrap_interval, paired_bootstrap_diff, per_user_metrics, random_baseline  # noqa: E402
from ollama_slim.recsys.retained import retained_on_lift  # noqa: E402
from ollama_slim.ollama.modelfile import chat_prompt_of  # noqa: E402
from ollama_slim.slimming.finetune.config import FinetuneConfig  # noqa: E402

DEFAULT_KEPT = "0,1,2,3,4,11,19,24,28,29"
REGIMES = ("uniform", "popularity")
PRIOR_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def parser(description: str = __doc__) -> argparse.ArgumentParser:
    """The benchmark's options: model, data, bridge, healing recipe, scoring (shared with bench_keep_curve)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2:135m")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/amazon-electronics-2014"))
    p.add_argument("--kept", default=DEFAULT_KEPT, help="kept layers (comma-separated), or STRATEGY:K to select K on validation users (e.g. ranked:8)")
    p.add_argument("--select-users", type=int, default=32, help="validation users a STRATEGY:K selection measures on")
    p.add_argument("--select-data", action="append", default=[], metavar="DIR_OR_NAME",
                   help="another data set whose validation users a STRATEGY:K selection measures too (--select-users from each; repeatable)")
    p.add_argument("--bridge", default="mlp-fold")
    p.add_argument("--calib-tokens", type=int, default=4096, help="train-prompt tokens the bridges are fitted on (shared evenly among --calib-data)")
    p.add_argument("--calib-data", action="append", default=[], metavar="DIR_OR_NAME",
                   help="a data set whose train prompts calibrate the bridges (repeatable; default --data alone): e.g. --data and --cross-data both")
    p.add_argument("--calib-own-text", action="store_true",
                   help="the original model's own text (sequences it samples, seeded) is one more share of --calib-tokens: every other domain, no other data set")
    p.add_argument("--test-users", type=int, default=500)
    p.add_argument("--test-seed", type=int, default=0, metavar="S",
                   help="seed of the test users' draw and their candidates (here and under --cross-data). Another seed scores the "
                        "models a work directory already holds on a fresh draw, to confirm a recipe chosen on the first: nothing is "
                        "retrained, the scores are cached apart (the chat asks of --generate-users are that draw's users too)")
    p.add_argument("--valid-users", type=int, default=200,
                   help="users of the valid split scored to choose the log-popularity prior's weight (0: no prior columns, the test split only)")
    p.add_argument("--history", type=int, default=5)
    p.add_argument("--title-words", type=int, default=10)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--distill-weight", type=float, default=0.5)
    p.add_argument("--rank-negatives", type=int, default=7, metavar="K", help="healing: rank the target among K seeded never-seen items (0: title loss only)")
    p.add_argument("--rank-weight", type=float, default=0.5, metavar="W", help="healing: share of the ranking loss, in [0, 1]")
    p.add_argument("--rank-regimes", default="uniform", help="healing: negatives drawn uniformly and/or by popularity (comma-separated; both: one regime per draw)")
    p.add_argument("--popularity-debias", type=float, default=0.0, metavar="B",
                   help="healing: weight each title loss by its item's train count^-B (0: every title alike), so that the "
                        "healing does not learn the popularity prior that popularity-weighted negatives punish")
    p.add_argument("--full", action="store_true", help="healing: train every weight instead of LoRA adapters")
    p.add_argument("--slim-from", default="original", choices=("original", "teacher"),
                   help="the weights the slim models are cut from: the original, or the full model fine-tuned with the recipe "
                        "(prune after fine-tuning; bridges fitted on its hidden states)")
    p.add_argument("--listwise-weight", type=float, default=0.0, metavar="W", help="distilled row: KL between the teacher's and the student's distributions over the candidates")
    p.add_argument("--distill-temperature", type=float, default=1.0, help="distilled row: temperature of the listwise KL")
    p.add_argument("--align-weight", type=float, default=0.0, metavar="W", help="distilled row: hidden-state alignment with the teacher's layers")
    p.add_argument("--align-kind", default="cosine", help="distilled row: cosine or nmse")
    p.add_argument("--align-at", default="gap-end", help="distilled row: kept (the layer's original index) or gap-end")
    p.add_argument("--general-weight", type=float, default=0.0,
                   help="distilled row: the teacher's KL (and alignment) on text it wrote itself, general knowledge the task's prompts lack (0: off)")
    p.add_argument("--general-texts", type=int, default=256, help="distilled row: sequences the teacher writes for --general-weight")
    p.add_argument("--general-tokens", type=int, default=64, help="distilled row: tokens in each of them")
    p.add_argument("--teacher-cache", action="store_true", help="distilled row: the teacher's outputs cached on disk (draws negatives once per example)")
    p.add_argument("--early-stop-patience", type=int, default=0, metavar="N", help="healing: stop after N validation measures without a better one (0: every step)")
    p.add_argument("--eval-every", type=int, default=50, help="healing: steps between validation measures")
    p.add_argument("--val-measure", default="ndcg", help="healing: the early-stopping measure (ndcg: uniform negatives; ndcg-both: both regimes; answer: distinct new titles in greedy answers)")
    p.add_argument("--checkpoint-every", type=int, default=25, metavar="N", help="healing: steps between resumable checkpoints (a full model's is weights and optimizer state)")
    p.add_argument("--val-users", type=int, default=FinetuneConfig.val_users, metavar="N", help="healing: validation users of the early-stopping measure")
    p.add_argument("--slim-steps", type=int, default=None, metavar="N",
                   help="healing steps of the slim models (default --steps: equal examples; about steps x layers / kept: equal compute)")
    p.add_argument("--slim-lr", type=float, default=None, metavar="LR",
                   help="peak learning rate of the slim models' healing (default --lr: the full model's)")
    p.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16", "fp16"),
                   help="healing: accelerate's mixed precision (auto: bf16 where the hardware has bf16 matmuls, no elsewhere)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="dtype the models are loaded in for scoring (auto: bfloat16 where the hardware has bf16 matmuls, float32 elsewhere)")
    p.add_argument("--device-map", default=None, help="accelerate device map for scoring, e.g. cuda or auto (default: CPU)")
    p.add_argument("--threads", type=_threads, default=None, metavar="N",
                   help="CPU threads of torch (healing, scoring) and llama.cpp (the GGUF rows, the chat asks, the keep curve's speed runs); "
                        "default every core, fewer on a busy machine")
    p.add_argument("--cross-data", default=None, metavar="DATA",
                   help="also score every model on this data set's test users (cross-domain: retained against the full model fine-tuned on --data)")
    p.add_argument("--cross-users", type=int, default=None, metavar="N", help="test users of --cross-data (default --test-users)")
    p.add_argument("--outtype", default="q8_0", help="also score each healed slim model as the GGUF it ships as, through llama.cpp (none: skip)")
    p.add_argument("--task-format", default="completion", choices=TASK_FORMATS,
                   help="the prompt of healing and scoring: completion (a raw listing) or chat (as `ollama run` renders it: "
                        "the model's template and the task's system message, each title as the answer, closed by end-of-turn)")
    p.add_argument("--answers", type=int, default=1, metavar="N", help="healing: each prompt also trained on the user's next N-1 train items as answers")
    p.add_argument("--generate-users", type=int, default=0, metavar="N",
                   help="also ask N test users in chat, as `ollama run` does: each GGUF row and the full models (exported at --outtype), "
                        "greedy through llama.cpp; shares of catalogue titles, titles not listed, targets and distinct answers (0: off)")
    p.add_argument("--skip", default="", help="leave out: zero-shot, plain-drop, bridged-unhealed, healed, distilled (comma-separated)")
    p.add_argument("--also", action="append", default=[], metavar="NAME=PATH",
                   help="also score PATH (a model directory, or a GGUF through llama.cpp) as row NAME beside the recipe's, on the same "
                        "users and candidates, against the same reference: e.g. a second `finetune` stage of a row's model (repeatable; "
                        "not healed by the benchmark; a GGUF is asked in chat too with --generate-users; scores are cached under NAME)")
    p.add_argument("--out", type=Path, default=Path("bench-quality"))
    return p


def _threads(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n} (omit it to use every core)")
    return n


def use_threads(args: argparse.Namespace) -> None:
    """torch on ``--threads`` (llama.cpp gets them where it is made)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.generate_users < 0 or args.answers < 1:
        p.error("--generate-users cannot be negative and --answers must be at least 1")
    if args.generate_users and args.outtype == "none":
        p.error("--generate-users asks the GGUFs the rows ship as: give an --outtype (e.g. q8_0)")
    try:
        also = [name for name, _ in also_pairs(args.also)]
    except ValueError as e:
        p.error(str(e))
    taken = sorted({name for name in also if name in recipe_rows(args) or also.count(name) > 1})
    if taken:
        p.error(f"--also {taken[0]!r} names a row twice (the recipe's rows: {'; '.join(recipe_rows(args))}); give it another name")
    return resolve_precision(args)


def resolve_precision(args: argparse.Namespace) -> argparse.Namespace:
    """``auto`` precisions made concrete for this machine, so that the recipe records what ran."""
    from ollama_slim.models.modeling import auto_dtype, auto_mixed_precision

    args.dtype = auto_dtype(args.dtype, args.device_map)
    args.mixed_precision = auto_mixed_precision(args.mixed_precision, args.device_map)
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- models -------------------------------------------------------------------------------


def build_slim(args: argparse.Namespace, work: Path, bridge: str, *, kept: list[int] | None = None, name: str | None = None,
               source: Path | None = None) -> Path:
    """The compact model keeping ``kept`` (default ``--kept``) of ``source`` (default the original)
    with ``bridge`` fitted on train calibration data, in ``work``/``name`` (default ``slim-<bridge>``; cached)."""
    from ollama_slim.slimming import bridges as br
    from ollama_slim.slimming.build import save_compact, slice_model
    from ollama_slim.models.modeling import load
    from ollama_slim.models.sources import resolve

    out = work / (name or f"slim-{bridge}")
    if out.is_dir():
        return out
    resolved = resolve(args.model)
    whole, tokenizer = load(source or resolved.model_dir)
    kept = kept or kept_layers(args, work)
    compact = slice_model(whole, kept)
    datasets = [load_dataset(name) for name in (args.calib_data or [args.data])]
    calibration = br.mixed_calibration(tokenizer=tokenizer, datasets=datasets, max_tokens=args.calib_tokens, history=args.history,
                                       own_text_of=whole if args.calib_own_text else None)
    summary = br.BRIDGES[bridge].fit_and_fold(original=whole, compact=compact, kept=kept, calibration=calibration)
    cut_from = {"ref": args.model} | ({"fine_tuned": str(source)} if source else {})
    save_compact(compact, tokenizer, out, provenance={"source": cut_from, "num_layers": resolved.num_layers, "kept": kept, "bridge": summary})
    return out


def slim_source(args: argparse.Namespace, teacher: Path) -> Path | None:
    """What ``build_slim`` cuts from under ``--slim-from``: the full fine-tuned ``teacher``, or ``None`` (the original)."""
    return teacher if args.slim_from == "teacher" else None


def select_path(args: argparse.Namespace, work: Path, *, strategy: str, target: int) -> dict[int, list[int]]:
    """``{size: kept layers}`` along one ``strategy`` selection to ``target`` layers on validation
    users (cached in ``work``/select; the path of ``ranked`` and ``forward`` holds every smaller set)."""
    from ollama_slim.slimming.importance.stage import default_run_dir
    from ollama_slim.slimming.selection import SelectConfig, select_layers

    also = tuple(map(str, args.select_data))
    run_dir = work / "select" / "+".join(default_run_dir(d).name for d in also)  # a data set's file-name form, as `score` names runs
    cache = run_dir / f"{strategy}-{target}.json"
    if cache.is_file():
        return {int(k): v for k, v in json.loads(cache.read_text()).items()}
    log(f"selecting layers ({strategy}) to {target}" + (f" on {args.data} and {', '.join(also)}" if also else ""))
    result = select_layers(SelectConfig(source=args.model, keep=target, strategy=strategy, data=args.data, also_data=also, val_users=args.select_users,
                                        run_dir=run_dir, dtype=args.dtype, device_map=args.device_map), progress=log)
    path = {len(step.layers): sorted(step.layers) for step in result.steps}
    cache.write_text(json.dumps(path) + "\n")
    return path


def kept_layers(args: argparse.Namespace, work: Path) -> list[int]:
    """``--kept`` as layer indices: given, or selected (``STRATEGY:K``)."""
    if ":" not in args.kept:
        return [int(i) for i in args.kept.split(",")]
    strategy, keep = args.kept.split(":", 1)
    return select_path(args, work, strategy=strategy, target=int(keep))[int(keep)]


def heal_config(args: argparse.Namespace, model_dir: Path, out: Path, *, teacher: Path | None = None, slim: bool = False):
    """The benchmark's healing recipe for ``model_dir``: the same for full and slim models, the
    teacher's terms (title KD, listwise KD, alignment) only on the distilled row."""
    steps = args.slim_steps if slim and args.slim_steps else args.steps
    lr = args.slim_lr if slim and args.slim_lr else args.lr
    distill = {}
    if teacher is not None:
        distill = dict(distill_from=str(teacher), distill_weight=args.distill_weight, distill_listwise_weight=args.listwise_weight,
                       distill_temperature=args.distill_temperature, align_weight=args.align_weight, align_kind=args.align_kind,
                       align_at=args.align_at, teacher_cache=args.teacher_cache, general_weight=args.general_weight, general_texts=args.general_texts,
                       general_tokens=args.general_tokens, fixed_negatives=args.teacher_cache and args.listwise_weight > 0)
    return FinetuneConfig(
        model=str(model_dir), data=args.data, out_dir=out, steps=steps, lora_rank=args.lora_rank, full=args.full, lr=lr,
        batch_size=args.batch_size, history=args.history, title_words=args.title_words, checkpoint_every=args.checkpoint_every,
        rank_negatives=args.rank_negatives, rank_weight=args.rank_weight, rank_regimes=tuple(args.rank_regimes.split(",")),
        popularity_debias=args.popularity_debias, early_stop_patience=args.early_stop_patience, eval_every=args.eval_every, val_measure=args.val_measure,
        val_users=args.val_users, task_format=args.task_format, answers=args.answers,
        mixed_precision=args.mixed_precision, **distill,
    )


def heal(args: argparse.Namespace, model_dir: Path, out: Path, *, teacher: Path | None = None, slim: bool = False) -> Path:
    """Fine-tune ``model_dir`` with the benchmark's recipe (cached; resumes if interrupted).
    What the run did (steps taken, best step, teacher cost) goes to ``out``/heal.json."""
    from ollama_slim.slimming.finetune import finetune

    if (out / "slim.json").is_file():
        return out
    began = time.perf_counter()
    result = finetune(heal_config(args, model_dir, out, teacher=teacher, slim=slim),
                      on_step=lambda p: log(f"{out.name} {p.describe()}") if p.step % 10 == 0 or p.measured is not None else None)
    seconds = time.perf_counter() - began
    log(f"{out.name}: {result.steps} steps in {seconds:.0f}s, loss {result.losses[0]:.3f} -> {result.final_loss:.3f}")
    summary = {"steps": result.steps, "best_step": result.best_step, "stopped_early": result.stopped_early, "seconds": round(seconds, 1),
               "validation": result.validation, "teacher": result.teacher}
    (out / "heal.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out


def models(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """``{key: model directory}`` in table order, building and healing what is missing."""
    from ollama_slim.models.sources import resolve

    rows = row_names(args)
    full = Path(resolve(args.model).model_dir)
    out = {rows["zero-shot"]: full} if "zero-shot" in rows else {}
    out[rows["reference"]] = teacher = heal(args, full, work / "ft-full")
    source = slim_source(args, teacher)
    if "plain-drop" in rows:
        out[rows["plain-drop"]] = build_slim(args, work, "none", source=source)
    slim = build_slim(args, work, args.bridge, source=source)
    if "bridged-unhealed" in rows:
        out[rows["bridged-unhealed"]] = slim
    if "healed" in rows:
        out[rows["healed"]] = heal(args, slim, work / f"slim-{args.bridge}-healed", slim=True)
    if "distilled" in rows:
        out[rows["distilled"]] = heal(args, slim, work / f"slim-{args.bridge}-distilled", teacher=teacher, slim=True)
    return out


def row_names(args: argparse.Namespace) -> dict[str, str]:
    """``{part: row name}`` of the recipe's rows this run has (``--skip`` leaves parts out; the
    reference is always there), in table order."""
    skip = set(filter(None, args.skip.split(",")))
    names = {"zero-shot": "zero-shot full", "reference": "full fine-tuned", "plain-drop": "slim plain drop, no healing",
             "bridged-unhealed": f"slim {args.bridge}, no healing", "healed": f"slim {args.bridge} + healed",
             "distilled": f"slim {args.bridge} + healed + distilled"}
    return {part: name for part, name in names.items() if part == "reference" or part not in skip}


def gguf_row(key: str, args: argparse.Namespace) -> str:
    """The row name of ``key``'s model exported at ``--outtype`` and scored through llama.cpp."""
    return f"{key} ({args.outtype} GGUF, llama.cpp)"


def recipe_rows(args: argparse.Namespace) -> list[str]:
    """Every row name the recipe gives this run: its models and, with an ``--outtype``, the healed slim models' GGUFs."""
    names = list(row_names(args).values())
    return names + ([gguf_row(key, args) for key in names if ships(key)] if args.outtype != "none" else [])


def ships(key: str) -> bool:
    """Whether row ``key`` is a healed slim model, which the benchmark also scores as the GGUF it ships as."""
    return key.startswith("slim") and "healed" in key


# --- scoring ------------------------------------------------------------------------------


def eval_config(args: argparse.Namespace, *, split: str, regime: str) -> EvalConfig:
    users, seed = (args.test_users, args.test_seed) if split == "test" else (args.valid_users, 0)
    return EvalConfig(data=args.data, split=split, users=users, regime=regime, history=args.history, title_words=args.title_words,
                      task_format=args.task_format, threads=args.threads, seed=seed)


def _joint_cases(dataset, per_regime: list[list]) -> list:
    """One case per user holding every regime's candidates side by side: the prompt runs once for all."""
    from ollama_slim.recsys.evaluate import Case

    users = [[c.example.user for c in cases] for cases in per_regime]
    assert all(u == users[0] for u in users), "regimes must draw the same users"
    return [Case(group[0].example, tuple(item for case in group for item in case.candidates)) for group in zip(*per_regime)]


def also_pairs(values: list[str]) -> list[tuple[str, Path]]:
    """``[(NAME, PATH)]`` of ``--also NAME=PATH`` values; ValueError on a bad form or a missing path."""
    pairs = []
    for also in values:
        name, _, path = also.partition("=")
        if not name.strip() or not path:
            raise ValueError(f"--also {also!r}: give NAME=PATH, e.g. --also 'slim + answers=runs/stage2/healed'")
        if not Path(path).exists():
            raise ValueError(f"--also {also!r}: {path} does not exist; give a model directory or a .gguf file")
        pairs.append((name.strip(), Path(path)))
    return pairs


def also_rows(args: argparse.Namespace, found: dict[str, Path]) -> dict[str, Path]:
    """``{NAME: PATH}`` of ``--also``: models made apart from the recipe, scored beside its rows."""
    rows = dict(also_pairs(args.also))  # names checked against the recipe's by parse_args
    assert not rows.keys() & found.keys(), "an --also name is a row of the recipe"
    return rows


def shipped(args: argparse.Namespace, found: dict[str, Path], work: Path) -> dict[str, Path]:
    """``{"<key> (<outtype> GGUF, llama.cpp)": GGUF}`` for every healed slim model, exported (and checked) once."""
    if args.outtype == "none":
        return {}
    return {gguf_row(key, args): export(args, Path(model_dir), work)
            for key, model_dir in found.items() if ships(key)}


def export(args: argparse.Namespace, model_dir: Path, work: Path, *, name: str | None = None) -> Path:
    """``model_dir`` as a GGUF at ``--outtype``, named ``name`` (default the directory's; exported and
    checked in llama.cpp once; cached)."""
    from ollama_slim.gguf.export import ExportConfig, export_gguf

    gguf = work / "gguf" / f"{name or model_dir.name}-{args.outtype}.gguf"
    if not gguf.is_file():
        gguf.parent.mkdir(parents=True, exist_ok=True)
        export_gguf(ExportConfig(model_dir=model_dir, outtype=args.outtype, out=gguf))
        log(f"exported {model_dir.name} to {gguf.name}")
    return gguf


def _scorer(model: Path, args: argparse.Namespace):
    """transformers for a model directory, llama.cpp for a GGUF (what ships)."""
    if str(model).endswith(".gguf"):
        from ollama_slim.recsys.scorers import LlamaCppScorer, ScorerOptions

        return LlamaCppScorer(Path(model), options=ScorerOptions(threads=args.threads))
    from ollama_slim.models.modeling import LoadOptions, load
    from ollama_slim.recsys.scorers import TransformersScorer

    model, tokenizer = load(model, LoadOptions(dtype=args.dtype, device_map=args.device_map))
    return TransformersScorer(model=model, tokenizer=tokenizer, batch=20 * len(REGIMES))


def _file_key(key: str) -> str:
    """A row's name as a file name."""
    return key.replace(" ", "_").replace(",", "").replace("+", "plus").replace("(", "").replace(")", "")


def scored_splits(args: argparse.Namespace) -> tuple[str, ...]:
    """The splits every model is scored on: the valid split too when the prior's weight is chosen on it."""
    return ("test", "valid") if args.valid_users > 0 else ("test",)


def scores_of(key: str, model_dir: Path, args: argparse.Namespace, dataset, work: Path, *, splits: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """``{"<split>/<regime>": scores [U, 20]}`` of one model, a directory or a GGUF, on ``splits``
    (default :func:`scored_splits`; cached as .npz)."""
    splits = scored_splits(args) if splits is None else splits
    cache = work / ("scores" if args.test_seed == 0 else f"scores-test-seed{args.test_seed}") / f"{_file_key(key)}.npz"
    if cache.is_file():
        return dict(np.load(cache))
    scorer = _scorer(model_dir, args)
    chat = chat_prompt_of(model_dir) if args.task_format == "chat" else None  # a GGUF's own template, as Ollama reads it
    out = {}
    for split in splits:
        began = time.perf_counter()
        config = eval_config(args, split=split, regime=REGIMES[0])
        both = _joint_cases(dataset, [prepare_cases(dataset, eval_config(args, split=split, regime=r)) for r in REGIMES])
        joint, _ = score_cases(scorer, dataset, both, config, prompt=config.prompt_config(chat),
                               progress=lambda done, total: log(f"{key} {split}: {done}/{total} users") if done % 100 == 0 and done < total else None)
        for n, regime in enumerate(REGIMES):  # columns of regime n: its 20 candidates, target first
            out[f"{split}/{regime}"] = joint[:, 20 * n : 20 * (n + 1)]
        log(f"scored {key} {split} ({', '.join(REGIMES)}) in {time.perf_counter() - began:.0f}s")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def with_prior(llm: np.ndarray, pop: np.ndarray, weight: float) -> np.ndarray:
    """LLM score + ``weight`` x log(1 + train count): [U, C]."""
    return llm + weight * np.log1p(pop)


def choose_weight(valid: np.ndarray, valid_pop: np.ndarray) -> float:
    """The prior weight with the best validation NDCG@10 (ties: the smallest)."""
    means = [per_user_metrics(with_prior(valid, valid_pop, w))["ndcg@10"].mean() for w in PRIOR_WEIGHTS]
    return PRIOR_WEIGHTS[int(np.argmax(means))]


# --- the table ----------------------------------------------------------------------------


def _iv(values: np.ndarray) -> dict:
    return bootstrap_interval(values).to_json()


def regime_report(regime: str, scores: dict[str, dict[str, np.ndarray]], args: argparse.Namespace, dataset) -> dict:
    """Metrics of every model in one regime, baselines, prior combination and retained."""
    pops = {split: popularity_scores(dataset, prepare_cases(dataset, eval_config(args, split=split, regime=regime))) for split in scored_splits(args)}
    pop_test = per_user_metrics(pops["test"])
    reference = per_user_metrics(scores["full fine-tuned"][f"test/{regime}"])["ndcg@10"]
    random = random_baseline(20)["ndcg@10"]
    rows = {}
    for key, by_split in scores.items():
        test = per_user_metrics(by_split[f"test/{regime}"])
        row = {"ndcg@10": _iv(test["ndcg@10"]), "hr@10": float(test["hr@10"].mean()), "mrr": float(test["mrr"].mean())}
        if "valid" in pops:
            weight = choose_weight(by_split[f"valid/{regime}"], pops["valid"])
            combined = per_user_metrics(with_prior(by_split[f"test/{regime}"], pops["test"], weight))["ndcg@10"]
            row |= {"prior_weight": weight, "ndcg@10_with_prior": _iv(combined),
                    "with_prior_minus_popularity": paired_bootstrap_diff(combined, pop_test["ndcg@10"]).to_json()}
        if key != "full fine-tuned":
            row["retained_vs_full_finetuned"] = retained_on_lift(test["ndcg@10"], reference, random=random).to_json()
        rows[key] = row
    out = {"random_ndcg@10": random, "popularity": {"ndcg@10": _iv(pop_test["ndcg@10"]), "hr@10": float(pop_test["hr@10"].mean())}, "models": rows}
    if "zero-shot full" in scores:
        out["full_finetuned_minus_zero_shot"] = paired_bootstrap_diff(reference, per_user_metrics(scores["zero-shot full"][f"test/{regime}"])["ndcg@10"]).to_json()
    return out


def _fmt(iv: dict) -> str:
    return f"{iv['mean']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]"


def _rank_recipe(cfg: dict) -> str:
    """The healing loss in words: title loss alone, or mixed with the ranking loss."""
    debias = f"title loss weighted by train count^-{cfg['popularity_debias']:g}" if cfg.get("popularity_debias") else ""
    if not cfg["rank_negatives"]:
        return debias or "title loss only"
    regimes = cfg.get("rank_regimes", "uniform").replace(",", " and ")
    ranking = f"ranking loss over 1+{cfg['rank_negatives']} candidates (weight {cfg['rank_weight']}, {regimes} negatives)"
    return f"{debias}, {ranking}" if debias else ranking


def _distill_recipe(cfg: dict) -> str:
    """The distilled row's teacher terms in words."""
    terms = [f"title-token KD (weight {cfg['distill_weight']})"]
    if cfg.get("listwise_weight"):
        terms.append(f"listwise KD over the candidates (weight {cfg['listwise_weight']}, T {cfg['distill_temperature']})")
    if cfg.get("align_weight"):
        terms.append(f"{cfg['align_kind']} hidden-state alignment at {cfg['align_at']} (weight {cfg['align_weight']})")
    if cfg.get("general_weight"):
        terms.append(f"the teacher's KL{' and alignment' if cfg.get('align_weight') else ''} on {cfg['general_texts']} texts of "
                     f"{cfg['general_tokens']} tokens it wrote itself (weight {cfg['general_weight']})")
    return "Distilled from the full fine-tuned model: " + ", ".join(terms) + "."


def _budget(cfg: dict, kept: int) -> str:
    """Equal examples or equal compute: the slim model is about layers/kept times cheaper a step."""
    slim_steps = cfg.get("slim_steps") or cfg["steps"]
    if slim_steps == cfg["steps"]:
        budget = f"Budget: equal examples ({cfg['steps']} steps each; the slim model spends about {kept}/N of the full model's compute)."
    else:
        budget = f"Budget: the full model {cfg['steps']} steps, the slim models {slim_steps} steps (equal compute is about steps x N / {kept})."
    if cfg.get("slim_lr"):
        budget += f" The slim models' peak learning rate is {cfg['slim_lr']:g} (the full model's {cfg['lr']:g})."
    if cfg.get("early_stop_patience"):
        measure = {"ndcg": "NDCG@10 (uniform negatives)", "ndcg-both": "NDCG@10 (mean of uniform and popularity negatives)",
                   "answer": "distinct new catalogue titles per user in greedy answers"}.get(cfg["val_measure"], cfg["val_measure"])
        budget += (f" Each healing stops early on {measure} of {cfg.get('val_users', FinetuneConfig.val_users)} validation users, measured every {cfg['eval_every']} steps"
                   f" (patience {cfg['early_stop_patience']}; the best step's weights kept).")
    return budget


def _cut_from(cfg: dict) -> str:
    """Where the slim models' weights come from (the original, or the full fine-tuned model) and what their bridges were fitted on."""
    calib = [Path(d).name for d in cfg.get("calib_data") or []] or ([Path(cfg["data"]).name] if cfg.get("calib_own_text") else [])
    calib += ["the original model's own sampled text"] if cfg.get("calib_own_text") else []
    text = f" The bridges are fitted on {cfg['calib_tokens']} calibration tokens shared among {', '.join(calib)}." if calib else ""
    if cfg.get("slim_from", "original") == "original":
        return text
    return (text + " The slim models are cut from the full fine-tuned model (prune after fine-tuning, bridges fitted on its hidden states):"
            " their healing adds to the reference's budget, not instead of it.")


def _seed(cfg: dict) -> str:
    """The test draw's seed when it is not the first (a confirming draw)."""
    return f" (test seed {cfg['test_seed']})" if cfg.get("test_seed") else ""


def markdown(report: dict) -> str:
    cfg = report["config"]
    kept = report["kept_layers"]
    prior = f"prior weight chosen on {cfg['valid_users']} validation users" if cfg["valid_users"] > 0 else "no prior columns (--valid-users 0)"
    lines = [f"# Quality: {cfg['model']} full vs keep {len(kept)} ({cfg['bridge']}; layers {','.join(map(str, kept))})", "",
             f"{cfg['test_users']} test users{_seed(cfg)}, 1+19 candidates; {prior}. "
             f"Healing: {'full fine-tuning' if cfg.get('full') else 'LoRA r' + str(cfg['lora_rank'])}, {cfg['steps']} steps x {cfg['batch_size']} examples, lr {cfg['lr']}, history {cfg['history']}, "
             f"titles cut to {cfg['title_words']} words, {_rank_recipe(cfg)}{_format(cfg)}, mixed precision {cfg['mixed_precision']}; "
             f"scored in {cfg['dtype']}. Retained = (slim - random) / (full fine-tuned - random) on NDCG@10.",
             "", _distill_recipe(cfg) + " " + _budget(cfg, len(kept)) + _cut_from(cfg)]
    for key, heal in report.get("healing", {}).items():
        stop = f", best step {heal['best_step']}" + (" (stopped early)" if heal["stopped_early"] else "") if heal.get("best_step") else ""
        lines.append(f"- {key}: {heal['steps']} steps{stop}, {heal['seconds']:.0f} s")
    sections = [(f"{regime} negatives", rep) for regime, rep in report["regimes"].items()]
    if "cross" in report:
        where = f"{Path(report['cross']['data']).name} (healed on {Path(cfg['data']).name})"
        sections += [(f"{regime} negatives, cross-domain: {where}", rep) for regime, rep in report["cross"]["regimes"].items()]
    for title, rep in sections:
        lines += ["", f"## {title}", "",
                  "| model | NDCG@10 [95% CI] | HR@10 | MRR | retained on lift [95% CI] | raw ratio | + log-pop prior (w) | prior - popularity |",
                  "| --- | --- | ---: | ---: | --- | ---: | --- | --- |"]
        for key, row in rep["models"].items():
            ret = row.get("retained_vs_full_finetuned")
            rtxt = f"{ret['retained']:.2f} [{ret['retained_low']:.2f}, {ret['retained_high']:.2f}]" if ret else "(reference)"
            raw = f"{ret['raw']:.2f}" if ret else "1.00"
            prior = (f"{_fmt(row['ndcg@10_with_prior'])} ({row['prior_weight']:g}) | {_fmt(row['with_prior_minus_popularity'])}"
                     if "prior_weight" in row else "— | —")
            lines.append(f"| {key} | {_fmt(row['ndcg@10'])} | {row['hr@10']:.3f} | {row['mrr']:.3f} | {rtxt} | {raw} | {prior} |")
        lines.append(f"| popularity | {_fmt(rep['popularity']['ndcg@10'])} | {rep['popularity']['hr@10']:.3f} | | | | | |")
        lines.append(f"| random | {rep['random_ndcg@10']:.3f} | 0.500 | | | | | |")
        if "full_finetuned_minus_zero_shot" in rep:
            lines += ["", f"Full fine-tuned minus zero-shot full: {_fmt(rep['full_finetuned_minus_zero_shot'])} (paired bootstrap)."]
    if "generation" in report:
        lines += _generation_lines(report["generation"])
    return "\n".join(lines) + "\n"


def _format(cfg: dict) -> str:
    """The task format in words (nothing for the raw completion prompt), with the answers per prompt."""
    answers = f", {cfg['answers']} answers per prompt" if cfg.get("answers", 1) > 1 else ""
    if cfg.get("task_format", "completion") == "completion":
        return answers
    return f", chat prompt (the model's template and the task's system message, the title as the answer){answers}"


def _generation_lines(generation: dict) -> list[str]:
    """The chat table (shares of users, 95% intervals) and the last row's example conversations."""
    from ollama_slim.recsys.generation import verdict

    first = next(iter(generation.values()))
    lines = ["", f"## asked in chat ({first['users']} test users{_seed({'test_seed': first['config'].get('seed')})}, greedy answers of <= {first['config']['max_tokens']} tokens through llama.cpp; "
                 f"phrasings {', '.join(first['config']['phrasings'])})", "",
             "| model | a catalogue title | a title not listed | the target | distinct answers | distinct titles not listed | most common answer |",
             "| --- | --- | --- | --- | ---: | ---: | --- |"]
    for key, res in generation.items():
        f, top = res["figures"], res["top_answer"]
        titles = f"{res['distinct_titles']:.3f}" if "distinct_titles" in res else "-"  # answers cached before it was measured
        lines.append(f"| {key} | {_fmt(f['title'])} | {_fmt(f['new_title'])} | {_fmt(f['target'])} | {res['distinct']:.3f} | {titles} | "
                     f"{top['answer'][:40]!r} x {top['users']} |")
    key, last = list(generation.items())[-1]
    for n, ex in enumerate(last["examples"], start=1):
        lines += ["", f"Example {n}, {key} ({ex['phrasing']}), user {ex['user']}:", "", "```", ex["message"], f"-> {ex['answer']}", "```", f"{verdict(ex)}."]
    return lines


def check_work(args: argparse.Namespace, work: Path, *, defaults: dict | None = None) -> None:
    """The work directory caches models and scores by name: refuse one made with another recipe
    (what only adds or leaves out rows, reports or keeps, is not part of it: the GGUF rows of
    ``--outtype`` and the chat answers of ``--generate-users`` are cached under names that hold
    them; nor is how often healing checkpoints, nor an
    option added since, while it is at its default)."""
    scoring_only = ("out", "skip", "test_seed", "report", "keeps", "keep_list", "measure", "cross_data", "cross_users", "outtype", "checkpoint_every", "generate_users", "also", "threads")
    recipe = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in scoring_only}
    recipe_file = work / "recipe.json"
    if recipe_file.is_file():
        earlier = {k: v for k, v in json.loads(recipe_file.read_text()).items() if k not in scoring_only}  # as an older recipe may hold them
        added = {k for k in recipe.keys() - earlier.keys() if defaults is not None and k in defaults and recipe[k] == defaults[k]}
        changed = sorted(k for k in recipe.keys() | earlier.keys() if recipe.get(k) != earlier.get(k) and k not in added)
        if changed:
            sys.exit(f"error: {work} holds results made with other settings ({', '.join(changed)}); delete it or choose another --out")
    work.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(json.dumps(recipe, indent=2) + "\n")


def cross_domain(args: argparse.Namespace, found: dict[str, Path], work: Path) -> dict | None:
    """Every model scored on ``--cross-data``'s test users, both regimes; retained against the full
    model fine-tuned on ``--data`` (the same budget) there. ``None`` without ``--cross-data``."""
    if not args.cross_data:
        return None
    there = argparse.Namespace(**{**vars(args), "data": args.cross_data, "test_users": args.cross_users or args.test_users})
    dataset = load_dataset(args.cross_data)
    place = work / f"cross-{Path(args.cross_data).name}-{there.test_users}"
    scores = {key: scores_of(key, path, there, dataset, place) for key, path in found.items()}
    return {"data": args.cross_data, "test_users": there.test_users, "regimes": {regime: regime_report(regime, scores, there, dataset) for regime in REGIMES}}


def generation_config(args: argparse.Namespace):
    """The chat asks: ``--generate-users`` test users of ``--test-seed``'s draw, as the ranking's (the message is
    the chat's own, a phrasing per user, so the task format does not enter)."""
    from ollama_slim.recsys.generation import GenerationConfig

    return GenerationConfig(cases=EvalConfig(data=args.data, split="test", users=args.generate_users, history=args.history,
                                             title_words=args.title_words, threads=args.threads, seed=args.test_seed))


def asked(args: argparse.Namespace, found: dict[str, Path], ggufs: dict[str, Path], work: Path) -> dict | None:
    """``--generate-users`` test users asked in chat the way ``ollama run`` asks (each GGUF's template
    and the task's system message; greedy answers through llama.cpp): every GGUF row, and the full
    models exported at ``--outtype`` for it. The answers are cached per model, the figures judged on
    every run; ``None`` when off."""
    if not args.generate_users:
        return None
    from ollama_slim.ollama.chat import GreedyChat
    from ollama_slim.recsys.generation import CachedAnswers, evaluate_generation

    targets = {f"{key} ({args.outtype} GGUF, llama.cpp)": export(args, Path(found[key]), work, name=_file_key(key))
               for key in ("zero-shot full", "full fine-tuned") if key in found}
    config = generation_config(args)
    every = max(1, min(100, args.generate_users // 4))  # a slow ask shows it is moving
    out = {}
    for key, gguf in (targets | ggufs).items():
        began = time.perf_counter()
        make = lambda g=gguf: GreedyChat(g, context=config.context, threads=config.cases.threads)  # noqa: E731
        with CachedAnswers(work / "generation" / f"{_file_key(key)}.answers.json", gguf, make) as answers:
            result = evaluate_generation(gguf, config, answerer=answers,
                                         progress=lambda done, total: log(f"{key} asked: {done}/{total} users") if done % every == 0 and done < total else None)
        if answers.asked:
            log(f"asked {key} in chat ({answers.asked} of {args.generate_users} users) in {time.perf_counter() - began:.0f}s")
        out[key] = result.to_json(per_user=False)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    use_threads(args)
    work = args.out.with_name(args.out.name + "-work")
    check_work(args, work, defaults=vars(parse_args([])))
    dataset = load_dataset(args.data)
    began = time.perf_counter()
    found = models(args, work)
    ggufs = shipped(args, found, work)
    extra = also_rows(args, found | ggufs)
    ggufs |= {key: path for key, path in extra.items() if path.suffix == ".gguf"}
    found |= ggufs | extra
    scores = {key: scores_of(key, path, args, dataset, work) for key, path in found.items()}
    cross = cross_domain(args, found, work)
    generation = asked(args, found, ggufs, work)
    report = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "kept_layers": kept_layers(args, work),
              "models": {k: str(v) for k, v in found.items()},
              "healing": {k: json.loads((Path(v) / "heal.json").read_text()) for k, v in found.items() if (Path(v) / "heal.json").is_file()},
              "regimes": {regime: regime_report(regime, scores, args, dataset) for regime in REGIMES},
              **({"cross": cross} if cross else {}),
              **({"generation": generation} if generation else {}),
              "seconds": round(time.perf_counter() - began, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
