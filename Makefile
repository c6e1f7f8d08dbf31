# Two entry points: `make demo` and `make test`. Both create .venv and install pinned versions.
# `make serve` / `make ui` then serve the demo's model / open the MLflow UI on its store.
# Nothing needs an activated venv: MLflow starts uvicorn by name, so .venv/bin goes first on PATH.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The embedded store `make demo` writes to (unless MLFLOW_TRACKING_URI is set).
TRACKING_URI ?= $(or $(MLFLOW_TRACKING_URI),sqlite:///$(CURDIR)/.mlflow/mlflow.db)
MODEL  ?= models:/digits-tflite/1
PORT   ?= 5001
UI_PORT ?= 5000

.PHONY: install demo serve ui test test-jax test-torch bench docs clean java browser postgres

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[convert,test]"
	touch $(STAMP)

install: $(STAMP)

# The main job end to end on the embedded default (SQLite store + local artifacts in .mlflow/).
demo: $(STAMP)
	$(BIN)/python examples/demo.py
	$(BIN)/python examples/roundtrip.py

# Serve a registered model (default: the demo's .tflite) on LiteRT at 127.0.0.1:$(PORT).
serve: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_TRACKING_URI="$(TRACKING_URI)" \
	  $(BIN)/mlflow models serve -m "$(MODEL)" --env-manager local --host 127.0.0.1 -p $(PORT)

ui: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/mlflow ui --backend-store-uri "$(TRACKING_URI)" \
	  --host 127.0.0.1 -p $(UI_PORT)

# The suite runs on up to 4 worker processes (pytest-xdist; one per core, each imports
# TensorFlow): CI's 2 cores take it in about half the serial time. TEST_WORKERS=0 runs serially.
# --dist loadscope: tests/conftest.py makes the work units (a module, or a module's tests on
# one store) and sends the modules with slow tests first.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

test: $(STAMP) java browser postgres
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadscope --durations=25

# Reconstructions on the JAX backend alone (also part of `make test`): real-world-shaped models
# built under TensorFlow, reloaded and rebuilt under KERAS_BACKEND=jax in a worker process.
test-jax: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/converter/test_backends.py

# The same on the PyTorch backend. Installs the CPU build of torch (pinned; pip takes it from
# the local wheel where one is provided, a plain `torch` would pull a CUDA build of several GB).
# Not part of `make test`: the install costs more than CI's budget allows for it.
TORCH ?= torch==2.13.0
test-torch: $(STAMP)
	$(BIN)/python -m pip install -q $(TORCH) --extra-index-url https://download.pytorch.org/whl/cpu
	TFLITE_KERAS_TEST_BACKEND=torch $(BIN)/python -m pytest -q -p no:cacheprovider \
	  tests/converter/test_backends.py

# The Spark tests need a JVM: install one with apt-get when `java` is absent and we are root
# (otherwise they are skipped with a message).
java:
	@command -v java >/dev/null 2>&1 || ls /usr/lib/jvm/*/bin/java >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless; \
	  else echo "no Java runtime and not root: the Spark tests will be skipped"; fi

# The registry UI test drives Debian's headless Chromium with Selenium: install chromium and
# chromium-driver with apt-get when absent and we are root (otherwise say what to install; the
# test fails without them unless TFLITE_KERAS_SKIP_BROWSER=1).
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else echo "chromium/chromedriver missing and not root: install the Debian packages" \
	    "chromium and chromium-driver, or set TFLITE_KERAS_SKIP_BROWSER=1 to skip the UI test"; fi

# The registry, lineage and race tests also run against `mlflow server` on a PostgreSQL backend
# store: the fixture starts a throwaway cluster (initdb/pg_ctl from Debian's postgresql package,
# as the unprivileged `postgres` user when root). Install it with apt-get when absent and we are
# root (otherwise those tests are skipped with a message).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	  else echo "PostgreSQL missing and not root: install Debian's postgresql package, or the" \
	    "PostgreSQL variants of the registry tests are skipped"; fi

bench: $(STAMP)
	$(BIN)/python benchmarks/pyfunc_overhead.py

docs: $(STAMP)
	$(BIN)/python tools/operator_docs.py > docs/operators.md

clean:
	rm -rf $(VENV) .mlflow
