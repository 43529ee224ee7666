"""The ``build`` stage: a compact Hugging Face model from a subset of decoder layers.

Design §5: keep the selected layers in order, renumber them (``layer_idx``,
``num_hidden_layers`` and every per-layer config list of the family table), fold a
bridge across each gap, and save a stock ``from_pretrained`` directory with a
``slim.json`` provenance file beside the weights.
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ollama_slim import __version__, paths
from ollama_slim.slimming.bridges import BRIDGES
from ollama_slim.errors import SelectionError, UsageError
from ollama_slim.models.families import check_config, decoder_layers
from ollama_slim.models.lm import layer_subset
from ollama_slim.models.modeling import LoadOptions, load
from ollama_slim.pipeline.layout import RunLayout
from ollama_slim.slimming.patterns import check_kept, original_types

PROVENANCE_FILE = "slim.json"
PROVENANCE_FORMAT = 1
_INDEX = re.compile(r"^-?\d+$")
_RANGE = re.compile(r"^(\d+)-(\d+)$")


@dataclass(frozen=True)
class BuildConfig:
    """What to build: a model reference, the layers to keep, where to write it.

    Exactly one of ``layers`` and ``selection`` (a JSON file written by ``select``).
    """

    model: str
    layers: tuple[int, ...] | None = None
    selection: Path | None = None
    out_dir: Path | None = None
    bridge: str = "none"
    data: str | None = None  # train-split calibration for the bridge fit (random tokens without)
    calib_data: tuple[str, ...] = ()  # more data sets the bridges are fitted on besides data (the calibration tokens shared evenly): every domain served
    own_text: bool = False  # the original's own sampled text is one more share of the calibration: what it knows beyond the data sets
    dtype: str = "float32"
    hf: str | None = None
    force: bool = False
    run_dir: Path | None = None  # a run: selection and out_dir default to its files, the result goes to its build.json
    bridge_fallback: bool = True  # a bridge the family does not allow gives way to the family's own (prune); the build command says so as an error instead


@dataclass(frozen=True)
class BuildResult:
    """A compact model on disk and what it was made of."""

    out_dir: Path
    source: dict[str, Any]
    kept: tuple[int, ...]
    num_layers_before: int
    num_params_before: int
    num_params_after: int
    bridge: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir), "source": self.source, "kept": list(self.kept),
            "num_layers_before": self.num_layers_before, "num_params_before": self.num_params_before,
            "num_params_after": self.num_params_after, "bridge": self.bridge, "seconds": round(self.seconds, 2),
        }


# --- layer lists ----------------------------------------------------------------------


def parse_layers(text: str) -> tuple[int, ...]:
    """``"0,1,2,27-29"`` -> ``(0, 1, 2, 27, 28, 29)``; a :class:`UsageError` for junk."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        span = _RANGE.match(part)
        if span:
            out.extend(range(int(span[1]), int(span[2]) + 1))
        elif _INDEX.match(part):
            out.append(int(part))
        elif part:
            raise UsageError(f"--layers {text!r}: {part!r} is not a layer index", hint="give comma-separated indices or ranges, e.g. 0,1,2,27-29")
    return tuple(out)


def validate_layers(layers: list[int] | tuple[int, ...], *, num_layers: int, allow_all: bool = False) -> list[int]:
    """Check that ``layers`` is a strictly increasing, proper subset of ``range(num_layers)``.

    ``allow_all`` accepts keeping every layer (a plain copy; library callers only).
    """
    kept = list(layers)
    if not kept:
        raise SelectionError("no layers to keep", hint=f"give at least one layer index in 0..{num_layers - 1}")
    bad = [i for i in kept if not 0 <= i < num_layers]
    if bad:
        raise SelectionError(f"layer {bad[0]} does not exist: the model has {num_layers} layers (0..{num_layers - 1})", hint="check --layers or the selection file")
    dupes = sorted({i for i in kept if kept.count(i) > 1})
    if dupes:
        raise SelectionError(f"layer {dupes[0]} is listed twice", hint="list each layer once")
    if kept != sorted(kept):
        raise SelectionError(f"layers must be in increasing order (got {','.join(map(str, kept))})", hint=f"keep them in model order: {','.join(map(str, sorted(kept)))}")
    if len(kept) == num_layers and not allow_all:
        raise SelectionError(f"keeping all {num_layers} layers removes nothing", hint="drop at least one layer, or export the original model as it is")
    return kept


def check_family(model_dir: Path, *, kept: list[int], bridge: str, fallback: bool = False) -> str:
    """What the model's family table allows: kept layers that follow its layer-type pattern, and the bridge kind (one line otherwise).

    Returns the bridge to build with: ``bridge``, or with ``fallback`` the family's first
    kind when the family table does not allow ``bridge``.
    """
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    fam = check_config(config)
    check_kept(fam, original_types(fam, config), kept)
    if bridge in fam.bridges:
        return bridge
    if fallback:
        return next((kind for kind in fam.bridges if kind != "none"), "none")
    raise UsageError(f"bridge {bridge!r} is not available for {fam.name} models (its fit or fold does not hold for this architecture)", hint=f"choose one of: {', '.join(fam.bridges)}")


def read_selection(path: Path) -> dict[str, Any]:
    """A selection file (``{"model", "num_layers", "kept", ...}``), checked for shape."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"selection file {path} does not exist", hint="run `ollama-slim select` first or pass --layers") from None
    except ValueError as err:
        raise SelectionError(f"selection file {path} is not valid JSON ({err})", hint="rerun `ollama-slim select`") from None
    kept = data.get("kept") if isinstance(data, dict) else None
    if not isinstance(kept, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in kept):
        raise SelectionError(f"selection file {path} has no 'kept' list of layer indices", hint="rerun `ollama-slim select`")
    if not isinstance(data.get("num_layers"), int):
        raise SelectionError(f"selection file {path} has no 'num_layers'", hint="rerun `ollama-slim select`")
    return data


def kept_layers(config: BuildConfig, *, num_layers: int) -> list[int]:
    """The layers ``config`` asks for, from ``--layers`` or the selection file, validated."""
    if (config.layers is None) == (config.selection is None):
        raise UsageError("give either --layers or --selection (exactly one)", hint="e.g. --layers 0,1,2,27,28,29")
    if config.selection is not None:
        data = read_selection(config.selection)
        if data["num_layers"] != num_layers:
            raise SelectionError(
                f"selection file {config.selection} is for a model with {data['num_layers']} layers ({data.get('model', '?')}), but {config.model} has {num_layers}",
                hint="select layers for this model, or build the model the file was made for",
            )
        return validate_layers(data["kept"], num_layers=num_layers)
    return validate_layers(config.layers or (), num_layers=num_layers)


# --- slicing --------------------------------------------------------------------------


def slice_model(model: Any, layers: list[int]) -> Any:
    """A new model with decoder layers ``layers`` of ``model``, in order, renumbered.

    ``layers`` must be increasing, in range and without repeats (:class:`SelectionError`).
    ``model`` is left untouched (the compact model owns copies of its weights, so a bridge
    can fold into it while the original still serves as the fit target). Embeddings, final
    norm and LM head are copied too; tied weights stay tied. Hidden size ``d`` and all
    weight shapes are unchanged; only the layer count goes from ``N`` to ``len(layers)``.
    The copy is made inside :func:`~ollama_slim.models.lm.layer_subset`, so it keeps the
    renumbered ``layer_idx`` and the shrunk config that evaluation of the subset uses.
    """
    kept = validate_layers(layers, num_layers=len(decoder_layers(model)), allow_all=True)
    with layer_subset(model, kept):
        return copy.deepcopy(model)


def count_parameters(model: Any) -> int:
    """Distinct parameters (tied weights once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# --- saving ---------------------------------------------------------------------------


def save_compact(model: Any, tokenizer: Any, out_dir: str | Path, *, provenance: dict[str, Any]) -> Path:
    """Write ``model`` (safetensors), ``tokenizer``, chat template and ``slim.json`` atomically.

    The directory appears complete or not at all; an existing ``out_dir`` is replaced
    (callers that must not overwrite check first, as :func:`build_compact` does).
    """
    out_dir = Path(out_dir)
    record = {"format": PROVENANCE_FORMAT, "ollama_slim_version": __version__, **provenance}
    with paths.atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        paths.write_json(tmp / PROVENANCE_FILE, record)
    return out_dir


def read_provenance(model_dir: str | Path) -> dict[str, Any]:
    """``slim.json`` of a compact model directory, or ``{}`` for a plain HF directory."""
    file = Path(model_dir) / PROVENANCE_FILE
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError:
        return {}


# --- the stage ------------------------------------------------------------------------


def default_out_dir(ref: str, kept: list[int]) -> Path:
    """``smollm2:135m`` keeping 10 layers -> ``./smollm2-135m-keep10``."""
    stem = Path(ref.rstrip("/")).name if Path(ref).exists() else ref
    slug = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("-.") or "model"
    return Path(f"{slug}-keep{len(kept)}")


def build_compact(config: BuildConfig) -> BuildResult:
    """Resolve ``config.model``, keep the chosen layers, fold the bridge, save the result."""
    from ollama_slim.models.sources import resolve

    start = time.perf_counter()
    config = _in_run(config)
    if config.bridge not in BRIDGES:
        raise UsageError(f"unknown bridge kind {config.bridge!r}", hint=f"choose one of: {', '.join(sorted(BRIDGES))}")
    resolved = resolve(config.model, hf=config.hf)
    kept = kept_layers(config, num_layers=resolved.num_layers)
    bridge = check_family(resolved.model_dir, kept=kept, bridge=config.bridge, fallback=config.bridge_fallback)
    out_dir = Path(config.out_dir) if config.out_dir else default_out_dir(config.model, kept)
    if out_dir.exists() and not config.force:
        raise UsageError(f"{out_dir} already exists", hint="pass --force to replace it, or choose another --out")
    original, tokenizer = load(resolved.model_dir, LoadOptions(dtype=config.dtype))
    compact = slice_model(original, kept)
    calibration = _calibration(config, tokenizer, original)
    summary = BRIDGES[bridge].fit_and_fold(original=original, compact=compact, kept=kept, calibration=calibration)
    if bridge != config.bridge:
        summary["asked"] = config.bridge
    source = _source_record(resolved)
    provenance = {"source": source, "num_layers": resolved.num_layers, "kept": kept, "bridge": {"kind": bridge, **summary}, "data": config.data,
                  **({"calib_data": list(config.calib_data)} if config.calib_data else {}), **({"own_text": True} if config.own_text else {}),
                  "dtype": config.dtype}
    save_compact(compact, tokenizer, out_dir, provenance=provenance)
    result = BuildResult(
        out_dir=out_dir, source=source, kept=tuple(kept), num_layers_before=resolved.num_layers,
        num_params_before=count_parameters(original), num_params_after=count_parameters(compact),
        bridge=provenance["bridge"], seconds=time.perf_counter() - start,
    )
    if config.run_dir is not None:
        paths.write_json(RunLayout(Path(config.run_dir)).build_record, result.to_json())
    return result


def _in_run(config: BuildConfig) -> BuildConfig:
    """``config`` with a run's selection file and compact directory as defaults."""
    if config.run_dir is None:
        return config
    layout = RunLayout(Path(config.run_dir))
    selection = layout.selection if config.layers is None and config.selection is None else config.selection
    return replace(config, selection=selection, out_dir=config.out_dir or layout.compact_dir)


def _calibration(config: BuildConfig, tokenizer: Any, original: Any) -> Any:
    """Train-split token sequences of ``config.data`` and ``calib_data`` (and ``original``'s own
    text under ``own_text``) for fitting bridges (None: no data, or no bridge)."""
    if config.data is None or config.bridge == "none":
        return None
    from ollama_slim.slimming.bridges import mixed_calibration
    from ollama_slim.recsys.data import load_dataset

    return mixed_calibration(tokenizer=tokenizer, datasets=[load_dataset(name) for name in (config.data, *config.calib_data)],
                             own_text_of=original if config.own_text else None)


def _source_record(resolved: Any) -> dict[str, Any]:
    """The provenance of the original model (JSON-able)."""
    keys = ("ref", "tag", "hf_repo", "arch", "chat", "source", "origin", "gguf_path", "num_layers", "num_params")
    data = resolved.to_json()
    return {k: data.get(k) for k in keys}
