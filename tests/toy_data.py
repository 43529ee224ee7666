"""A tiny plain-format recommendation data set for the importance and selection tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_WORDS = "wireless mouse cable charger camera lens headphones kindle memory card black white fast laptop usb hdmi adapter".split()


def write_toy_data(out: Path, *, users: int = 16, items: int = 40, per_user: int = 7, seed: int = 0) -> Path:
    """A plain-format data set (interactions.tsv + items.jsonl) with made-up titles."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "items.jsonl").open("w") as f:
        for i in range(items):
            f.write(json.dumps({"item_id": 100 + i, "title": " ".join(rng.choice(_WORDS, size=4))}) + "\n")
    rows = ["user_id\titem_id\ttimestamp"]
    for u in range(users):
        for t, item in enumerate(rng.choice(items, size=per_user, replace=False)):
            rows.append(f"{u}\t{100 + item}\t{t}")
    (out / "interactions.tsv").write_text("\n".join(rows) + "\n")
    return out
