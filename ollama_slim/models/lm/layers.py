"""Running a subset of a model's decoder layers.

Two ways, one family table (:mod:`ollama_slim.models.families`):

- :func:`layer_subset` makes the model itself run only the kept layers, renumbered
  (``layer_idx``, ``num_hidden_layers`` and every per-layer config list), so KV caches index
  them densely and the model computes exactly what a compact model of those layers computes;
  evaluation scores through it and ``build`` deep-copies inside it;
- :func:`recorded` records what chosen layers (and the final norm) hand on during a forward,
  for distillation on hidden states;
- :class:`LayerRunner` calls the pieces (embedding, any decoder layer, final norm + head)
  one by one on a packed batch, so hidden states can be cached by layer prefix (importance
  and selection). Layers may sit on different devices (accelerate's ``device_map``): hidden
  states follow each layer to its device.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch

from ollama_slim.errors import SelectionError, UnsupportedArchitectureError
from ollama_slim.models.families import Family, family_of, get_module
from ollama_slim.models.lm.batching import PackedBatch
from ollama_slim.models.lm.candidates import mean_by_group, picked_logprobs


def layer_parent(model: Any, fam: Family) -> tuple[Any, str]:
    """``(module holding the decoder layer list, its attribute name)``, e.g. ``(model.model, "layers")``."""
    parent_path, _, attr = fam.layers.rpartition(".")
    return (get_module(model, parent_path) if parent_path else model), attr


def check_subset(layers: list[int], num_layers: int) -> list[int]:
    """``layers`` if sorted, distinct and in ``0..num_layers - 1``; a :class:`SelectionError` otherwise."""
    if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= num_layers:
        raise SelectionError(f"layers {list(layers)} do not fit a model of {num_layers} layers", hint=f"give sorted, distinct indices in 0..{num_layers - 1}")
    return list(layers)


def shrunk_config(config: Any, fam: Family, kept: list[int], num_layers: int) -> dict[str, Any]:
    """The config values of a model of layers ``kept``: each per-layer list cut to them, the layer count."""
    out: dict[str, Any] = {}
    for name in fam.per_layer_config_lists:
        values = getattr(config, name, None)
        if values is None:
            continue
        if len(values) != num_layers:
            raise SelectionError(f"config.{name} has {len(values)} entries for {num_layers} layers", hint="the model's config is inconsistent")
        out[name] = [values[i] for i in kept]
    out["num_hidden_layers"] = len(kept)
    return out


def _indexed(layer: Any) -> list[Any]:
    """The sub-modules of a decoder layer that carry a ``layer_idx`` (attention, for its cache)."""
    return [m for m in layer.modules() if hasattr(m, "layer_idx")]


@contextmanager
def layer_subset(model: Any, layers: list[int] | None) -> Iterator[Any]:
    """Run ``model`` with only decoder ``layers`` (sorted), renumbered; restored on exit.

    ``None`` keeps every layer. Inside, the layer list, each kept layer's ``layer_idx`` and
    the config (:func:`shrunk_config`) are those of a compact model of ``layers``.
    """
    if layers is None:
        yield model
        return
    fam = family_of(model)
    parent, attr = layer_parent(model, fam)
    full = getattr(parent, attr)
    kept = check_subset(list(layers), len(full))
    config = model.config
    shrunk = shrunk_config(config, fam, kept, len(full))
    saved_config = {name: getattr(config, name) for name in shrunk}
    saved_idx = [(m, m.layer_idx) for i in kept for m in _indexed(full[i])]
    try:
        setattr(parent, attr, torch.nn.ModuleList([full[i] for i in kept]))
        for new, i in enumerate(kept):
            for m in _indexed(full[i]):
                m.layer_idx = new
        for name, value in shrunk.items():
            setattr(config, name, value)
        yield model
    finally:
        setattr(parent, attr, full)
        for m, idx in saved_idx:
            m.layer_idx = idx
        for name, value in saved_config.items():
            setattr(config, name, value)


FINAL_NORM = "final_norm"


def _recorder(seen: dict[int | str, torch.Tensor], key: int | str) -> Any:
    def hook(module: Any, args: Any, output: Any) -> None:
        seen[key] = output[0] if isinstance(output, tuple) else output

    return hook


@contextmanager
def recorded(model: Any, *, layers: Iterable[int] = (), final_norm: bool = False) -> Iterator[dict[int | str, torch.Tensor]]:
    """While inside, each forward of ``model`` records ``{layer index: output [B, S, d]}`` for
    decoder ``layers`` (what each hands the next layer, before the final norm) and, with
    ``final_norm``, ``{FINAL_NORM: [B, S, d]}`` (the LM head's input at every position).

    Forward hooks on the family table's modules, removed on exit; the tensors keep their
    autograd graph when the forward has one. A later forward overwrites the record.
    """
    fam = family_of(model)
    modules: dict[int | str, Any] = {i: get_module(model, fam.layers)[i] for i in layers}
    if final_norm:
        modules[FINAL_NORM] = get_module(model, fam.final_norm)
    seen: dict[int | str, torch.Tensor] = {}
    handles = [module.register_forward_hook(_recorder(seen, key)) for key, module in modules.items()]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


class LayerRunner:
    """Calls a model's pieces (embedding, any decoder layer, final norm + head) directly."""

    def __init__(self, model: Any) -> None:
        fam = family_of(model)
        self.model = model
        self.layers = get_module(model, fam.layers)
        self.embed = get_module(model, fam.embed)
        self.norm = get_module(model, fam.final_norm)
        self.head = get_module(model, fam.lm_head)
        self.rotary = getattr(layer_parent(model, fam)[0], "rotary_emb", None)
        if self.rotary is None:
            raise UnsupportedArchitectureError(f"{fam.name}: no rotary embedding beside {fam.layers}", hint="layer subsets need a rotary-position model")
        pattern = fam.layer_pattern
        self.types = pattern.types_of(model.config) if pattern is not None else None  # per layer: its rope and mask
        self.window = {pattern.sliding: int(getattr(model.config, pattern.window))} if pattern is not None else {}
        self.typed_rope = "layer_type" in inspect.signature(self.rotary.forward).parameters

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @staticmethod
    def device_of(module: Any) -> torch.device:
        return next(module.parameters()).device

    def _placed(self, batch: PackedBatch, device: torch.device, layer_type: str | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The batch's mask and rotary ``(cos, sin)`` on ``device`` for layers of ``layer_type``, computed once.

        A sliding-window type masks keys ``window`` or more positions back (positions
        continue from a prompt into each continuation, so the distance is right in a packed row).
        """
        key = (device, layer_type)
        if key not in batch._placed:
            positions = batch.positions.to(device)
            probe = torch.zeros((), dtype=batch.bias.dtype, device=device)
            cos_sin = self.rotary(probe, position_ids=positions, layer_type=layer_type) if self.typed_rope else self.rotary(probe, position_ids=positions)
            bias = batch.bias.to(device)
            window = self.window.get(layer_type)
            if window is not None:
                far = (positions[:, :, None] - positions[:, None, :]) >= window  # [B, q, k]
                bias = bias.masked_fill(far.unsqueeze(1), torch.finfo(bias.dtype).min)
            batch._placed[key] = (bias, cos_sin)
        return batch._placed[key]

    def embed_batch(self, batch: PackedBatch) -> torch.Tensor:
        """Token embeddings: [B, S, d]."""
        return self.embed(batch.ids.to(self.device_of(self.embed)))

    def layer(self, index: int, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Decoder layer ``index`` on ``hidden`` [B, S, d] -> [B, S, d], on that layer's device."""
        module = self.layers[index]
        device = self.device_of(module)
        bias, cos_sin = self._placed(batch, device, self.types[index] if self.types else None)
        positions = batch.positions.to(device)
        return module(hidden.to(device), attention_mask=bias, position_ids=positions, position_embeddings=cos_sin)

    def logprobs(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Log-probabilities of the batch's predicted tokens ``batch.tgt``: [M], float32 on the CPU."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        picked = flat[batch.src.to(flat.device)]
        normed = self.norm(picked.to(self.device_of(self.norm)))
        logits = self.head(normed.to(self.device_of(self.head)))  # [M, V]
        return picked_logprobs(logits, torch.arange(logits.shape[0], device=logits.device), batch.tgt).cpu()

    def scores(self, hiddens: list[torch.Tensor], batches: list[PackedBatch], *, examples: int, conts: int) -> torch.Tensor:
        """Length-normalised log-likelihood of each continuation from final states: [examples, conts]."""
        logp = torch.cat([self.logprobs(hidden, batch) for hidden, batch in zip(hiddens, batches)])
        group = torch.cat([batch.group for batch in batches])
        return mean_by_group(logp, group, examples * conts).reshape(examples, conts)
