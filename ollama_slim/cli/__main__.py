"""``python -m ollama_slim.cli`` (e.g. under ``accelerate launch -m ollama_slim.cli``)."""

from . import main

main()
