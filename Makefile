# Two commands: `make demo` and `make test`. Each builds .venv by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	# The Airflow provider's tests run real Airflow: its own extras, never a plain install's.
	$(PY) -m pip install -q --disable-pip-version-check -e '.[airflow,openlineage]'
	$(PY) -m compileall -q src  # an editable install leaves the source uncompiled
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tidegate demo --dir .tidegate-demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/run.py --out docs/performance.md

clean:
	rm -rf $(VENV) .tidegate-demo .bench
