# `make test` and `make demo` are all a fresh machine needs; `make docs` builds the documentation.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

KERNELS := build/kernels/libcompemb_kernels.so

.PHONY: test demo docs lint clean kernels

$(PY):
	python3 -m venv $(VENV)

# torch first, pinned, so nothing later resolves a CUDA build. recbole is installed without its
# dependencies: we only read the MovieLens-100k files it ships (their licence forbids copying them).
# torchrec too: it requires `fbgemm-gpu` (the CUDA build) and torchmetrics; the `torchrec` extra
# brings the CPU build fbgemm-gpu-cpu and the light dependencies torchrec imports.
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test,torchrec]'
	$(PIP) install -q --no-deps -c constraints.txt recbole==1.2.1 torchrec==1.8.0
	touch $(STAMP)

# compemb's compiled CPU kernels (csrc/); without a C compiler the pure-torch code
# runs and says so once.
# -ffp-contract=off: the kernels round as torch's separate float operations do.
$(KERNELS): csrc/sparse_adagrad.c csrc/compose_mult.c csrc/universal_hash.c csrc/robe_blocks.c \
		csrc/tt_chain.c
	mkdir -p $(dir $@)
	$(CC) -O3 -ffp-contract=off -shared -fPIC -o $@ $^ -lm || echo "compemb: no C compiler; compemb will use its pure-torch code"

kernels: $(KERNELS)

DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e '.[docs]'
	touch $(DOCS_STAMP)

# Strict: any warning (a broken link, an unresolved reference, a docstring that does not parse)
# fails the build. -n makes every unresolved cross-reference a warning; -E rebuilds from scratch.
docs: $(DOCS_STAMP)
	$(VENV)/bin/sphinx-build -b html -W --keep-going -n -E -q docs build/docs/html

lint: $(STAMP)
	$(VENV)/bin/ruff check --no-cache src tests benchmarks docs

test: $(STAMP) lint kernels
	$(VENV)/bin/pytest

demo: $(STAMP) kernels
	$(VENV)/bin/compemb demo

clean:
	rm -rf $(VENV) build src/*.egg-info
