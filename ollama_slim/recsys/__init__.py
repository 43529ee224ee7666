"""Recommendation data and evaluation: data sets, the prompt, candidate scorers, metrics, quality retained."""
