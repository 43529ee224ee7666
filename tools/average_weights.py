"""Average the weights of models of one training path (checkpoint averaging, a "model soup").

Two stages of one healing (``finetune A --out B``, then ``finetune B --out C``) lie close in weight
space; their mean often ranks as well as the better of the two under each regime rather than trading
one regime for the other. Every MODEL must have the same config and the same tensors (names and
shapes); the first one's config, tokenizer and ``slim.json`` are copied, and ``slim.json`` records
the averaged models and their weights. The result is written to a temp directory and swapped into
``--out`` (``--force`` to replace one). Prints JSON and a table.

    python tools/average_weights.py runs/s3/lc2 runs/s4/lc3 --out runs/s4/soup
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))

from ollama_slim import paths  # noqa: E402

_WEIGHTS = "model.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path, metavar="MODEL", help="model directories (config.json, model.safetensors)")
    p.add_argument("--weights", help="comma-separated weight of each model (default: equal); normalised to sum to 1")
    p.add_argument("--out", type=Path, required=True, help="output model directory")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    return p.parse_args(argv)


def mixing_weights(text: str | None, count: int) -> list[float]:
    """The models' weights, normalised to sum to 1; ValueError on a bad list."""
    if text is None:
        return [1.0 / count] * count
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--weights {text!r}: give one number per model, e.g. --weights 0.5,0.5") from None
    if len(values) != count or not all(v >= 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"--weights {text!r}: give {count} numbers, none negative, not all 0")
    return [v / sum(values) for v in values]


def check_models(models: list[Path]) -> None:
    """ValueError unless every model is a directory with the first one's config and weights file."""
    if len(models) < 2:
        raise ValueError("give at least two models to average")
    for model in models:
        if not (model / "config.json").is_file() or not (model / _WEIGHTS).is_file():
            raise ValueError(f"{model} is not a model directory with config.json and {_WEIGHTS} (sharded models are not supported)")
    first = json.loads((models[0] / "config.json").read_text())
    for model in models[1:]:
        if json.loads((model / "config.json").read_text()) != first:
            raise ValueError(f"{model} has another config than {models[0]}: only models of one architecture and cut can be averaged")


def average(models: list[Path], weights: list[float]) -> dict:
    """The weighted mean of the models' tensors (float32 sums, stored in each tensor's dtype)."""
    from safetensors.torch import load_file

    first: dict = {}
    sums: dict = {}
    for model, weight in zip(models, weights):
        tensors = load_file(str(model / _WEIGHTS))
        if not first:
            first = tensors
        elif tensors.keys() != first.keys() or any(tensors[k].shape != first[k].shape for k in tensors):
            raise ValueError(f"{model} holds other tensors than {models[0]}: only models of one cut can be averaged")
        for name, tensor in tensors.items():
            sums[name] = sums.get(name, 0.0) + tensor.float() * weight
    return {name: sums[name].to(like.dtype) if like.is_floating_point() else like for name, like in first.items()}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        weights = mixing_weights(args.weights, len(args.models))
        check_models(args.models)
        if args.out.exists() and not args.force:
            raise ValueError(f"{args.out} exists; pass --force to replace it")
        tensors = average(args.models, weights)
    except ValueError as err:
        sys.exit(f"error: {err}")
    from safetensors.torch import save_file

    with paths.atomic_dir(args.out) as tmp:
        for item in args.models[0].iterdir():
            if item.is_file() and item.name != _WEIGHTS:
                shutil.copy2(item, tmp / item.name)
        save_file(tensors, str(tmp / _WEIGHTS), metadata={"format": "pt"})
        record = {"models": [str(m) for m in args.models], "weights": weights}
        slim = tmp / "slim.json"
        if slim.is_file():
            data = json.loads(slim.read_text())
            data["averaged"] = record
            slim.write_text(json.dumps(data, indent=2) + "\n")
    result = {"out": str(args.out), "tensors": len(tensors), **record}
    print(json.dumps(result, indent=2))
    print("\n| model | weight |\n|---|---|\n" + "\n".join(f"| {m} | {w:.3f} |" for m, w in zip(args.models, weights)), file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
