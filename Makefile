# Two entry points do all set-up: `make search` (the main job: Fashion-MNIST, CPU) and `make test`.
# The virtual environment is created and the package installed on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SPACE  ?= spaces/mbv2_metapool_fashion.yaml
ARGS   ?=
FASHION_MNIST_PKG := dataset-fashion-mnist
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
# the targets that run $(SPACE) need the data only when the space is a Fashion-MNIST one
SPACE_DATA = $(if $(findstring fashion,$(SPACE)),data)

.PHONY: search inspect test bench ablate clean data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Fashion-MNIST from Debian's package when apt-get and root are there (apt-get update first if the
# package is unknown), else the commands to get it. Never fails: without the data, the test that
# reads it is skipped with this hint and a run stops with one line saying the same (docs/data.md).
data:
	@if [ -d $(FASHION_MNIST_DIR) ]; then \
	  echo "Fashion-MNIST: $(FASHION_MNIST_DIR) (Debian's $(FASHION_MNIST_PKG))"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-cache show $(FASHION_MNIST_PKG) >/dev/null 2>&1 || apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(FASHION_MNIST_PKG) \
	    || echo "warning: apt-get could not install $(FASHION_MNIST_PKG); the Fashion-MNIST test will be skipped"; \
	else \
	  echo "Fashion-MNIST is not installed. On Debian/Ubuntu: sudo apt-get install $(FASHION_MNIST_PKG)." \
	    "Elsewhere: set data.download: true in the space (torchvision fetches it into ~/.cache/rfsearch), or see docs/data.md."; \
	fi

search: $(STAMP) $(SPACE_DATA)
	$(BIN)/rfsearch search $(SPACE) $(ARGS)

inspect: $(STAMP)
	$(BIN)/rfsearch inspect $(SPACE) $(ARGS)

ablate: $(STAMP) $(SPACE_DATA)
	$(BIN)/rfsearch ablate $(SPACE) $(ARGS)

test: $(STAMP) data
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
