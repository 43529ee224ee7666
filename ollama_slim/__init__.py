"""ollama-slim: a compact, recommendation-tuned twin of an Ollama model.

The library is the product; the ``ollama-slim`` CLI only parses options, calls
one function per stage and shows the result.
"""

__version__ = "0.1.0"
