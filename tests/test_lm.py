"""The language-model scoring package: one renumbering for evaluation and build, the shared score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ollama_slim.errors import SelectionError
from ollama_slim.models.lm import layer_subset, mean_by_group, mean_token_logprob
from ollama_slim.models.modeling import load
from ollama_slim.slimming.build import slice_model


def _layer_config(model) -> tuple:
    """What renumbering touches: the layer count, layer types and each attention's ``layer_idx``."""
    idx = [m.layer_idx for layer in model.model.layers for m in layer.modules() if hasattr(m, "layer_idx")]
    return model.config.num_hidden_layers, getattr(model.config, "layer_types", None), idx


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2"])
def test_layer_subset_is_the_compact_model_and_leaves_no_trace(fixture: str, request: pytest.FixtureRequest) -> None:
    model, _ = load(request.getfixturevalue(fixture))
    before = model.config.to_dict()
    kept = [1, 2, 4]
    with layer_subset(model, kept):
        inside = _layer_config(model)
    assert inside == _layer_config(slice_model(model, kept))
    assert inside[0] == 3 and inside[2] == [0, 1, 2]
    assert model.config.to_dict() == before  # nothing added (e.g. layer_types=None) or left shrunk
    assert _layer_config(model)[2] == list(range(6))


def test_layer_subset_refuses_an_inconsistent_config(tiny_qwen2: Path) -> None:
    model, _ = load(tiny_qwen2)
    model.config.layer_types = model.config.layer_types[:5]
    with pytest.raises(SelectionError, match="config.layer_types has 5 entries for 6 layers"):
        with layer_subset(model, [0, 1]):
            pass
    assert len(model.model.layers) == 6


def test_mean_token_logprob_is_the_length_normalised_score() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
    ids = torch.tensor([[1, 4, 6], [0, 2, 2]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    logp = logits.numpy() - np.log(np.exp(logits.numpy()).sum(-1, keepdims=True))
    want = [np.mean([logp[0, k, ids[0, k]] for k in range(3)]), np.mean([logp[1, k, ids[1, k]] for k in range(2)])]
    got = mean_token_logprob(logits, ids, mask)
    assert got.dtype == torch.float64  # the llama.cpp backend's float64 stays float64
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mean_token_logprob(logits[0], ids[0]).item(), want[0], rtol=0, atol=1e-12)
    assert mean_token_logprob(logits.half(), ids, mask).dtype == torch.float32


def test_mean_by_group() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 10.0])
    got = mean_by_group(values, torch.tensor([2, 0, 2, 0]), 4)
    assert got.tolist() == [6.0, 0.0, 2.0, 0.0]
