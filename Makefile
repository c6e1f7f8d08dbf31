# Two entry points: `make demo` and `make test`. Both create .venv and install pinned versions.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test bench docs clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[convert,test]"
	touch $(STAMP)

install: $(STAMP)

# The main job end to end on the embedded default (SQLite store + local artifacts in .mlflow/).
demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python benchmarks/pyfunc_overhead.py

docs: $(STAMP)
	$(BIN)/python -m mlflow_tflite_keras.converter.docs > docs/operators.md

clean:
	rm -rf $(VENV) .mlflow
