# covid-d2 entry points. `make setup` is idempotent; `make test` and `make demo` run it first.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo bench-quick clean

setup:
	bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest

demo: setup
	$(PY) tools/demo.py

bench-quick: setup
	$(PY) bench/speed.py --quick
	$(PY) bench/ablation.py --quick $(if $(wildcard output/demo/covid_lesion),--datasets-root output/demo,)

clean:
	rm -rf output .pytest_cache
