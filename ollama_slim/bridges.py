"""Bridges across the gaps left by removed layers (design §5): a registry of kinds.

A bridge kind fits on calibration hidden states of the original model and folds
exactly into standard weights, so the compact model stays a stock Llama/Qwen2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol


class BridgeFitter(Protocol):
    def __call__(self, *, original: Any, compact: Any, kept: list[int], calibration: Any) -> dict:
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


@register_bridge("none", "plain dropping: the baseline every other bridge must beat")
def _none(*, original: Any, compact: Any, kept: list[int], calibration: Any) -> dict:
    return {"kind": "none"}
