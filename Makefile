# One-command set-up and the project's jobs. Everything runs inside .venv (created on demand).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PROFILE ?= small
DATA ?= data/synthetic-$(PROFILE)
# torch/torchvision are pinned to the builds that lie on the project's machines (no multi-GB download)
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo data data-check test lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

data: install $(DATA)/manifest.json

$(DATA)/manifest.json:
	$(BIN)/lightning-fcae data synth --profile $(PROFILE) --out $(DATA)

data-check: data
	$(BIN)/lightning-fcae data check $(DATA)

# The main job on the embedded synthetic default (see README): benchmark, its sanity check, one
# epoch streamed through the DataModule, then a short stage-1 fCAE pretraining and its evaluation.
DEMO_STAGE1 := --config configs/stage1_fcae.yaml --config configs/profiles/demo.yaml --data.data_dir $(DATA)

demo: data
	$(BIN)/lightning-fcae data inspect $(DATA)
	$(BIN)/lightning-fcae data check $(DATA)
	$(PY) benchmarks/data_throughput.py --data $(DATA) --epochs 1 --workers 2
	$(BIN)/lightning fit $(DEMO_STAGE1)
	$(BIN)/lightning validate $(DEMO_STAGE1) --ckpt_path checkpoints/stage1_fcae/last.ckpt

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
