# Two commands do all the set-up on a fresh machine with Python 3.11 and pip:
#   make test    every test (notebooks stripped + package in sync, nbdev_test, pytest)
#   make repro   the main job (the mini profile end to end)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tests never reach the network: offline failures are instant.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0
# DVC stages call papermill / python: the project's venv comes first.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: venv test sync nbtest pytest repro readme deps clean-venv metrics plots status dag

venv: $(STAMP)

$(STAMP): settings.ini setup.py pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "error: no python3.11 or python3 on PATH (set PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# Notebooks stripped and package in sync with them: nbdev_clean + nbdev_export must change nothing;
# README and every stage's dive_nb deps (make deps) up to date.
sync: venv
	$(BIN)/nbdev_clean
	$(BIN)/nbdev_export
	$(BIN)/python tools/build_readme.py --check
	$(BIN)/python tools/dvc_deps.py --check
	@if [ -n "$$(git status --porcelain -- nbs dive_nb)" ]; then \
	  git status --porcelain -- nbs dive_nb; git --no-pager diff --stat -- nbs dive_nb; \
	  echo "error: notebooks not stripped or dive_nb/ out of sync with nbs/ (run nbdev_clean && nbdev_export, then commit)"; exit 1; fi

nbtest: venv
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing

pytest: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest

test: sync nbtest pytest

repro: venv
	$(BIN)/dvc repro

readme: venv
	$(BIN)/python tools/build_readme.py

# Each stage's dive_nb deps from the import graph (dvc.yaml), carried to paper/dvc.yaml
deps: venv
	$(BIN)/python tools/dvc_deps.py && $(BIN)/python tools/make_paper_dvc.py

clean-venv:
	rm -rf $(VENV)

# DVC views of the mini profile alone (DVC also collects paper/dvc.yaml, whose stages have not run on this machine)
metrics: venv
	$(BIN)/dvc metrics show metrics/mini_summary
plots: venv
	$(BIN)/dvc plots show $(addprefix figures/mini/,wise_curves.png lam_sweep.png mps_fewshot.png unified_id_vs_zs.png geometry_rsa.png csaligner_gap.png csaligner_pairs.png promptot_base2novel.png m2mix_reliability.png diffvec.png embedding_geometry.png)
status: venv
	$(BIN)/dvc status --with-deps dvc.yaml:report
dag: venv
	$(BIN)/dvc dag --md dvc.yaml:report

