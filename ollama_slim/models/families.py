"""Architecture knowledge as data: the per-family tables in ``_data/families.json``.

Adding a family means adding a table entry, never a ``model_type`` switch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from ollama_slim.errors import UnsupportedArchitectureError


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
    input_norm: str
    post_attention_norm: str
    attn_in: tuple[str, ...]
    attn_out: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    per_layer_config_lists: tuple[str, ...]
    gguf_tensors: dict[str, str]
    gguf_permute_qk: bool

    def layer_prefix(self, i: int) -> str:
        """State-dict prefix of layer ``i``, e.g. ``model.layers.3.``."""
        return f"{self.layers}.{i}."


@cache
def _tables() -> dict[str, dict[str, Any]]:
    text = resources.files("ollama_slim").joinpath("_data/families.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def supported() -> list[str]:
    """The model_type names ollama-slim can slim."""
    return sorted(_tables())


def family(model_type: str) -> Family:
    """The table of ``model_type``; a clear error naming what is supported otherwise."""
    table = _tables().get(model_type)
    if table is None:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} cannot be slimmed yet",
            hint=f"supported: {', '.join(supported())} (dense decoder-only text models)",
        )
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    return Family(name=model_type, **fields)


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
