# gpuaudit — the two commands a new machine needs: `make demo` and `make test`.
# Only python3 and make are assumed; everything else goes into .venv.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# A venv is tied to the interpreter that made it and to the path it was made at (its
# python is a link to that interpreter, its scripts' first lines name this folder). One
# whose interpreter is gone or whose scripts point elsewhere (copied from another machine
# or another clone) cannot be repaired in place: remove it so that the rules below build
# it anew.
VENV_FOREIGN := $(shell [ -d $(VENV) ] && ! { $(BIN)/python -c '' >/dev/null 2>&1 && \
	head -n1 $(BIN)/pip 2>/dev/null | grep -q '^\#!$(CURDIR)/$(BIN)/python'; } && echo yes)
ifeq ($(VENV_FOREIGN),yes)
$(info .venv was made by another interpreter or at another path; rebuilding it)
$(shell rm -rf $(VENV))
endif

.PHONY: help venv test lint demo bench eval eval-full proto clean

help:
	@echo "make demo       run the demo site (collector + 380 simulated agents), ~2 min"
	@echo "make test       run the test suite"
	@echo "make lint       ruff + mypy --strict"
	@echo "make bench      benchmarks against their goals (docs/benchmarks.md)"
	@echo "make eval       detector evaluation on ../shared/data, quick (~2 min; docs/evaluation.md)"
	@echo "make eval-full  the full evaluation (~11 min on 2 idle cores)"
	@echo "make proto      regenerate attestation/v1 from proto/"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check agent collector attestation core demo tools tests bench
	$(BIN)/mypy agent collector attestation core demo tools

demo: $(STAMP)
	$(BIN)/gpuaudit-collector demo

bench: $(STAMP)
	$(BIN)/python bench/bench_agent.py
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_detector.py
	$(BIN)/python bench/bench_log.py
	$(BIN)/python bench/bench_prometheus.py

eval: $(STAMP)
	$(BIN)/python -m collector.evaluate --quick

eval-full: $(STAMP)
	$(BIN)/python -m collector.evaluate

proto: $(STAMP)
	$(BIN)/python tools/genproto.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
