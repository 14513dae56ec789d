# `make demo`: set up, train the demo ViT (recipes/demo.yaml, a pure ViT in ~10 minutes) on Fashion-MNIST, evaluate, predict, draw attention.
# `make test`: set up (with test extras) and run the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
RUN    ?= runs/demo

.PHONY: setup setup-test data demo test bench recipes clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned here (constraints.txt), not in the package: an unpinned torch pulls GBs of CUDA wheels.
setup: $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e .

# vit-pytorch (a benchmark peer) pulls torchvision, whose wheels do not work with this CPU torch and
# break `import transformers`; vitkit needs neither, so it is removed again.
setup-test: $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/pip uninstall -y -q torchvision 2>/dev/null || true
	@if ! command -v chromedriver >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq chromium chromium-driver; fi  # tests/test_serve_browser.py

# Fashion-MNIST from Debian when we may install packages; otherwise vitkit downloads it (with MD5 checks).
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; fi

demo: setup data
	$(BIN)/vitkit train --config recipes/demo.yaml --output $(RUN) --overwrite
	$(BIN)/vitkit eval --checkpoint $(RUN) --json > $(RUN)/eval-cli.json
	$(BIN)/vitkit samples --dataset fashion-mnist --count 8 --out $(RUN)/samples
	$(BIN)/vitkit predict --checkpoint $(RUN) $(RUN)/samples --topk 3
	$(BIN)/vitkit explain --checkpoint $(RUN) $(RUN)/samples/*.png --out $(RUN)/explain
	@echo "run folder: $(RUN) (eval.json, curves.png, confusion.png, explain/report.html)"

test: setup-test data
	$(BIN)/python -m pytest -q

bench: setup-test   # into cpu-local.json: the recorded runs (cpu.json, cpu-amd-epyc*.json) stay
	$(BIN)/python benchmarks/bench_inference.py --out cpu-local.json
	$(BIN)/python benchmarks/report.py benchmarks/results/cpu-local.json

# Issue 3's table: every Fashion-MNIST recipe but the demos (`make demo`), one after another (each up to ~60 minutes on 2 cores).
RECIPES ?= fmnist-cnn fmnist-hybrid-from-cnn fmnist-hybrid-distilled fmnist-cnn-long fmnist-hybrid-distilled-long fmnist-distilled fmnist-distilled-plain-vit fmnist-hybrid fmnist-sl-vit fmnist-vit-patch-dropout fmnist-vit fmnist-vit-born-again fmnist-vit-learned-pos fmnist-vit-patch-drop-schedule-long fmnist-vit-no-drop-path fmnist-vit-wide-patch-dropout fmnist-vit-map fmnist-hybrid-stem fmnist-vit-plain vit deit
recipes: setup data
	$(BIN)/python benchmarks/recipes.py run $(RECIPES)
	$(BIN)/python benchmarks/recipes.py report

clean:
	rm -rf $(VENV) runs .pytest_cache
