"""Layer-type patterns (sliding-window / full attention) as llama.cpp and Ollama run them.

For families with a ``layer_pattern`` (gemma3: five sliding layers to one full; gpt-oss:
alternating), Ollama's engine and older llama.cpp builds decide a layer's type from its
index in the GGUF, not from a per-layer list. A compact model is therefore only run as
trained when each kept layer lands on a position of its own type: ``types(kept) ==
rule(len(kept))``. Selection keeps to such sets, and a user's ``--layers`` that breaks the
pattern is refused with the layer and the reason. (The export writes the per-layer
``sliding_window_pattern`` array as well, which the bundled llama.cpp honours.)
"""

from __future__ import annotations

from typing import Any, Iterable

from ollama_slim.errors import SelectionError
from ollama_slim.models.families import Family


def original_types(fam: Family, config: Any) -> list[str] | None:
    """Per-layer types of the original model (None for families without a pattern)."""
    return fam.layer_pattern.types_of(config) if fam.layer_pattern is not None else None


def matches(fam: Family, types: list[str] | None, kept: Iterable[int]) -> bool:
    """Whether ``kept`` (sorted) puts every layer on a position of its own type."""
    return first_mismatch(fam, types, kept) is None


def first_mismatch(fam: Family, types: list[str] | None, kept: Iterable[int]) -> tuple[int, int, str, str] | None:
    """``(layer, compact position, its type, the position's type)`` of the first misplaced layer, or None."""
    if fam.layer_pattern is None or types is None:
        return None
    kept = list(kept)
    rule = fam.layer_pattern.rule(len(kept))
    for j, layer in enumerate(kept):
        if types[layer] != rule[j]:
            return layer, j, types[layer], rule[j]
    if fam.layer_pattern.require_sliding and fam.layer_pattern.sliding not in rule:
        return kept[0], 0, types[kept[0]], fam.layer_pattern.sliding
    return None


def feasible(fam: Family, types: list[str] | None, *, must: Iterable[int], may: Iterable[int], count: int) -> bool:
    """Whether some set of ``count`` layers holding all of ``must`` (plus some of ``may``) matches the pattern.

    A dynamic programme over the candidates in layer order: ``reach[j]`` = the first ``j``
    positions of the rule can be filled so far.
    """
    if fam.layer_pattern is None or types is None:
        return len(set(must)) <= count <= len(set(must) | set(may))
    must = set(must)
    rule = fam.layer_pattern.rule(count)
    if fam.layer_pattern.require_sliding and fam.layer_pattern.sliding not in rule:
        return False
    reach = {0}
    for layer in sorted(must | set(may)):
        taken = {j + 1 for j in reach if j < count and types[layer] == rule[j]}
        reach = taken if layer in must else reach | taken
        if not reach:
            return False
    return count in reach


def check_kept(fam: Family, types: list[str] | None, kept: list[int]) -> None:
    """A :class:`SelectionError` naming the first layer that lands on a position of the other type."""
    bad = first_mismatch(fam, types, kept)
    if bad is None:
        return
    layer, position, its, wanted = bad
    pattern = fam.layer_pattern
    example = suggest(fam, types, len(kept), prefer=kept)
    why = (f"layer {layer} is {its} but would be compact layer {position}, where llama.cpp and Ollama run {wanted}"
           if its != wanted else f"a {fam.gguf_arch} GGUF needs at least one {pattern.sliding} layer")
    raise SelectionError(f"--layers breaks {fam.name}'s layer pattern: {why}",
                         hint=f"keep layers whose types follow {_rule_text(fam)}" + (f", e.g. {','.join(map(str, example))}" if example else ""))


def suggest(fam: Family, types: list[str] | None, count: int, *, prefer: Iterable[int] = ()) -> list[int] | None:
    """A pattern-matching set of ``count`` layers, taking ``prefer`` layers where it can (greedy, in layer order)."""
    everything = range(len(types or []))
    chosen: list[int] = []
    pool = set(everything)
    for layer in [*sorted(set(prefer)), *everything]:
        if layer in chosen or len(chosen) == count:
            continue
        if feasible(fam, types, must=[*chosen, layer], may=pool - {*chosen, layer}, count=count):
            chosen.append(layer)
    return sorted(chosen) if len(chosen) == count else None


def _rule_text(fam: Family) -> str:
    pattern = fam.layer_pattern
    short = {pattern.sliding: "S", pattern.full: "F"}
    return "".join(short[t] for t in pattern.rule(pattern.period * 2)) + "..."
