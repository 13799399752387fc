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

# notebook 06 over the committed records -> docs/benchmark/REPORT.md (+ figures in docs/benchmark/REPORT_files/,
# which REPORT.md links relatively). BENCH_SPEC: the spec (a project path); BENCH_RECORDS: the records folder (empty:
# the spec's); REPORT_DIR: where REPORT.md goes; REPORT_RUN: the executed notebook and its CSVs / PNGs. E.g. over a
# smoke benchmark's records: make benchmark-report BENCH_SPEC=ablations/benchmark_smoke.yaml REPORT_DIR=runs/smoke-report
BENCH_SPEC ?= ablations/benchmark.yaml
BENCH_RECORDS ?=
REPORT_DIR ?= docs/benchmark
REPORT_RUN ?= runs/benchmark-report
benchmark-report: venv
	mkdir -p $(REPORT_RUN)
	$(PY) -m papermill notebooks/06_benchmark_report.ipynb $(REPORT_RUN)/notebook.ipynb \
	  -p spec $(BENCH_SPEC) $(if $(BENCH_RECORDS),-p records $(BENCH_RECORDS)) -p out $(abspath $(REPORT_RUN)) \
	  --cwd notebooks --log-level WARNING
	$(PY) -m jupyter nbconvert --to markdown --no-input $(REPORT_RUN)/notebook.ipynb --output-dir $(REPORT_DIR) \
	  --output REPORT

bench: venv
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-runs:
	rm -rf runs/

# The API reference, generated from the docstrings (tests/test_api_docs.py builds it without warnings)
api-docs: venv
	$(PY) -m pdoc distilvpr_lib '!distilvpr_lib.commands' -o docs/api
