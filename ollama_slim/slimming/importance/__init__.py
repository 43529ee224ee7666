"""Layer importance for a recommendation task (design §4): scorers, fusion, the score stage.

``score_layers(ScoreConfig(model=..., data=...))`` is the stage; ``METHODS`` the scorer
registry (the CLI's ``--methods`` choices); ``subsets`` caches the hidden states of layer
subsets (run by :class:`ollama_slim.models.lm.LayerRunner`) by prefix, shared with
:mod:`ollama_slim.slimming.selection`.
"""

from ollama_slim.slimming.importance.methods import METHODS, ImportanceMethod, MethodScores, ScoringContext, mean_rank, register_method, shapley_contributions
from ollama_slim.slimming.importance.probes import SubsetEvaluator, build_probe, ndcg_at, probe_examples, random_ndcg, target_nll
from ollama_slim.slimming.importance.stage import DEFAULT_METHODS, ScoreConfig, ScoreResult, default_run_dir, open_model, read_scores, score_layers
from ollama_slim.slimming.importance.subsets import PrefixCache

__all__ = [
    "DEFAULT_METHODS", "ImportanceMethod", "METHODS", "MethodScores", "PrefixCache", "ScoreConfig", "ScoreResult", "ScoringContext",
    "SubsetEvaluator", "build_probe", "default_run_dir", "mean_rank", "ndcg_at", "open_model", "probe_examples",
    "random_ndcg", "read_scores", "register_method", "score_layers", "shapley_contributions", "target_nll",
]
