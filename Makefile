# Two commands for a fresh machine:  `make demo`  and  `make test`.  Contributors: `make test-fast` (docs/contributing.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast install bench clean serve smoke

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

# the search page is tested in a real headless Chromium (Debian's; playwright drives it)
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the browser tests will fail (BIOMEDICA_REQUIRE_BROWSER=1)"

# the oldest transformers that pyproject allows, in a venv of its own that reaches the project's other packages:
# tests/vlm/test_vlm_compat.py loads a SmolVLM export with it (a few MB, no torch of its own)
OLD_TF := .venv-oldtf
$(OLD_TF)/.installed-stamp: $(STAMP)
	test -x $(OLD_TF)/bin/python || $(PYTHON) -m venv $(OLD_TF)
	$(OLD_TF)/bin/pip install -q --no-deps transformers==4.46.3 tokenizers==0.20.3 huggingface_hub==0.26.5
	echo "import site; site.addsitedir('$$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")')" \
	  > $$($(OLD_TF)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/project_venv.pth
	touch $@

# two pytest workers (pytest-xdist), a test file per worker at a time, in the order of tests/conftest.py (the files
# with slow, multiprocess or browser tests first: the workers finish together)
PYTEST_XDIST := -n 2 --dist loadfile --no-loadscope-reorder
test: $(STAMP) $(CHROMIUM) $(OLD_TF)/.installed-stamp
	HF_HUB_OFFLINE=1 BIOMEDICA_REQUIRE_BROWSER=1 BIOMEDICA_OLD_TRANSFORMERS_PYTHON=$(abspath $(OLD_TF))/bin/python \
	  $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_XDIST)

# the contributor's loop: unit and single-process tests, no browser, no multi-process runs, no smoke (pytest markers
# in tests/conftest.py and pyproject.toml); `make test` stays the full suite and the CI command (.ci/run)
FAST_MARKERS ?= not slow and not browser and not multiprocess
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_XDIST) -m "$(FAST_MARKERS)"

# every stage end to end on the bundled sample, offline, CPU, with TINY RANDOM models (see examples/smoke/)
SMOKE_OUT ?= smoke_out
smoke: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python examples/smoke.py --out $(SMOKE_OUT) --clean

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_build.py
	$(BIN)/python benchmarks/bench_stream.py

serve: $(STAMP)
	$(BIN)/biomedica index $(DEMO_OUT) --encoder minilm
	$(BIN)/biomedica serve $(DEMO_OUT)/search_index --dataset $(DEMO_OUT)

clean:
	rm -rf $(DEMO_OUT) $(SMOKE_OUT) .pytest_cache
