"""Where a model comes from and how it is laid out: Ollama tags, sources (HF, Ollama store, packaged GGUF), family tables, loading, language-model scoring, licences."""
