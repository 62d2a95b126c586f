# Two entry points do all set-up: `make search` (the main job, embedded data, CPU) and `make test`.
# The virtual environment is created and the package installed on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SPACE  ?= spaces/mbv2_metapool.yaml
ARGS   ?=

.PHONY: search inspect test bench ablate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

search: $(STAMP)
	$(BIN)/rfsearch search $(SPACE) $(ARGS)

inspect: $(STAMP)
	$(BIN)/rfsearch inspect $(SPACE) $(ARGS)

ablate: $(STAMP)
	$(BIN)/rfsearch ablate $(SPACE) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
