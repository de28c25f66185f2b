# The two commands of the README:  make demo   |   make test
# Everything else is a step they call, also usable on its own.
VENV      ?= .venv
PY        := $(VENV)/bin/python
CORES     ?= all
DEMO_DATA := data/demo

export OMP_NUM_THREADS ?= 1
# Rules call `python -m svt.<step>`: the venv's python must come first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup demo demo-data demo-long demo-motion demo-gpu test test-fast lint bench clean gc dashboard mlflow-server mlflow-server-stop results

setup:            ## create .venv with pinned dependencies; install ffmpeg if missing
	bash scripts/setup.sh

demo-data: setup  ## generate the seeded synthetic shapes dataset and copy the real clips
	$(PY) -m svt.demo_data --out $(DEMO_DATA)/shapes --classes shapes --clips 4 --real-out $(DEMO_DATA)/real

demo: demo-data   ## run the whole workflow on the demo data (local executor), then print the table
	SVT_PRINT_TABLE=0 $(VENV)/bin/snakemake --cores $(CORES) --configfile config/demo.yaml
	@$(PY) -m svt.results --results-dir results --experiment demo  # once, last (also after a no-op)

demo-long: setup  ## the CPU preset of the 3-seed gain over random init (config/demo-long.yaml; README, The demo result)
	$(PY) -m svt.demo_data --out $(DEMO_DATA)/shapes-long --classes shapes --clips 16 --real-out $(DEMO_DATA)/real
	SVT_PRINT_TABLE=0 $(VENV)/bin/snakemake --cores $(CORES) --configfile config/demo.yaml config/demo-long.yaml
	@$(PY) -m svt.results --results-dir results --experiment demo-long

demo-motion: setup  ## the motion-only demo design (config/demo-motion.yaml)
	$(PY) -m svt.demo_data --out $(DEMO_DATA)/ucf101 --real-out $(DEMO_DATA)/real
	SVT_PRINT_TABLE=0 $(VENV)/bin/snakemake --cores $(CORES) --configfile config/demo-motion.yaml
	@$(PY) -m svt.results --results-dir results --experiment demo-motion

demo-gpu: setup   ## the demo at GPU size (config/demo-gpu.yaml, one GPU, about 10 minutes)
	$(PY) -m svt.demo_data --out $(DEMO_DATA)/shapes-gpu --classes shapes --clips 16 --real-out $(DEMO_DATA)/real
	SVT_PRINT_TABLE=0 $(VENV)/bin/snakemake --cores $(CORES) --configfile config/demo.yaml config/demo-gpu.yaml
	@$(PY) -m svt.results --results-dir results --experiment demo-gpu

EXPERIMENT ?= demo
results:          ## print the latest table of $(EXPERIMENT) and where its outputs are; runs nothing
	@$(PY) -m svt.results --results-dir $(RESULTS) --experiment $(EXPERIMENT)

TEST_WORKERS ?= 2  # pytest-xdist processes; tests that share a set-up stay on one (tests/conftest.py)
test: setup       ## run the test suite (as root, first installs SLURM and chromium for their tests)
	@if [ "$$(id -u)" = 0 ]; then bash scripts/slurm-local.sh install; fi
	bash scripts/setup-browser.sh
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=20

test-fast: setup  ## the edit loop: the unit tests only (not marked slow: no workflow, SLURM, browser or training run)
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow"

lint: setup       ## snakemake's own linter
	$(VENV)/bin/snakemake --lint --configfile config/demo.yaml

bench: setup      ## benchmarks that print tables (decoders, planning time)
	$(PY) bench/decoders.py
	$(PY) bench/plan_decode.py

# MLflow (scripts/mlflow-server.sh). RESULTS: the results_dir whose runs to show; PORT; HOST
# stays 127.0.0.1 unless given (the server has no authentication).
RESULTS ?= results
PORT    ?= 5000
dashboard:        ## MLflow dashboard on the embedded store $(RESULTS)/mlflow.db at http://127.0.0.1:$(PORT)
	RESULTS="$(RESULTS)" PORT="$(PORT)" VENV="$(VENV)" bash scripts/mlflow-server.sh ui

mlflow-server:    ## background tracking server for cluster runs (PID file in $(RESULTS)/)
	RESULTS="$(RESULTS)" PORT="$(PORT)" VENV="$(VENV)" bash scripts/mlflow-server.sh start

mlflow-server-stop: ## stop it
	RESULTS="$(RESULTS)" PORT="$(PORT)" VENV="$(VENV)" bash scripts/mlflow-server.sh stop

gc:               ## list stage outputs no experiment uses, with sizes; CONFIRM=yes removes them
	@$(PY) -m svt.gc --results-dir $(RESULTS) $(if $(filter yes,$(CONFIRM)),--delete,)

clean:            ## remove every experiment's outputs (stage outputs are shared), logs/ and the demo data; keeps .venv and the MLflow store
	rm -rf results/data results/curate results/pretrain results/evaluate results/experiments logs $(DEMO_DATA) .snakemake
