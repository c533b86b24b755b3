# The two commands a person needs: `make tutorials` and `make test`. Every target sets up .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TUTORIAL_PROFILE ?= quick
export TUTORIAL_PROFILE
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
NB ?= $(NOTEBOOKS)
EXEC_TIMEOUT ?= 1800

.PHONY: tutorials test unit uitest nbval nbcheck lab notebooks bench peers clean venv

# Re-installs only when pyproject.toml is newer than the stamp (fast when nothing changed).
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

$(VENV)/.peers: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,peers]'
	@touch $@

peers: $(VENV)/.peers

## make tutorials: run every notebook (profile $(TUTORIAL_PROFILE)) into build/, render HTML, gather results
## (installs the peers extra: notebook 07 checks our attacks against CleverHans and ART)
tutorials: $(VENV)/.peers
	@mkdir -p build/notebooks build/html build/results
	@n=0; total=$(words $(NOTEBOOKS)); for nb in $(NOTEBOOKS); do \
	  n=$$((n+1)); start=$$(date +%s); echo "[$$n/$$total] $$nb (profile $(TUTORIAL_PROFILE)) ..."; \
	  $(PY) -m jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=$(EXEC_TIMEOUT) \
	    --output-dir build/notebooks "$$nb" --log-level=WARN || exit 1; \
	  $(PY) -m jupyter nbconvert --to html --output-dir build/html "build/notebooks/$$(basename $$nb)" --log-level=WARN || exit 1; \
	  echo "[$$n/$$total] $$nb done in $$(( $$(date +%s) - start )) s"; \
	done
	$(PY) -m tutorial_lib.report build/results build/results.md
	@echo "HTML in build/html/, results in build/results.md"

## make test: unit tests, the JupyterLab browser test, then every notebook under nbval (quick profile)
test: unit nbcheck uitest nbval

unit: $(VENV)/.installed
	$(PY) -m pytest tests -q --ignore=tests/ui

## make uitest: JupyterLab in headless Chromium runs notebook 01 and moves its explorer (skips without chromium)
uitest: $(VENV)/.installed
	$(PY) -m pytest tests/ui -q -p no:cacheprovider

nbcheck: $(VENV)/.installed
	$(PY) .ci/nbnorm.py --check $(NOTEBOOKS)

# One pytest run per notebook, in order (later notebooks reuse models cached by earlier ones), timed.
nbval: $(VENV)/.installed
	@for nb in $(NOTEBOOKS); do \
	  start=$$(date +%s); \
	  TUTORIAL_PROFILE=quick $(PY) -m pytest --nbval-lax --nbval-cell-timeout=$(EXEC_TIMEOUT) -p no:cacheprovider -q "$$nb" || exit 1; \
	  echo "nbval $$nb: $$(( $$(date +%s) - start )) s"; \
	done

## make notebooks: re-run tracked notebooks in place (quick profile) to refresh stored outputs; NB=path for one
notebooks: $(VENV)/.installed
	@for nb in $(NB); do \
	  start=$$(date +%s); echo "executing $$nb ..."; \
	  TUTORIAL_PROFILE=quick $(PY) -m jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=$(EXEC_TIMEOUT) "$$nb" --log-level=WARN || exit 1; \
	  $(PY) .ci/nbnorm.py "$$nb"; echo "$$nb: $$(( $$(date +%s) - start )) s"; \
	done

lab: $(VENV)/.installed
	$(PY) -m jupyter lab notebooks/

## make bench: speed and memory benchmarks (installs the peers extra), JSON + Markdown in build/bench/
bench: $(VENV)/.peers
	@mkdir -p build/bench
	@for b in $(sort $(wildcard benchmarks/[a-z]*.py)); do echo "== $$b"; $(PY) $$b --out build/bench || exit 1; done

clean:
	rm -rf build
