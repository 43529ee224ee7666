"""PNG plots of the score and select stages (matplotlib Agg, written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ollama_slim import paths


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _save(fig: Any, target: Path) -> Path:
    import matplotlib.pyplot as plt

    with paths.atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return target


def plot_scores(target: Path, *, rows: dict[str, list[float]], title: str) -> Path:
    """Heat map: one row per method (scores scaled to [0, 1] per row), layers across."""
    import numpy as np

    names = list(rows)
    grid = []
    for name in names:
        v = np.asarray(rows[name], dtype=float)
        span = np.nanmax(v) - np.nanmin(v)
        grid.append((v - np.nanmin(v)) / span if span > 0 else np.zeros_like(v))
    num_layers = len(grid[0])
    fig, ax = _figure(max(6.0, 0.32 * num_layers + 2), 0.5 * len(names) + 1.6)
    image = ax.imshow(np.vstack(grid), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks(range(num_layers), [str(i) for i in range(num_layers)], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="importance (scaled per row)")
    return _save(fig, target)


def plot_selection(target: Path, *, steps: list[dict[str, Any]], full: dict[str, float], chance: float, title: str) -> Path:
    """Validation title loss (left) and NDCG@10 (right, chance dashed) against the layers kept."""
    sizes = [len(s["layers"]) for s in steps]
    fig, ax = _figure(7.0, 4.0)
    ax.plot(sizes, [s["val_loss"] for s in steps], "o-", color="tab:red", label="val title loss")
    ax.axhline(full["val_loss"], color="tab:red", linestyle=":", label="full model loss")
    ax.set_xlabel("layers kept")
    ax.set_ylabel("validation title loss", color="tab:red")
    right = ax.twinx()
    right.plot(sizes, [s["ndcg10"] for s in steps], "s-", color="tab:blue", label="NDCG@10")
    right.axhline(full["ndcg10"], color="tab:blue", linestyle=":")
    right.axhline(chance, color="grey", linestyle="--", linewidth=0.8)
    right.set_ylabel("validation NDCG@10", color="tab:blue")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", fontsize=8)
    return _save(fig, target)
