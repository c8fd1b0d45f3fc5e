# make demo  - set up .venv and run the default experiment (report in runs/demo/report.html)
# make test  - set up .venv and run every test, slow end-to-end tests included
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast venv clean

$(STAMP): pyproject.toml requirements-offline.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[embed,test]'
	$(BIN)/python -m pip install -q --no-deps -r requirements-offline.txt
	$(BIN)/python -m pip install -q 'llama-cpp-python[server]==0.3.36'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/coherentize run

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -p no:cacheprovider tests

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -p no:cacheprovider -m "not slow" tests

clean:
	rm -rf $(VENV) runs
