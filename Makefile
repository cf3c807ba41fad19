# The two commands of the README: `make run` (the default benchmark) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
RUN_ARGS ?= --loss tent --selector gala

.PHONY: run test lint install data clean

run: install data
	$(BIN)/tta-run $(RUN_ARGS) --download

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

install: $(VENV)/.installed

# constraints.txt pins the development machines' torch/torchvision (on their disk: no
# download); pyproject.toml itself only asks for compatible versions.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,models,sweep,robust]'
	touch $@

data:
	@sh scripts/get-fashion-mnist.sh

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs *.egg-info
