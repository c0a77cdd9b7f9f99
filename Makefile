# One-command set-up and the project's jobs. Everything runs inside .venv (created on demand).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# PROFILE picks the experiment plan experiments/$(PROFILE).yaml (demo: synthetic, 2 CPU cores; paper: NSD)
PROFILE ?= demo
DATA ?= $(if $(filter paper,$(PROFILE)),data/nsd,data/synthetic-small)
SEEDS ?= 0 1 2
PIPELINE = $(BIN)/lightning-fcae pipeline --plan experiments/$(PROFILE).yaml --data $(DATA)
# torch/torchvision are pinned to the builds that lie on the project's machines (no multi-GB download)
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo stand-ins reproduce-table2 reproduce-table3 data data-check test lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

data: install $(DATA)/manifest.json

# the embedded benchmark, generated on demand (tiny / small / paper profiles)
data/synthetic-%/manifest.json:
	$(BIN)/lightning-fcae data synth --profile $* --out data/synthetic-$*

data/nsd/manifest.json:
	@echo "NSD is not generated: convert your NSD download with 'lightning-fcae data nsd' (docs/data.md)"; exit 1

data-check: data
	$(BIN)/lightning-fcae data check $(DATA)

# The main job on the embedded synthetic default (see README): the shipped CLIP and LDM stand-ins
# (stand-ins/synthetic-small, hash-checked), the ridge yardstick, then our recipe (method `ours`: the paper's
# stages 1 -> 2 -> 3 with stage 2 starting as the ridge, and img2img reconstruction from the ridge's image
# at a strength chosen on val), results/demo/report.html. The paper's own recipe is method `fcae`
# (make reproduce-table2 runs both). Time on 2 CPU cores from a fresh clone: README.
demo: data
	@echo "make demo: our recipe (method ours, beyond the paper); the paper's recipe is --methods fcae"
	$(PIPELINE) --methods ours --seeds 0 --out results/demo

# Regenerate the shipped stand-ins (CLIP, VQ + UNet, the checks' scene classifier) from the training split
# of data/synthetic-small with the budgets of experiments/demo.yaml, their cards and hashes: about 2.5-3 hours
# on 2 CPU cores (a rerun resumes; runs in results/stand-ins).
stand-ins: install data/synthetic-small/manifest.json
	$(BIN)/lightning-fcae stand-ins train --plan experiments/demo.yaml --data data/synthetic-small \
		--runs results/stand-ins --out stand-ins/synthetic-small

# The paper's Table 2 (fCAE, the paper's recipe and ours, vs MinD-Vis vs vis-dec) and Table 3 (ablations), mean
# +- std over SEEDS. Both write to one folder, so the runs the tables share (fCAE F+I+T, ours, MinD-Vis = MAE
# F, the stand-ins, and each stage 1) run once.
reproduce-table2: data
	$(PIPELINE) --methods fcae ours mindvis visdec --seeds $(SEEDS) --out results/tables-$(PROFILE)

reproduce-table3: data
	$(PIPELINE) --methods fcae ours fcae_F fcae_FI fcae_FT mindvis mae_FI --seeds $(SEEDS) --out results/tables-$(PROFILE)

test: install
	$(PY) -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: data
	$(PY) benchmarks/data_throughput.py --data $(DATA)
	$(PY) benchmarks/stage1_throughput.py

clean:
	rm -rf $(VENV) lightning_logs wandb results
