"""Quality retained on lift: the number the report quotes."""

import numpy as np
import pytest

from ollama_slim.recsys.retained import retained_on_lift


def test_retained_is_share_of_lift_not_raw_ratio() -> None:
    rng = np.random.default_rng(0)
    full = np.clip(rng.normal(0.5, 0.2, 400), 0, 1)
    slim = full - 0.1  # keeps (0.5 - 0.1 - r) / (0.5 - r) of the lift
    r = retained_on_lift(slim, full, random=0.227)
    expected = (slim.mean() - 0.227) / (full.mean() - 0.227)
    assert r.retained == pytest.approx(expected)
    assert r.raw == pytest.approx(slim.mean() / full.mean())
    assert r.retained < r.raw  # with a chance level above 0 the raw ratio flatters
    assert r.retained_low < r.retained < r.retained_high
    assert r.significant


def test_no_lift_is_not_significant() -> None:
    rng = np.random.default_rng(1)
    full = rng.choice([0.0, 1 / np.log2(2), 1 / np.log2(11)], size=200)
    r = retained_on_lift(full, full, random=float(full.mean()))
    assert not r.significant
