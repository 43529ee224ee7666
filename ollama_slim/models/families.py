"""Architecture knowledge as data: the per-family tables in ``_data/families.json``.

Adding a family means adding a table entry (usually ``"extends": "_decoder"`` plus what
differs), never a ``model_type`` switch. Everything architecture-specific lives in the
entry: module names, norm form, MLP kind, the layer-type pattern llama.cpp derives from
layer indices, tokenizer kind, chat family, which bridges apply, LoRA targets,
the GGUF tensor map (with its transforms) and extra GGUF metadata.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from ollama_slim.errors import UnsupportedArchitectureError
from ollama_slim.tables import raw_table, resolve_extends

NORM_FORMS = {"w": 1.0, "one_plus_w": 0.0}  # norm form -> the weight value of an identity norm
MLP_KINDS = ("dense", "experts")
TOKENIZER_KINDS = ("bpe", "spm")
TENSOR_OPS = ("split_even_odd_last", "swap_last2")


@dataclass(frozen=True)
class LayerPattern:
    """Layer types (sliding-window or full attention) and the index rule llama.cpp and Ollama apply.

    llama.cpp's ``set_swa_pattern(period, dense_first)``: layer ``j`` of a ``K``-layer GGUF
    slides unless ``j % period == 0`` (``dense_first``) or ``j % period == period - 1`` (else),
    when the GGUF carries no per-layer ``sliding_window_pattern`` array.
    """

    config_list: str
    sliding: str
    full: str
    period: int
    dense_first: bool
    require_sliding: bool  # llama.cpp aborts on a GGUF of this arch with no sliding layer
    window: str  # the config field of the window length

    def index_type(self, j: int) -> str:
        """The type llama.cpp's index rule gives layer ``j``."""
        full = j % self.period == 0 if self.dense_first else j % self.period == self.period - 1
        return self.full if full else self.sliding

    def rule(self, count: int) -> list[str]:
        """The types of a ``count``-layer model under the index rule."""
        return [self.index_type(j) for j in range(count)]

    def types_of(self, config: Any) -> list[str]:
        """The per-layer types of a loaded config (or config dict)."""
        values = config.get(self.config_list) if isinstance(config, dict) else getattr(config, self.config_list, None)
        if not values:
            raise UnsupportedArchitectureError(f"config has no {self.config_list}", hint="the model's config.json is incomplete")
        return list(values)


@dataclass(frozen=True)
class TensorMap:
    """One Hugging Face tensor -> one or more GGUF tensors, after ``ops`` (in order)."""

    to: tuple[str, ...]
    ops: tuple[str, ...] = ()


@dataclass(frozen=True)
class GGUFSpec:
    """How a family is written to GGUF."""

    tensors: dict[str, TensorMap]
    permute_qk: bool
    norm_shift: float  # added to every ``*norm.weight`` (GGUF stores 1 + w for x * (1 + w) norms)
    keep_float: tuple[str, ...]  # GGUF names (templates) never quantized
    expert_tensors: tuple[str, ...]  # 3-D expert tensors (GGUF templates): the outtype's expert type
    metadata: tuple[dict[str, Any], ...]  # rows beside gguf_export.json's (same key: this one wins)
    rope_parameters: str  # where rope_type and factor live in config.json


@dataclass(frozen=True)
class Family:
    """How one transformers architecture lays out its modules and GGUF tensors."""

    name: str
    hf_class: str
    gguf_arch: str
    layers: str
    embed: str
    final_norm: str
    lm_head: str
    input_norm: str  # the norm before attention
    post_attention_norm: str  # the norm before the MLP
    post_norms: tuple[str, ...]  # norms on a sublayer's output, before the residual add (Gemma)
    norm_form: str
    attn_in: tuple[str, ...]
    attn_out: str
    mlp: str  # "dense" | "experts"
    mlp_in: tuple[str, ...]
    mlp_out: str  # the module whose output is the MLP's (hooked by mlp bridges)
    mlp_fold: dict[str, Any]  # where an mlp bridge folds: weight, bias, layout ("out_in": nn.Linear, "in_out": [E, f, d])
    per_layer_config_lists: tuple[str, ...]
    layer_pattern: LayerPattern | None
    tokenizer: str
    chat: str
    bridges: tuple[str, ...]
    lora_targets: tuple[str, ...]
    requires: dict[str, Any]
    gguf: GGUFSpec
    tiny: dict[str, Any] = field(default_factory=dict)

    def layer_prefix(self, i: int) -> str:
        """State-dict prefix of layer ``i``, e.g. ``model.layers.3.``."""
        return f"{self.layers}.{i}."

    @property
    def identity_norm(self) -> float:
        """The norm weight value that leaves its input unscaled (1 for ``x*w``, 0 for ``x*(1+w)``)."""
        return NORM_FORMS[self.norm_form]

    def config_problems(self, config: dict[str, Any]) -> list[str]:
        """What in ``config`` (a config.json dict) this family cannot slim or export, one line each."""
        problems = []
        for path, want in self.requires.items():
            got = config_value(config, path)
            target = config_value(config, want["equals"]) if isinstance(want["equals"], str) else want["equals"]
            if got is not None and got != target:
                problems.append(f"{path} is {got!r}, not {target!r} ({want['why']})")
        return problems


def config_value(config: dict[str, Any], dotted: str) -> Any:
    """``config["a"]["b"]`` for ``"a.b"``; None when any part is missing."""
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return None
        value = value[part]
    return value


def build_family(name: str, entry: dict[str, Any]) -> Family:
    """A :class:`Family` from a resolved table entry; unknown or missing fields fail loudly."""
    entry = dict(entry)
    gguf = dict(entry.pop("gguf"))
    pattern = entry.pop("layer_pattern", None)
    known = {f.name for f in fields(Family)} - {"name", "gguf", "layer_pattern"}
    unknown = set(entry) - known
    if unknown:
        raise ValueError(f"family {name}: unknown fields {sorted(unknown)}")
    if entry.get("norm_form") not in NORM_FORMS or entry.get("mlp") not in MLP_KINDS or entry.get("tokenizer") not in TOKENIZER_KINDS:
        raise ValueError(f"family {name}: norm_form, mlp or tokenizer not one of {list(NORM_FORMS)}, {MLP_KINDS}, {TOKENIZER_KINDS}")
    tensors = {}
    for hf, target in gguf.pop("tensors").items():
        spec = TensorMap(to=(target,)) if isinstance(target, str) else TensorMap(to=tuple(target["to"]), ops=tuple(target["op"].split(",")))
        if set(spec.ops) - set(TENSOR_OPS):
            raise ValueError(f"family {name}: unknown tensor op in {target}")
        tensors[hf] = spec
    spec = GGUFSpec(tensors=tensors, permute_qk=bool(gguf["permute_qk"]), norm_shift=float(gguf["norm_shift"]), keep_float=tuple(gguf["keep_float"]),
                    expert_tensors=tuple(gguf["expert_tensors"]), metadata=tuple(gguf["metadata"]), rope_parameters=gguf["rope_parameters"])
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()}
    return Family(name=name, gguf=spec, layer_pattern=LayerPattern(**pattern) if pattern else None, **values)


USER_TABLE_ENV = "OLLAMA_SLIM_FAMILIES"  # a JSON file of extra entries (they may extend the package's)


def _families() -> dict[str, Family]:
    return _load_families(os.environ.get(USER_TABLE_ENV) or None)


@cache
def _load_families(extra: str | None) -> dict[str, Family]:
    entries = raw_table("families")
    if extra:
        try:
            entries = {**entries, **json.loads(Path(extra).read_text(encoding="utf-8"))}
        except (OSError, ValueError) as err:
            raise UnsupportedArchitectureError(f"{USER_TABLE_ENV}={extra} is not a readable JSON family table ({err})", hint=f"fix the file or unset {USER_TABLE_ENV}") from None
    return {name: build_family(name, resolve_extends(entries, name)) for name, entry in entries.items() if not name.startswith("_") and isinstance(entry, dict)}


def supported() -> list[str]:
    """The model_type names ollama-slim can slim."""
    return sorted(_families())


def by_gguf_arch() -> dict[str, str]:
    """GGUF ``general.architecture`` -> transformers ``model_type``, derived from the table."""
    return {fam.gguf_arch: name for name, fam in _families().items()}


def family(model_type: str) -> Family:
    """The table of ``model_type``; a clear error naming what is supported otherwise."""
    fam = _families().get(model_type)
    if fam is None:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} cannot be slimmed yet",
            hint=f"supported: {', '.join(supported())} (decoder-only text models; a new family is one entry in ollama_slim/_data/families.json)",
        )
    return fam


def check_config(config: dict[str, Any]) -> Family:
    """The family of a config.json dict, after checking it can be slimmed and exported (one clear line otherwise)."""
    fam = family(config.get("model_type", "?"))
    problems = fam.config_problems(config)
    if problems:
        raise UnsupportedArchitectureError(f"this {fam.name} model cannot be slimmed for llama.cpp: {problems[0]}",
                                           hint="edit config.json if the model really computes that, or report the model")
    return fam


def family_of(model: Any) -> Family:
    """The family of a loaded transformers model (by ``config.model_type``)."""
    return family(model.config.model_type)


def get_module(root: Any, dotted: str) -> Any:
    """``get_module(model, "model.layers")`` -> the sub-module at that path."""
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def decoder_layers(model: Any) -> Any:
    """The ``nn.ModuleList`` of decoder layers of ``model``."""
    return get_module(model, family_of(model).layers)
