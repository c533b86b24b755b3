# The two commands a person needs: `make tutorials` and `make test`. Every target sets up .venv itself, from the
# lock file (exact versions with hashes); `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCK := requirements-linux-py311.txt
TUTORIAL_PROFILE ?= quick
export TUTORIAL_PROFILE
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
NB ?= $(NOTEBOOKS)
EXEC_TIMEOUT ?= 1800
# USE_LOCK=0 installs from pyproject.toml's lower bounds instead of the lock (newest releases that fit).
USE_LOCK ?= 1
ASSIGNMENTS ?= all
SUBMISSION ?=

.PHONY: help tutorials test unit uitest nbval nbcheck lab notebooks bench peers venv lock book booktest \
        assignments autograde assignments-test clean

## help: list every target with one line each
help:
	@grep -E '^## [a-z-]+:' $(MAKEFILE_LIST) | sed -E 's/^## ([a-z-]+): /\1\t/' | awk -F'\t' '{printf "  make %-17s %s\n", $$1, $$2}'

# Installs everything pinned in the lock (package deps and the test, peers, docs and teach extras), then the package
# itself without dependencies. Re-installs only when the lock or pyproject.toml is newer than the stamp.
$(VENV)/.installed: $(LOCK) pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(USE_LOCK),1)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
else
	$(PY) -m pip install --quiet -e '.[test,peers,docs,teach]'
endif
	@touch $@

## venv: create .venv and install the locked environment into it (every other target does this first)
venv: $(VENV)/.installed

## peers: make sure the peers extra (CleverHans, ART) is installed (the lock has it; kept for old scripts)
peers: $(VENV)/.installed

## lock: regenerate the lock file with uv (keeps current pins where possible; UPGRADE=1 moves to the newest)
lock:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet 'uv>=0.4'
	$(PY) -m uv pip compile pyproject.toml --extra test --extra peers --extra docs --extra teach \
	  --python-version 3.11.5 --python-platform x86_64-unknown-linux-gnu --generate-hashes \
	  --custom-compile-command "make lock" $(if $(filter 1,$(UPGRADE)),--upgrade) --quiet -o $(LOCK)

## tutorials: run the notebooks (TUTORIAL_PROFILE, default quick; NB=notebooks/05_... for one) into build/, render HTML, gather results
tutorials: $(VENV)/.installed
	@mkdir -p build/notebooks build/html build/results
	@n=0; total=$(words $(NB)); for nb in $(NB); do \
	  n=$$((n+1)); start=$$(date +%s); echo "[$$n/$$total] $$nb (profile $(TUTORIAL_PROFILE)) ..."; \
	  $(PY) -m jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=$(EXEC_TIMEOUT) \
	    --output-dir build/notebooks "$$nb" --log-level=WARN || exit 1; \
	  $(PY) -m jupyter nbconvert --to html --output-dir build/html "build/notebooks/$$(basename $$nb)" --log-level=WARN || exit 1; \
	  echo "[$$n/$$total] $$nb done in $$(( $$(date +%s) - start )) s"; \
	done
	$(PY) -m tutorial_lib.report build/results build/results.md
	@echo "HTML in build/html/, results in build/results.md"

# The unit tests use a private build dir (tests/conftest.py), so they run beside the notebooks: in the background at
# a lower priority (the notebooks are the longer path), their output in $(UNIT_LOG), printed whole if they fail.
# `make test` fails if either part fails. `make unit` and `make nbval` still run one part alone.
UNIT_LOG := build/unit-tests.log
## test: unit tests (in the background, log in build/unit-tests.log) beside the notebook format check, the browser tests and the notebooks under nbval (quick profile)
test: $(VENV)/.installed
	@mkdir -p $(dir $(UNIT_LOG)); start=$$(date +%s); \
	echo "unit tests: started in the background (make unit, output in $(UNIT_LOG))"; \
	nice -n 10 $(MAKE) --no-print-directory unit > $(UNIT_LOG) 2>&1 & unit_pid=$$!; \
	$(MAKE) --no-print-directory nbcheck uitest nbval; notebooks=$$?; \
	[ $$notebooks -eq 0 ] || echo "make test: nbcheck, uitest or nbval failed (exit $$notebooks); waiting for the unit tests"; \
	wait $$unit_pid; unit=$$?; \
	if [ $$unit -eq 0 ]; then echo "unit tests passed: $$(tail -n 1 $(UNIT_LOG))"; \
	else echo "== unit tests FAILED (exit $$unit); their output ($(UNIT_LOG)):"; cat $(UNIT_LOG); fi; \
	echo "make test: $$(( $$(date +%s) - start )) s"; \
	[ $$notebooks -eq 0 ] && [ $$unit -eq 0 ]

## unit: the unit tests (tests/, without the browser tests and the nbgrader test: make uitest, make assignments-test)
unit: $(VENV)/.installed
	$(PY) -m pytest tests -q --ignore=tests/ui --ignore=tests/test_assignments.py

## uitest: browser tests: JupyterLab runs notebook 01 in headless Chromium, and the book (skipped without chromium)
uitest: $(VENV)/.installed
	$(PY) -m pytest tests/ui -q -p no:cacheprovider

## nbcheck: check that the tracked notebooks are normalised (.ci/nbnorm.py)
nbcheck: $(VENV)/.installed
	$(PY) .ci/nbnorm.py --check $(NOTEBOOKS)

# One pytest run per notebook, in order (later notebooks reuse models cached by earlier ones), timed.
## nbval: run the notebooks (NB=... for one) under nbval, quick profile, comparing with their stored outputs
nbval: $(VENV)/.installed
	@for nb in $(NB); do \
	  start=$$(date +%s); \
	  TUTORIAL_PROFILE=quick $(PY) -m pytest --nbval-lax --nbval-cell-timeout=$(EXEC_TIMEOUT) -p no:cacheprovider -q "$$nb" || exit 1; \
	  echo "nbval $$nb: $$(( $$(date +%s) - start )) s"; \
	done

## notebooks: re-run the tracked notebooks in place (quick profile) to refresh stored outputs; NB=path for one
notebooks: $(VENV)/.installed
	@for nb in $(NB); do \
	  start=$$(date +%s); echo "executing $$nb ..."; \
	  TUTORIAL_PROFILE=quick $(PY) -m jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=$(EXEC_TIMEOUT) "$$nb" --log-level=WARN || exit 1; \
	  $(PY) .ci/nbnorm.py "$$nb"; echo "$$nb: $$(( $$(date +%s) - start )) s"; \
	done

## lab: JupyterLab on notebooks/
lab: $(VENV)/.installed
	$(PY) -m jupyter lab notebooks/

## book: the series as a static site (stored outputs, API reference, search, offline math) in build/book/
book: $(VENV)/.installed
	@start=$$(date +%s); \
	rm -rf build/book-src build/book && mkdir -p build/book-src && cp -r docs/. build/book-src/ && \
	mkdir -p build/book-src/notebooks && cp $(NOTEBOOKS) build/book-src/notebooks/ && \
	$(PY) -m sphinx -b html -q -W --keep-going build/book-src build/book && \
	echo "book in build/book/index.html, built in $$(( $$(date +%s) - start )) s"

## booktest: the book in headless Chromium (pages, figures, math, API, search, links); runs make book first
booktest: book
	$(PY) -m pytest tests/ui/test_book.py -q -p no:cacheprovider

## assignments: nbgrader course directory in build/assignments/ from every notebook with exercises (ASSIGNMENTS="00 01" for some)
assignments: $(VENV)/.installed
	$(PY) tools/make_assignments.py --course build/assignments $(if $(filter all,$(ASSIGNMENTS)),,--notebooks $(ASSIGNMENTS))

## autograde: grade build/assignments/submitted/<student>/<notebook>/ with nbgrader, print points (SUBMISSION=student for one)
autograde: $(VENV)/.installed
	$(PY) tools/make_assignments.py --course build/assignments --autograde $(if $(SUBMISSION),--student $(SUBMISSION))

## assignments-test: release, answer key, blank and wrong submissions graded by nbgrader (tests/test_assignments.py)
assignments-test: $(VENV)/.installed
	$(PY) -m pytest tests/test_assignments.py -q -p no:cacheprovider

## bench: speed and memory benchmarks, JSON + Markdown in build/bench/
bench: $(VENV)/.installed
	@mkdir -p build/bench
	@for b in $(sort $(wildcard benchmarks/[a-z]*.py)); do echo "== $$b"; $(PY) $$b --out build/bench || exit 1; done

## clean: remove build/ (trained models, results, the book, assignments)
clean:
	rm -rf build
