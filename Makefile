# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both install from constraints.txt, the committed lock of every package in the venv (`make lock` refreshes it).
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch on these machines; on a CUDA machine set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
EXTRAS := text,serve,report,dev
LOCK := constraints.txt
DEMO_CONFIG ?= ml-100k-demo
DEMO_RUN ?= runs/ml-100k-demo

.PHONY: install demo test lint lock test-latest clean

install: $(VENV)/.installed

# setuptools comes from the lock too, and the project is built without isolation, so that a new setuptools
# release cannot change the install either.
$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) "$(TORCH_SPEC)" setuptools
	$(PY) -m pip install -q -c $(LOCK) --no-build-isolation -e ".[$(EXTRAS)]"
	touch $@

demo: install
	$(PY) -m sidrec run $(DEMO_CONFIG) run_dir=$(DEMO_RUN)
	$(PY) -m sidrec report $(DEMO_RUN)

lint: install
	$(VENV)/bin/ruff check sidrec tests benchmarks

test: install lint
	$(PY) -m pytest -q

# A fresh venv with the newest versions pyproject.toml allows, frozen into the lock (torch without its local
# "+cpu" label, so that a CUDA build of the same version satisfies it too).
lock:
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q "$(TORCH_SPEC)" -U setuptools
	.venv-lock/bin/python -m pip install -q --no-build-isolation -e ".[$(EXTRAS)]"
	{ echo "# The lock: every package of the venv that 'make install' builds. Made by 'make lock' on $$(date -u +%F)."; \
	  echo "# Refresh it with 'make lock' when 'make test-latest' is green on newer releases (see README)."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip==' \
	    | sed -E 's/^torch==([^+]+)\+.*/torch==\1/'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK) && rm -rf .venv-lock

# Not in CI: the newest allowed versions of everything, then lint and the suite; prints what it installed.
test-latest:
	rm -rf .venv-latest && python3 -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q "$(TORCH_SPEC)" -U setuptools
	.venv-latest/bin/python -m pip install -q --no-build-isolation -e ".[$(EXTRAS)]"
	.venv-latest/bin/python -m pip freeze --exclude-editable | grep -iE '^(torch|transformers|numpy|safetensors|fastapi|sentence-transformers|huggingface.hub)=='
	.venv-latest/bin/ruff check sidrec tests benchmarks
	.venv-latest/bin/python -m pytest -q

clean:
	rm -rf $(VENV) .venv-lock .venv-latest runs .sidrec
