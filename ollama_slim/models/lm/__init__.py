"""Language-model scoring, the one place for it: importance, selection, build, healing and evaluation call it.

- :mod:`.batching`: right-padding (:func:`pad_right`) and packing a prompt with its
  continuations in one row (:func:`pack`); where the target's logits sit (:func:`target_positions`);
- :mod:`.titles`: title logits and NLL at the target positions only (:func:`title_nll`);
- :mod:`.candidates`: candidate scores, the length-normalised log-likelihood
  (:func:`mean_token_logprob`): on a shared prompt's KV cache (:func:`score_shared_prefix`),
  naively (:func:`score_naive`), or packed and grad-enabled (:func:`candidate_scores`);
- :mod:`.layers`: running a subset of layers, renumbered (:func:`layer_subset`) or piece by
  piece (:class:`LayerRunner`); recording layer outputs during a forward (:func:`recorded`).
"""

from ollama_slim.models.lm.batching import PackedBatch, Row, pack, pad_right, target_positions
from ollama_slim.models.lm.candidates import (
    PackedLogits, candidate_logits, candidate_scores, compute_dtype, mean_by_group, mean_token_logprob, picked_logprobs, score_naive,
    score_shared_prefix,
)
from ollama_slim.models.lm.layers import FINAL_NORM, LayerRunner, check_subset, layer_parent, layer_subset, recorded, shrunk_config
from ollama_slim.models.lm.titles import Pair, nll_per_title, per_title_mean, title_logits, title_nll

__all__ = [
    "FINAL_NORM", "LayerRunner", "PackedBatch", "PackedLogits", "Pair", "Row", "candidate_logits", "candidate_scores", "check_subset", "compute_dtype",
    "layer_parent", "layer_subset", "mean_by_group", "mean_token_logprob", "nll_per_title", "pack", "pad_right", "per_title_mean",
    "picked_logprobs", "recorded", "score_naive", "score_shared_prefix", "shrunk_config", "target_positions", "title_logits", "title_nll",
]
