"""``python -m ollama_slim.cli`` (e.g. under ``accelerate launch -m ollama_slim.cli``)."""

from ollama_slim.cli import main

main()
