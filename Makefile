# make demo  - set up .venv and run the default experiment (report in runs/demo/report.html)
# make test  - set up .venv and run every test, slow end-to-end tests included
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast venv clean

# torch: the CUDA build where nvidia-smi sees a GPU, else the CPU build (.ci/install-torch says which it took)
$(STAMP): pyproject.toml requirements-offline.txt .ci/install-torch
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	bash .ci/install-torch $(BIN)/python 2.13.0
	$(BIN)/python -m pip install -q -e '.[embed,test]'
	$(BIN)/python -m pip install -q --no-deps -r requirements-offline.txt
	touch $(STAMP)

# The real OpenAI-compatible server the paraphraser tests start (builds from source once, ~5 min on 2 cores).
# Built portably: llama.cpp's default GGML_NATIVE=ON compiles for every instruction of the building CPU (on a 2-core
# Intel Xeon with AVX-512 and AMX that build segfaulted at the first multi-token decode: issue 27), and a .venv built
# on one CPU can crash on another. With GGML_NATIVE=OFF, the vendored ggml/CMakeLists.txt turns on SSE4.2, AVX, AVX2,
# BMI2, FMA and F16C and leaves AVX-512, AVX-VNNI and AMX off (and so ggml's AMX matmul kernels, which the packaged
# Q4_1 GGUF would use on such a Xeon): any x86-64 CPU with AVX2 runs it. --no-cache-dir: pip's wheel cache would
# hand back a native wheel built earlier, whatever CMAKE_ARGS says.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
$(TEST_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -q --no-cache-dir 'llama-cpp-python[server]==0.3.36'
	touch $(TEST_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/coherentize run

test: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -p no:cacheprovider tests

test-fast: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -p no:cacheprovider -m "not slow" tests

clean:
	rm -rf $(VENV) runs
