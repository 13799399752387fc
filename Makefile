# DistilVPR workbench. Two commands do everything on a fresh machine:
#   make demo   bootstrap if needed, generate the cpu dataset, run the notebooks headless (papermill) into runs/
#   make test   bootstrap if needed, run the whole test suite
# SMOKE=1 make demo runs the smoke profile (minutes).
#   make benchmark  the pre-registered benchmark (docs/benchmark/PROTOCOL.md; hours, resumable stage by stage)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SMOKE ?= 0
PROFILE := $(if $(filter 1,$(SMOKE)),smoke,cpu)

.PHONY: venv test test-fast demo data clean-runs bench api-docs benchmark benchmark-report

venv:
	@bash scripts/bootstrap.sh

test: venv
	DISTILVPR_REQUIRE_MINKOWSKI=1 $(PY) -m pytest

test-fast: venv
	$(PY) -m pytest -m "not slow and not notebooks and not browser and not distributed"

data: venv
	$(PY) -m distilvpr_lib.cli synth --profile $(PROFILE) --out data/$(PROFILE)

demo: venv
	$(PY) -m distilvpr_lib.demo --profile $(PROFILE)

# the pre-registered benchmark (docs/benchmark/PROTOCOL.md; resumable, stage by stage; hours)
benchmark: venv
	$(PY) -m distilvpr_lib.cli benchmark run ablations/benchmark.yaml

# notebook 06 over the committed records -> docs/benchmark/REPORT.md (+ figures in docs/benchmark/REPORT_files/)
benchmark-report: venv
	mkdir -p runs/benchmark-report
	$(PY) -m papermill notebooks/06_benchmark_report.ipynb runs/benchmark-report/notebook.ipynb \
	  -p out runs/benchmark-report --cwd notebooks --log-level WARNING
	$(PY) -m jupyter nbconvert --to markdown --no-input runs/benchmark-report/notebook.ipynb --output-dir docs/benchmark \
	  --output REPORT

bench: venv
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-runs:
	rm -rf runs/

# The API reference, generated from the docstrings (tests/test_api_docs.py builds it without warnings)
api-docs: venv
	$(PY) -m pdoc distilvpr_lib '!distilvpr_lib.commands' -o docs/api
