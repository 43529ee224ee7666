"""llama.cpp against transformers for every family in the table (issue 13).

For each family: a tiny random model from its table entry (``tiny``), cut to about half
its layers (a set that follows llama.cpp's layer-type rule, and for families with a
pattern one that breaks it), exported at f32, q8_0 and (mixture-of-experts) mxfp4, then
the same token ids through llama.cpp and transformers: relative max |dlogit| over every
position, and top-1 agreement at every position and at the last one. Prompts are longer
than the tiny sliding windows. With ``--gemma3-gguf`` the real Gemma 3 270M
(``tools/gemma3_270m.py``) is cut 18 -> 6 the same way, straight from its dequantized weights.

    python tools/bench_families.py --out bench/families          # ~2 minutes on 2 cores
    python tools/bench_families.py --gemma3-gguf "$(python tools/gemma3_270m.py)"

Prints one JSON object per row (stderr) and a Markdown table; writes both with --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_models import CORPUS, make_tiny_model, train_tiny_tokenizer  # noqa: E402

from ollama_slim.gguf.check import _hf_logits, _llama_logits  # noqa: E402
from ollama_slim.gguf.export import ExportConfig, export_gguf  # noqa: E402
from ollama_slim.models.families import family, supported  # noqa: E402
from ollama_slim.models.modeling import load  # noqa: E402
from ollama_slim.slimming.build import save_compact, slice_model  # noqa: E402
from ollama_slim.slimming.patterns import matches, original_types, suggest  # noqa: E402


def kept_sets(name: str, config: dict) -> dict[str, list[int]]:
    """``{"follows": ..., "breaks": ...}``: about half the layers on positions of their own type, and (with a pattern) a set that is not."""
    fam, n = family(name), int(config["num_hidden_layers"])
    types = original_types(fam, config)
    if types is None:
        return {"follows": list(range(1, n, 2))}
    out = {"follows": suggest(fam, types, max(n // 3, 3), prefer=range(1, n, 2))}
    sliding = [i for i, t in enumerate(types) if t == fam.layer_pattern.sliding]
    full = [i for i, t in enumerate(types) if t == fam.layer_pattern.full]
    breaks = [sliding[0], sliding[1], next(i for i in full if i > sliding[1])]
    assert matches(fam, types, out["follows"]) and not matches(fam, types, breaks)
    out["breaks"] = breaks
    return out


def compare(gguf: Path, model_dir: Path, token_ids: list[list[int]]) -> dict:
    """Relative max |dlogit| (all positions) and top-1 agreement (all positions, last position)."""
    model, _ = load(model_dir)
    hf, gg = _hf_logits(model, token_ids), _llama_logits(gguf, token_ids)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(hf, gg))
    scale = max(float(np.abs(a).max()) for a in hf)
    every = np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(hf, gg)])
    last = [int(a[-1].argmax() == b[-1].argmax()) for a, b in zip(hf, gg)]
    return {"rel_max_dlogit": diff / scale, "max_dlogit": diff, "top1_all": float(every.mean()), "top1_last": float(np.mean(last)),
            "tokens": int(sum(len(t) for t in token_ids))}


def bench_model(name: str, model_dir: Path, work: Path, token_ids: list[list[int]], outtypes: list[str], *, label: str, source: dict | None = None) -> list[dict]:
    rows = []
    model, tokenizer = load(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    for rule, kept in kept_sets(name, config).items():
        compact = work / f"{label}-{rule}".replace(" ", "_")
        save_compact(slice_model(model, kept), tokenizer, compact, provenance={"source": source or {"arch": name}, "num_layers": config["num_hidden_layers"], "kept": kept})
        for outtype in outtypes:
            start = time.perf_counter()
            gguf = export_gguf(ExportConfig(model_dir=compact, outtype=outtype, out=work / f"{label}-{rule}-{outtype}.gguf".replace(" ", "_"), check=False, force=True)).path
            row = {"family": label, "kept": kept, "pattern": rule, "outtype": outtype, **compare(gguf, compact, token_ids),
                   "seconds": round(time.perf_counter() - start, 1)}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| family | kept | types vs index rule | outtype | rel. max \\|dlogit\\| | top-1 (all positions) | top-1 (last) | tokens |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['family']} | {','.join(map(str, r['kept']))} | {r['pattern']} | {r['outtype']} | {r['rel_max_dlogit']:.2e} | "
                     f"{r['top1_all']:.3f} | {r['top1_last']:.2f} | {r['tokens']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(supported()), help="comma-separated family names [default: every family in the table]")
    parser.add_argument("--gemma3-gguf", type=Path, default=None, help="also the real Gemma 3 270M GGUF (tools/gemma3_270m.py)")
    parser.add_argument("--out", type=Path, default=None, help="write families.json and families.md here")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok_dir = train_tiny_tokenizer(work / "tokenizer")
        from ollama_slim.models.modeling import load_tokenizer

        tok = load_tokenizer(tok_dir)
        token_ids = [tok(" ".join([p] * 3)).input_ids for p in CORPUS]  # longer than the tiny windows
        for name in args.families.split(","):
            fam = family(name)
            model_dir = make_tiny_model(work / f"tiny-{name}", tok_dir, arch=name, seed=3, tied=fam.tiny.get("tie_word_embeddings", True))
            outtypes = ["f32", "q8_0"] + (["mxfp4"] if fam.mlp == "experts" else [])
            rows += bench_model(name, model_dir, work, token_ids, outtypes, label=name)
        if args.gemma3_gguf:
            from ollama_slim.models.sources import resolve

            resolved = resolve(str(args.gemma3_gguf), offline=True)
            real = load_tokenizer(resolved.model_dir)
            long_ids = [real(" ".join(CORPUS * 12)).input_ids[:600]] + [real(p).input_ids for p in CORPUS]  # one prompt past the 512-token window
            rows += bench_model("gemma3_text", resolved.model_dir, work, long_ids, ["f32", "q8_0"], label="gemma3 270M (real)",
                                source={"arch": "gemma3_text", "gguf_path": str(args.gemma3_gguf)})  # its SentencePiece tokenizer comes from there
    text = table(rows)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "families.json").write_text(json.dumps(rows, indent=1))
        (args.out / "families.md").write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
