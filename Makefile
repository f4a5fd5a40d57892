# Two commands do the whole set-up on a fresh machine:
#   make demo   broker + worker + the shipped sample calls + the weak-stage report
#   make test   everything the tests need, a broker and a PostgreSQL they start themselves, the whole suite
# Both install from the hash-pinned locks in requirements/ (made for CPython 3.11 on Linux x86_64);
# after changing a dependency in pyproject.toml (or requirements/nodeps.in, gpu.in) run `make lock`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
TOOLS  ?= .venv-tools
# exactly the pinned files, nothing resolved; sdists (openai-whisper) built with the locked setuptools
PIP_LOCKED = $(PY) -m pip install -q --require-hashes --no-deps --no-build-isolation

.PHONY: demo test test-main test-faults install install-test system-deps bench clean lock lock-upgrade check-lock

demo: install
	$(VENV)/bin/callqa demo

# Two steps: the suite, then the long fault tests (marker `faults`: worker kill -9, broker restart, two
# workers with one killed, poison events, bad audio, a 5,000-event burst, PostgreSQL stopped for 30 s).
# Their figures go to var/faults.json; `bench/reliability.py --write` makes docs/reliability.md's table from them.
test: test-main test-faults

test-main: check-lock install-test
	$(PY) -m pytest -q -m "not faults"

test-faults: check-lock install-test
	rm -f $${CALLQA_FAULT_FIGURES:-var/faults.json}  # the figures of this run only
	CALLQA_FAULT_FIGURES=$${CALLQA_FAULT_FIGURES:-var/faults.json} $(PY) -m pytest -q -m faults
	$(PY) bench/reliability.py --figures $${CALLQA_FAULT_FIGURES:-var/faults.json}

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The base set (dependencies + postgres extra), the no-deps packages, then callqa itself, editable and
# without resolving anything. `pip check` leaves out nodeps.in's packages: resemblyzer is installed
# without torch/librosa/webrtcvad on purpose (requirements/lock.py pip-check).
# Java and Maven run the local Kafka broker (its jars come from Maven Central once). As root on a
# Debian/Ubuntu machine they are installed here, as .ci/run does; otherwise the message says what to do.
system-deps:
	@if [ -z "$$CALLQA_KAFKA_BOOTSTRAP" ] && ! { command -v java >/dev/null && command -v mvn >/dev/null; }; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "callqa: installing Java and Maven for the local Kafka broker (apt-get)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openjdk-17-jre-headless maven; \
	  fi; \
	fi

$(VENV)/.installed: pyproject.toml requirements/nodeps.in requirements/base.lock requirements/nodeps.lock | $(VENV)/bin/python system-deps
	@command -v java >/dev/null || [ -n "$$CALLQA_KAFKA_BOOTSTRAP" ] || { echo "callqa: java (17+) is needed for the local Kafka broker: apt-get install openjdk-17-jre-headless, or set CALLQA_KAFKA_BOOTSTRAP"; exit 1; }
	@command -v mvn >/dev/null || [ -n "$$CALLQA_KAFKA_BOOTSTRAP" ] || { echo "callqa: mvn is needed to fetch the Kafka jars once: apt-get install maven, or set CALLQA_KAFKA_BOOTSTRAP"; exit 1; }
	@$(PY) requirements/lock.py check
	$(PIP_LOCKED) -r requirements/base.lock -r requirements/nodeps.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) requirements/lock.py pip-check
	touch $@

# The test set: the base set plus every extra (test, openai with PyTorch, postgres).
$(VENV)/.installed-test: $(VENV)/.installed requirements/test.lock
	$(PIP_LOCKED) -r requirements/test.lock
	$(PY) requirements/lock.py pip-check
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

bench: install-test
	$(PY) bench/tagging_eval.py

# The locks: regenerate after any change to pyproject.toml's dependencies or requirements/nodeps.in, gpu.in.
# `lock` keeps the versions already locked where they still fit; `lock-upgrade` takes the newest.
$(TOOLS)/bin/uv: requirements/tools.lock
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --require-hashes --no-deps -r requirements/tools.lock
	touch $@

lock: $(TOOLS)/bin/uv
	$(PYTHON) requirements/lock.py compile --uv $(TOOLS)/bin/uv

lock-upgrade: $(TOOLS)/bin/uv
	$(PYTHON) requirements/lock.py compile --uv $(TOOLS)/bin/uv --upgrade

check-lock:
	@$(PYTHON) requirements/lock.py check

clean:
	rm -rf var .pytest_cache
