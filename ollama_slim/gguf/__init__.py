"""GGUF export: the writer, llama.cpp's acceptance check, header reading, tokenizer fields."""
