"""Ollama: the API client's one error path, Modelfiles, registering, publishing to the registry."""
