"""The speed benchmark: original vs slim in one run, backends (Ollama API, llama.cpp workers)."""
