"""Recommendation data: interaction sequences, leave-one-out splits, seeded candidates.

Design §3: per user, items in chronological order (ties keep file order); the last
item is the test target, the second-to-last the validation target, the rest train.
Formats register themselves in ``LOADERS`` (plain, Amazon 2014/2023, MovieLens
GroupLens, RecBole atomic files); named data sets (``movielens-100k``) in ``NAMED``.
"""

from ollama_slim.recsys.data import amazon
from ollama_slim.recsys.data import movielens  # noqa: F401  (register their loaders and named data sets)
from ollama_slim.recsys.data.core import CandidateSampler, Dataset, Example, examples, make_dataset, sample_candidates, select_users, train_popularity
from ollama_slim.recsys.data.loaders import LOADERS, NAMED, find_dataset, load_dataset

__all__ = [
    "CandidateSampler", "Dataset", "Example", "LOADERS", "NAMED", "examples", "find_dataset", "load_dataset", "make_dataset",
    "sample_candidates", "select_users", "train_popularity",
]
