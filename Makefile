PYTHON ?= python3
# llama-cpp-python compiles from source; a portable build for any x86-64 CPU.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: setup test test-fast
setup:
	$(PYTHON) -m pip install -e ".[cpu,offline,dev]"
	$(PYTHON) -m pip install --no-deps recbole==1.2.1

test:
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not slow"
