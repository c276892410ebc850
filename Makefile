# Two entry points: `make demo` and `make test`. Each creates .venv (Python 3.11)
# and installs what it needs; nothing is installed by hand.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch==2.13.0 (CPU) comes from the machine's local wheel folder when it has one.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: demo test train-gpu venv clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-ros.txt requirements-dev.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(FIND_LINKS) -r requirements.txt -r requirements-ros.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/magicfuse demo --out outputs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# Every training stage on one GPU in at most 8 minutes (docs/TRAINING.md, "One command on a GPU").
train-gpu: $(STAMP)
	$(BIN)/python -m training.recipe --config training/configs/h200_8min.yaml --out models/h200

clean:
	rm -rf $(VENV) outputs build *.egg-info
