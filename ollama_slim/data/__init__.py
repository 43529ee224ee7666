"""Recommendation data: interaction sequences, leave-one-out splits, seeded candidates.

Design §3: per user, items in chronological order (ties keep file order); the last
item is the test target, the second-to-last the validation target, the rest train.
"""

from .core import CandidateSampler, Dataset, Example, examples, sample_candidates, select_users, train_popularity
from .loaders import LOADERS, load_dataset

__all__ = [
    "CandidateSampler", "Dataset", "Example", "LOADERS", "examples", "load_dataset", "sample_candidates", "select_users", "train_popularity",
]
