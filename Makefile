# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: install demo test test-all bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU machines here resolve these to local wheels (never require a newer torch)
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/restore list
	$(BIN)/restore data/samples/astronaut.png --simulate -t deblur:gaussian:sigma=2,noise=0.01 -n 8 --seed 0 -o $(DEMO_OUT)/deblur --ground-truth data/samples/astronaut.png
	@echo
	@echo "Outputs in $(DEMO_OUT)/deblur/: observation.png (degraded input), mean.png (MMSE estimate),"
	@echo "samples/ (posterior samples), std.png + std.npy (calibrated uncertainty map; scale in std_scale.json), spread.npy (the"
	@echo "solver's raw sample spread), error_vs_std.png, meta.json (metrics, calibration status and guarantee, self-check, timings)"
	@echo "Web app: $(BIN)/restore ui   (then open http://127.0.0.1:7860)"

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
