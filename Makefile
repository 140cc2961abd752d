# Two commands matter: `make serve` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install serve test deps-test lint bench bench-quick bench-scale bench-rebuild soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/cbmir serve --host 127.0.0.1 --port 8000

test: $(STAMP) deps-test
	$(BIN)/python -m pytest

# The browser tests drive Debian's chromium through chromium-driver; the archive tests run
# a real Orthanc (Debian's orthanc and orthanc-dicomweb). Installed here when missing and
# running as root (CI); elsewhere those tests skip, naming the packages.
deps-test:
	@missing=""; \
	{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } \
		|| missing="chromium chromium-driver"; \
	{ command -v Orthanc >/dev/null 2>&1 || test -x /usr/sbin/Orthanc; } \
		&& test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so \
		|| missing="$$missing orthanc orthanc-dicomweb"; \
	if [ -z "$$missing" ]; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "deps-test: installing$$missing for the browser and archive tests"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null; } \
		|| echo "deps-test: could not install$$missing; the tests needing them will skip"; \
	else \
		echo "deps-test:$$missing missing (not root); the tests needing them will skip"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check app models index tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	command -v wrk >/dev/null 2>&1 || apt-get install -y --no-install-recommends wrk || echo "bench: no wrk, using the Python load generator"
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# Longer crash/concurrency soak (10x the images, 11 kills); not part of `make test`.
soak: $(STAMP)
	CBMIR_SOAK=1 $(BIN)/python -m pytest -s tests/test_reliability_crash.py tests/test_reliability_concurrency.py

# Search and /health latency while a 1M-vector sub-index is built into IVF in the service.
bench-rebuild: $(STAMP)
	$(BIN)/python -m bench.rebuild

# The PostgreSQL + pgvector figures (1M vectors, replicas) beside embedded FAISS, in one
# run (~15 min on 2 cores): bench/pg_results.json and its section of bench/RESULTS.md.
bench-scale: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.pg_scale
