# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch on these machines; on a CUDA machine set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
DEMO_CONFIG ?= configs/ml-100k-demo.yaml
DEMO_RUN ?= runs/ml-100k-demo

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[text,serve,report,dev]"
	touch $@

demo: install
	$(PY) -m sidrec run $(DEMO_CONFIG) run_dir=$(DEMO_RUN)
	$(PY) -m sidrec report $(DEMO_RUN)

lint: install
	$(VENV)/bin/ruff check sidrec tests benchmarks

test: install lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .sidrec
