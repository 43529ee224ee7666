"""Bridges across the gaps left by removed layers (design §5): a registry of kinds.

A bridge kind fits on calibration hidden states of the original model and folds
exactly into standard weights, so the compact model stays a stock Llama/Qwen2.

Vocabulary. The compact model keeps ``K`` of the original's ``N`` layers (``kept``).
A *slot* is a place in the compact residual stream: slot 0 lies between the
embedding and compact layer 0, slot ``j + 1`` right after compact layer ``j``. A slot
is a *gap* when original layers were removed there; a bridge puts maps on gaps:

- ``mlp``: a d x d map ``T`` on the MLP output of the layer before the gap
  (``y -> T y``), folded as ``down_proj.weight <- T @ down_proj.weight``;
- ``rotation``: an orthogonal ``Q`` on the residual stream (``h -> Q h``), folded
  through RMSNorm into every weight that reads or writes the stream upstream of the gap
  and into the embedding (which therefore unties from the output layer).

Both are fitted gap by gap, left to right, with inputs from the compact model with the
earlier bridges applied and targets from the original at the end of the gap; position 0
(the attention-sink token) is left out. :func:`attach_bridge` gives the bridged but
unfolded model (forward hooks), :func:`fold_bridge` the standard one; tests prove they
agree.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch

from ollama_slim.errors import UsageError
from ollama_slim.models.families import Family, family_of, get_module
from ollama_slim.models.lm import pad_right

DEFAULT_RIDGE = 1e-2
CALIBRATION_BATCH = 8
OWN_TEXT_LENGTH = 64  # tokens a sequence of the model's own text, as general-text distillation samples them
Calibration = list[list[int]]  # token-id sequences; each starts with its BOS (position 0)


class BridgeFitter(Protocol):
    def __call__(self, *, original: Any, compact: Any, kept: list[int], calibration: Calibration | None) -> dict:
        """Fit and fold into ``compact`` in place; return a summary (JSON-able)."""


@dataclass(frozen=True)
class BridgeKind:
    name: str
    description: str
    fit_and_fold: BridgeFitter


BRIDGES: dict[str, BridgeKind] = {}


def register_bridge(name: str, description: str) -> Callable[[BridgeFitter], BridgeFitter]:
    def wrap(fn: BridgeFitter) -> BridgeFitter:
        BRIDGES[name] = BridgeKind(name=name, description=description, fit_and_fold=fn)
        return fn

    return wrap


# --- the fitted bridge ----------------------------------------------------------------


@dataclass
class GapMaps:
    """The maps on one gap: ``slot`` in ``0..K``; ``target`` = original layer whose output it imitates."""

    slot: int
    target: int
    mlp: torch.Tensor | None = None  # T [d, d]: MLP output of compact layer slot-1, y -> T y
    rotation: torch.Tensor | None = None  # Q [d, d], orthogonal: residual stream h -> Q h


@dataclass
class Bridge:
    """A fitted bridge: its kind and the maps on each gap (float32 tensors)."""

    kind: str
    gaps: list[GapMaps] = field(default_factory=list)

    def summary(self) -> dict:
        rows = [{"slot": g.slot, "target_layer": g.target, "maps": [m for m in ("mlp", "rotation") if getattr(g, m) is not None]} for g in self.gaps]
        return {"kind": self.kind, "gaps": rows}


def find_gaps(kept: list[int], *, num_layers: int) -> list[tuple[int, int]]:
    """``(slot, target_layer)`` of every gap: where original layers were removed.

    The target is the original layer whose output the stream at that slot should match:
    ``kept[j+1] - 1`` inside, ``kept[0] - 1`` before the first kept layer, ``N - 1`` after the last.
    """
    ends = [*kept, num_layers]
    gaps = [(0, kept[0] - 1)] if kept[0] > 0 else []
    for j in range(len(kept)):
        if ends[j + 1] > kept[j] + 1:
            gaps.append((j + 1, ends[j + 1] - 1))
    return gaps


# --- the bridged (unfolded) model: forward hooks ----------------------------------------


def _replace_output(output: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    return fn(output)


def _apply(matrix: torch.Tensor) -> Callable[[Any, Any, Any], Any]:
    """A forward hook mapping the module's output rows ``x [..., d] -> x @ matrix.T``."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        return _replace_output(output, lambda x: x @ matrix.to(device=x.device, dtype=x.dtype).T)

    return hook


def _slot_module(model: Any, fam: Family, slot: int) -> Any:
    """The module whose output is the residual stream at ``slot`` (before its bridge)."""
    return get_module(model, fam.embed) if slot == 0 else get_module(model, fam.layers)[slot - 1]


@contextmanager
def attach_bridge(model: Any, bridge: Bridge) -> Iterator[Any]:
    """The bridged but unfolded model: ``bridge``'s maps as forward hooks while inside."""
    fam = family_of(model)
    layers = get_module(model, fam.layers)
    handles = []
    try:
        for gap in bridge.gaps:
            if gap.mlp is not None:
                down = get_module(layers[gap.slot - 1], fam.mlp_out)
                handles.append(down.register_forward_hook(_apply(gap.mlp)))
            if gap.rotation is not None:
                handles.append(_slot_module(model, fam, gap.slot).register_forward_hook(_apply(gap.rotation)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


# --- calibration ----------------------------------------------------------------------


def calibration_batches(*, tokenizer: Any, dataset: Any, max_tokens: int = 8192, users: int | None = 2000, history: int = 5, seed: int = 0) -> Calibration:
    """Token sequences from the train split (prompt + target title) for fitting bridges.

    One example per user (the last train position), users drawn with ``seed``, until
    ``max_tokens`` tokens are collected. Returns a list of token-id lists.
    """
    from ollama_slim.recsys.data import examples, select_users
    from ollama_slim.recsys.prompt import PromptConfig, encode_example

    config = PromptConfig(history=history, title_words=10, title_tokens=16)
    out: Calibration = []
    total = 0
    for example in examples(dataset, split="train", history=history, users=select_users(dataset, users, seed=seed), last_only=True):
        prompt, target = encode_example(tokenizer, dataset, example, config)
        out.append(prompt + target)
        total += len(prompt) + len(target)
        if total >= max_tokens:
            break
    return out


def mixed_calibration(*, tokenizer: Any, datasets: Sequence[Any], max_tokens: int = 8192, history: int = 5, seed: int = 0,
                      own_text_of: Any = None) -> Calibration:
    """:func:`calibration_batches` of every data set in ``datasets``, ``max_tokens`` shared evenly:
    bridges fitted on each domain the compact model is meant to serve, not only the one it heals on.
    With ``own_text_of`` (a model), text that model samples from its start token is one more share
    (:func:`own_text_calibration`): what the model writes of everything else, no other data set needed."""
    if not datasets and own_text_of is None:
        raise UsageError("no data set to calibrate the bridges on", hint="pass at least one data set")
    share = max(max_tokens // (len(datasets) + (own_text_of is not None)), 1)
    out = [seq for dataset in datasets for seq in calibration_batches(tokenizer=tokenizer, dataset=dataset, max_tokens=share, history=history, seed=seed)]
    return out + (own_text_calibration(own_text_of, tokenizer, max_tokens=share, seed=seed) if own_text_of is not None else [])


def own_text_calibration(model: Any, tokenizer: Any, *, max_tokens: int, length: int = OWN_TEXT_LENGTH, seed: int = 0) -> Calibration:
    """About ``max_tokens`` tokens of ``model``'s own text: sequences of ``length`` tokens it samples
    from its start token (seeded; the sampling of general-text distillation, :mod:`ollama_slim.slimming.finetune.general`)."""
    from ollama_slim.slimming.finetune.general import teacher_corpus

    return teacher_corpus(model, tokenizer, texts=max(max_tokens // (length + 1), 1), tokens=length, seed=seed)


def random_calibration(model: Any, *, sequences: int = 32, length: int = 64, seed: int = 0) -> Calibration:
    """A stand-in when no data is given: seeded random token ids (weak; pass real data)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = model.get_input_embeddings().weight.shape[0]
    return torch.randint(0, vocab, (sequences, length), generator=gen).tolist()


def _batches(calibration: Calibration, *, pad: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(ids [B, L], attention [B, L], rows [B, L] bool)``: rows = real tokens but position 0."""
    for start in range(0, len(calibration), CALIBRATION_BATCH):
        chunk = calibration[start : start + CALIBRATION_BATCH]
        ids, attention = pad_right(chunk, pad)
        rows = attention.bool().clone()
        rows[:, 0] = False
        yield ids, attention, rows


@torch.no_grad()
def _capture(model: Any, modules: dict[str, Any], calibration: Calibration) -> dict[str, torch.Tensor]:
    """Run ``model``'s decoder over ``calibration``; outputs of ``modules`` at fit rows -> ``[n, d]`` each."""
    grabbed: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    current: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Callable[[Any, Any, Any], None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            current[name] = output[0] if isinstance(output, tuple) else output

        return hook

    handles = [module.register_forward_hook(grab(name)) for name, module in modules.items()]
    device = model.get_input_embeddings().weight.device
    trunk = get_module(model, family_of(model).layers.rpartition(".")[0])  # no LM head: hidden states only
    try:
        for ids, attention, rows in _batches(calibration):
            trunk(input_ids=ids.to(device), attention_mask=attention.to(device))
            for name in modules:
                grabbed[name].append(current[name][rows.to(device)].float().cpu())
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in grabbed.items()}


# --- fitting --------------------------------------------------------------------------


def fit_linear(inputs: torch.Tensor, targets: torch.Tensor, *, ridge: float = DEFAULT_RIDGE) -> torch.Tensor:
    """``T [d, d]`` minimising ``|inputs T^T - targets|^2 + lam |T - I|^2`` (ridge toward identity).

    ``inputs``, ``targets``: ``[n, d]``; ``lam = ridge * mean(diag(inputs^T inputs))``.
    """
    x, z = inputs.double(), targets.double()
    gram = x.T @ x
    lam = ridge * gram.diagonal().mean()
    eye = torch.eye(gram.shape[0], dtype=torch.float64)
    solution = torch.linalg.solve(gram + lam * eye, x.T @ z + lam * eye)  # = T^T
    return solution.T.float()


def fit_rotation(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Orthogonal Procrustes: ``Q [d, d]`` minimising ``|inputs Q^T - targets|`` (``[n, d]`` each)."""
    u, _, vh = torch.linalg.svd(inputs.double().T @ targets.double())
    return (u @ vh).T.float()


def _fit_gap(gap: GapMaps, captured: dict[str, torch.Tensor], target: torch.Tensor, maps: tuple[str, ...], ridge: float) -> None:
    """Fill ``gap``'s maps from the compact stream at its slot (``[n, d]``) and ``target``."""
    stream = captured["stream"]
    if "mlp" in maps and gap.slot > 0:
        y = captured["mlp"]
        residual = stream - y
        gap.mlp = fit_linear(y, target - residual, ridge=ridge)
        stream = residual + y @ gap.mlp.double().T.float()
    if "rotation" in maps:
        gap.rotation = fit_rotation(stream, target)


def gap_targets(original: Any, *, kept: list[int], calibration: Calibration) -> dict[int, torch.Tensor]:
    """The original's hidden states at the end of every gap: ``{target_layer: [n, d]}``."""
    layers = get_module(original, family_of(original).layers)
    wanted = {str(t): layers[t] for _, t in find_gaps(kept, num_layers=len(layers))}
    return {int(k): v for k, v in _capture(original, wanted, calibration).items()}


def fit_bridge(kind: str, *, original: Any, compact: Any, kept: list[int], calibration: Calibration, ridge: float = DEFAULT_RIDGE,
               targets: dict[int, torch.Tensor] | None = None) -> Bridge:
    """Fit ``kind``'s maps on every gap, left to right; ``compact``'s weights are untouched.

    ``targets``: :func:`gap_targets` of the same calibration, when already computed.
    """
    maps = _KIND_MAPS[kind]
    fam = family_of(original)
    gaps = [GapMaps(slot=s, target=t) for s, t in find_gaps(kept, num_layers=len(get_module(original, fam.layers)))]
    bridge = Bridge(kind=kind)
    if not maps or not gaps:
        return bridge
    targets = targets if targets is not None else gap_targets(original, kept=kept, calibration=calibration)
    layers = get_module(compact, fam.layers)
    for gap in gaps:
        modules = {"stream": _slot_module(compact, fam, gap.slot)}
        if gap.slot > 0:
            modules["mlp"] = get_module(layers[gap.slot - 1], fam.mlp_out)
        with attach_bridge(compact, bridge):
            captured = _capture(compact, modules, calibration)
        _fit_gap(gap, captured, targets[gap.target], maps, ridge)
        bridge.gaps.append(gap)
    return bridge


# --- folding --------------------------------------------------------------------------


@torch.no_grad()
def fold_bridge(model: Any, bridge: Bridge) -> None:
    """Fold ``bridge`` into ``model``'s weights in place: a standard model, same logits.

    MLP maps go first (``down_proj <- T down_proj``), then the rotations through RMSNorm.
    """
    fam = family_of(model)
    layers = get_module(model, fam.layers)
    for gap in bridge.gaps:
        if gap.mlp is not None:
            fold_mlp_map(layers[gap.slot - 1], fam, gap.mlp.double())
    rotations = {g.slot: g.rotation.double() for g in bridge.gaps if g.rotation is not None}
    if rotations:
        fold_rotations(model, rotations)


def fold_mlp_map(layer: Any, fam: Family, matrix: torch.Tensor) -> None:
    """The MLP of ``layer`` writes ``matrix @ y`` instead of ``y`` (family table's ``mlp_fold``).

    ``out_in`` (an ``nn.Linear``): ``W <- M W``, ``b <- M b``. ``in_out`` (experts that
    compute ``x @ W[e] + b[e]``, ``W [E, f, d]``, ``b [E, d]``): ``W[e] <- W[e] M^T``,
    ``b[e] <- b[e] M^T`` for every expert; exact because the router's top-k weights sum
    to one and nothing is added outside the weighted sum of experts.
    """
    spec = fam.mlp_fold
    for path in (spec["weight"], spec.get("bias")):
        param = _maybe_param(layer, path)
        if param is None:
            continue
        value = param.detach().double()
        folded = value @ matrix.T if spec["layout"] == "in_out" else matrix @ value
        param.data.copy_(folded.to(param.dtype))


def _maybe_param(root: Any, dotted: str | None) -> Any:
    """The parameter at ``dotted`` (``mlp.down_proj.weight``), or None when the module has none there."""
    if not dotted:
        return None
    owner, _, name = dotted.rpartition(".")
    module = get_module(root, owner) if owner else root
    return getattr(module, name, None)


def _left_multiply(linear: Any, matrix: torch.Tensor) -> None:
    """``linear`` writes ``matrix @ (W x + b)``: ``W <- M W``, ``b <- M b`` (float64 math)."""
    linear.weight.copy_((matrix @ linear.weight.double()).to(linear.weight.dtype))
    if getattr(linear, "bias", None) is not None:
        linear.bias.copy_((matrix @ linear.bias.double()).to(linear.bias.dtype))


def _right_multiply(linear: Any, matrix: torch.Tensor) -> None:
    """``linear`` reads ``matrix^-1``-rotated input: ``W <- W M`` (float64 math)."""
    linear.weight.copy_((linear.weight.double() @ matrix).to(linear.weight.dtype))


def _fold_norm(norm: Any, linears: list[Any], fam: Family) -> None:
    """RMSNorm gain ``g`` into the linears it feeds: ``W <- W diag(g)``, the norm left as identity.

    ``g`` is ``w`` for ``x * w`` norms and ``1 + w`` for ``x * (1 + w)`` ones (family ``norm_form``).
    """
    gain = norm.weight.double() + (1.0 - fam.identity_norm)
    for linear in linears:
        _right_multiply(linear, torch.diag(gain))
    norm.weight.fill_(fam.identity_norm)


def segment_maps(rotations: dict[int, torch.Tensor], *, num_kept: int) -> list[torch.Tensor | None]:
    """``S_s`` for ``s`` in ``0..K`` (None = identity): the folded stream after slot ``s`` is ``S_s h``.

    ``S_K = I`` (the final norm and LM head stay); ``S_{s-1} = S_s Q_s``. Entry ``K + 1``
    is the embedding's map ``S_0 Q_0``.
    """
    maps: list[torch.Tensor | None] = [None] * (num_kept + 1)
    current: torch.Tensor | None = None
    for slot in range(num_kept, -1, -1):
        maps[slot] = current
        q = rotations.get(slot)
        if q is not None:
            current = q if current is None else current @ q
    return [*maps, current]


def fold_rotations(model: Any, rotations: dict[int, torch.Tensor]) -> None:
    """Fold orthogonal stream maps ``{slot: Q [d, d]}`` into ``model`` (design §5).

    Layer ``j`` reads and writes the stream of segment ``j``: input projections take
    ``W diag(g) S_j^T`` (gains folded, norm weights set to 1), output projections ``S_j W``;
    the embedding takes ``S_0 Q_0`` and unties from the LM head.
    """
    fam = family_of(model)
    layers = get_module(model, fam.layers)
    maps = segment_maps(rotations, num_kept=len(layers))
    for j, layer in enumerate(layers):
        if maps[j] is not None:
            _rotate_layer(layer, fam, maps[j])
    embed_map = maps[-1]
    if embed_map is not None:
        untie_lm_head(model)
        embed = get_module(model, fam.embed)
        embed.weight.copy_((embed.weight.double() @ embed_map.T).to(embed.weight.dtype))


def _rotate_layer(layer: Any, fam: Family, s: torch.Tensor) -> None:
    """Express ``layer`` in the stream basis ``S`` (orthogonal ``[d, d]``)."""
    for norm_name, inputs, output in ((fam.input_norm, fam.attn_in, fam.attn_out), (fam.post_attention_norm, fam.mlp_in, fam.mlp_out)):
        readers = [get_module(layer, name) for name in inputs]
        _fold_norm(get_module(layer, norm_name), readers, fam)
        for linear in readers:
            _right_multiply(linear, s.T)
        _left_multiply(get_module(layer, output), s)


def untie_lm_head(model: Any) -> None:
    """Give the LM head its own copy of the embedding and mark the config untied."""
    fam = family_of(model)
    head = get_module(model, fam.lm_head)
    embed = get_module(model, fam.embed)
    if head.weight is embed.weight or head.weight.data_ptr() == embed.weight.data_ptr():
        head.weight = torch.nn.Parameter(embed.weight.detach().clone())
    model.config.tie_word_embeddings = False
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    if text_config is not None:
        text_config.tie_word_embeddings = False


# --- how far a compact model is from the original ---------------------------------------


@torch.no_grad()
def next_token_agreement(*, original: Any, compact: Any, sequences: Calibration) -> dict[str, float]:
    """KL(original || compact) of the next-token distribution and top-1 agreement.

    Averaged over every real position of ``sequences`` (token-id lists).
    """
    device = original.get_input_embeddings().weight.device
    kl_sum, agree, count = 0.0, 0, 0
    for ids, attention, _ in _batches(sequences):
        ids, attention = ids.to(device), attention.to(device)
        logp = torch.log_softmax(original(input_ids=ids, attention_mask=attention).logits.float(), -1)
        logq = torch.log_softmax(compact(input_ids=ids, attention_mask=attention).logits.float(), -1)
        mask = attention.bool()
        kl = (logp.exp() * (logp - logq)).sum(-1)
        kl_sum += float(kl[mask].sum())
        agree += int((logp.argmax(-1) == logq.argmax(-1))[mask].sum())
        count += int(mask.sum())
    return {"kl": kl_sum / max(count, 1), "top1": agree / max(count, 1), "tokens": count}


# --- the registered kinds ---------------------------------------------------------------

_KIND_MAPS: dict[str, tuple[str, ...]] = {}


def _fit_and_fold(kind: str) -> BridgeFitter:
    def fit_and_fold(*, original: Any, compact: Any, kept: list[int], calibration: Calibration | None) -> dict:
        source = "data"
        if calibration is None:
            calibration, source = random_calibration(original), "random tokens (no data given)"
        if not calibration:
            raise UsageError(f"bridge {kind} got no calibration sequences", hint="pass a data set with train interactions")
        bridge = fit_bridge(kind, original=original, compact=compact, kept=list(kept), calibration=calibration)
        fold_bridge(compact, bridge)
        tokens = sum(len(s) for s in calibration)
        return {**bridge.summary(), "calibration": {"source": source, "sequences": len(calibration), "tokens": tokens}, "ridge": DEFAULT_RIDGE}

    return fit_and_fold


def _register_kind(name: str, maps: tuple[str, ...], description: str) -> None:
    _KIND_MAPS[name] = maps
    if maps:
        register_bridge(name, description)(_fit_and_fold(name))


@register_bridge("none", "plain dropping: the baseline every other bridge must beat")
def _none(*, original: Any, compact: Any, kept: list[int], calibration: Calibration | None) -> dict:
    return {"kind": "none"}


_KIND_MAPS["none"] = ()
_register_kind("mlp-fold", ("mlp",), "least-squares d x d map on the MLP output before each gap, folded into down_proj (embeddings stay tied)")
_register_kind("rotation", ("rotation",), "orthogonal Procrustes map on the residual stream at each gap, folded through RMSNorm (unties the embedding)")
_register_kind("mlp-fold+rotation", ("mlp", "rotation"), "mlp-fold, then an orthogonal rotation at each gap (unties the embedding)")
