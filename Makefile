# Two commands: `make demo` and `make test`. Each builds .venv by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Layers of one .venv: tidegate itself (the demo), the extras the examples' local
# servers need, and everything the tests, the linters and the benchmarks need.
BASE := $(VENV)/.installed
EXAMPLES := $(VENV)/.installed-examples
STAMP := $(VENV)/.installed-dev
# dbt for the tests lives in its own venv: it pins many libraries, which must not move ours.
DBT_VENV ?= .venv-dbt
DBT_STAMP := $(DBT_VENV)/.installed

.PHONY: demo test bench lint clean example

$(BASE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e .
	$(PY) -m compileall -q src  # an editable install leaves the source uncompiled
	touch $(BASE)

$(EXAMPLES): $(BASE)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[sandbox,salesforce]'
	touch $(EXAMPLES)

$(STAMP): $(BASE)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	# The Airflow provider's tests run real Airflow: its own extras, never a plain install's;
	# and the Census and Hightouch providers, unmodified, against `tidegate serve`.
	$(PY) -m pip install -q --disable-pip-version-check -e '.[airflow,openlineage]' \
		'airflow-provider-census>=2.1' 'airflow-provider-hightouch>=5.0'
	touch $(STAMP)

$(DBT_STAMP): tests/dbt/requirements.txt
	$(PYTHON) -m venv $(DBT_VENV)
	$(DBT_VENV)/bin/pip install -q --disable-pip-version-check -r tests/dbt/requirements.txt
	touch $(DBT_STAMP)

demo: $(BASE)
	$(VENV)/bin/tidegate demo --dir .tidegate-demo

# make example NAME=reengagement_list | product_usage_to_hubspot (see examples/*/README.md)
example: $(EXAMPLES)
	@test -n "$(NAME)" || { echo "usage: make example NAME=<a folder of examples/>"; exit 2; }
	$(PY) examples/$(NAME)/run.py

test: $(STAMP) $(DBT_STAMP)
	TIDEGATE_TEST_DBT=$(abspath $(DBT_VENV))/bin/dbt $(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy

bench: $(STAMP)
	# Sources changed since the install would be compiled again by every process measured.
	$(PY) -m compileall -q src
	$(PY) bench/run.py --out docs/performance.md

clean:
	rm -rf $(VENV) $(DBT_VENV) .tidegate-demo .bench
