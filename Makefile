# Two commands on a fresh machine:
#   make run    create .venv from the pinned files (first time) and run the tiny pipeline
#   make test   create .venv likewise and run the test suite
PYTHON ?= python3
VENV ?= .venv
CORES ?= all
SNAKEMAKE_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast dry-run bench bench-faiss bench-loss bench-trl bench-pipeline bench-gpu lock clean-results

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c constraints.txt -e '.[dev]'
	touch $@

run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

dry-run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake -n $(SNAKEMAKE_ARGS)

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

test-fast: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow"

# Benchmarks write results/benchmarks/*.json and *.md (not part of the test suite).
bench: bench-faiss bench-loss bench-trl bench-pipeline
	$(BIN)/python benchmarks/summary.py

bench-faiss: $(STAMP)
	$(BIN)/python benchmarks/faiss_search.py

bench-loss: $(STAMP)
	$(BIN)/python benchmarks/opd_loss_memory.py

# On a GPU machine (not part of `bench`): two OPD updates at the paper's shapes, recorded in
# benchmarks/recorded/gpu_paper_shapes.md. Needs the tiny tokenizer (make run).
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu_paper_shapes.py --tokenizer results/models/tiny/student

# Needs the tiny models (make run) and TRL (the `bench` extra, installed here on first use).
bench-trl: $(STAMP)
	$(BIN)/python -c "import trl" 2>/dev/null || \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python benchmarks/opd_step_vs_trl.py

# A clean tiny pipeline in a scratch copy, then a no-op rerun.
bench-pipeline: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/pipeline_wall_time.py

# Re-pin every installed package (after changing a version in pyproject.toml).
lock: $(STAMP)
	{ echo "# Pinned versions for every package the project installs (CPU torch from the local wheel)."; \
	  echo "# Regenerate with: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(torch|opd)=='; \
	  echo "torch==2.13.0"; } | LC_ALL=C sort -f > constraints.txt

clean-results:
	rm -rf results/world results/models results/tables results/logs .snakemake
