# Two commands do the whole set-up on a fresh machine:
#   make demo   broker + worker + the shipped sample calls + the weak-stage report
#   make test   everything the tests need, a broker and a PostgreSQL they start themselves, the whole suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: demo test install install-test system-deps bench clean

demo: install
	$(VENV)/bin/callqa demo

test: install-test
	$(PY) -m pytest -q

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	@command -v java >/dev/null || { echo "callqa: java (17+) is needed for the local Kafka broker: apt-get install openjdk-17-jre-headless, or set CALLQA_KAFKA_BOOTSTRAP"; exit 1; }
	@command -v mvn >/dev/null || { echo "callqa: mvn is needed to fetch the Kafka jars once: apt-get install maven, or set CALLQA_KAFKA_BOOTSTRAP"; exit 1; }
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,openai]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

bench: install-test
	$(PY) bench/tagging_eval.py

clean:
	rm -rf var .pytest_cache
