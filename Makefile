# Two commands for a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0           # the CPU wheel; must come before everything else
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python .ci/torchvision_cpu_shim.py     # PyPI torchvision is CUDA-built: see the script
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/biomedica build --sample --out $(DEMO_OUT) --workers 2

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_build.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
