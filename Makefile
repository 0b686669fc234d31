# The two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
# `make test` also builds the documentation site (docs/, mkdocs.yml) into build/site, warnings as errors.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-all bench paper clean

# The real model libraries the coverage suite traces, without their dependencies: theirs would
# replace the CPU torch with a CUDA build (see netopt/testing/peers.py). Only what their model
# code imports is added: safetensors (timm), OpenCV without its GUI (Ultralytics); pillow, pyyaml,
# tqdm and huggingface_hub (smp) come with netopt's own dependencies and extras. Ultralytics'
# polars, psutil, ultralytics-thop and requests are left out: building, running, its loss and NMS
# never import them.
PEERS := timm==1.0.31 torchvision==0.28.0 safetensors==0.8.0 ultralytics==8.4.190 \
  segmentation-models-pytorch==0.6.0 opencv-python-headless==5.1.0.95
# The stamp's name carries a checksum of PEERS, so an existing venv installs a changed list.
STAMP := $(VENV)/.installed-$(word 1,$(shell printf '%s' '$(PEERS)' | cksum))

# The PostgreSQL tests start a server of their own from Debian's binaries: installed here where
# this is root on Debian; elsewhere those tests are skipped, saying why.
$(STAMP): pyproject.toml constraints.txt
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "PostgreSQL server binaries not installed: the tests that need a server will be skipped"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt -e '.[dev,dask,postgres,executorch,openvino,detection]'
	$(PIP) install --quiet --no-deps $(PEERS)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m netopt.cli adapt examples/demo.toml $$(test -f runs/demo/config.json && echo --resume)

# The default suite leaves out the tests marked slow (whole runs of the examples, the README's
# adapting snippets, the CLI on a cluster): each has a faster sibling that covers its behaviour.
# pytest runs the docstrings' examples too (--doctest-modules over netopt, pyproject.toml).
test: $(STAMP)
	$(PY) -m ruff check netopt tests benchmarks examples
	$(PY) -m mypy
	$(PY) -m pytest -q -m "not slow"
	$(PY) -m mkdocs build --strict

# Everything, the slow end-to-end runs too (about three times as long).
test-all: $(STAMP)
	$(PY) -m ruff check netopt tests benchmarks examples
	$(PY) -m mypy
	$(PY) -m pytest -q
	$(PY) -m mkdocs build --strict

bench: $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e '.[dev,dask,postgres,executorch,openvino,detection,bench]'
	$(PY) benchmarks/bench_materialize.py
	$(PY) benchmarks/bench_coverage.py

# The NetAdapt paper's findings at CPU scale (benchmarks/paper/README.md): resumable, kept in runs/paper.
paper: $(STAMP)
	$(PY) benchmarks/paper/paper.py all

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
