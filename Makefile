# The README's commands. Every target installs the stack first (idempotent: a stamp skips a done install).
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install demo test test-fast bench clean

install:
	bash scripts/install.sh

demo: install
	$(PY) tools/demo.py

test: install
	$(PY) -m pytest -q --timeout 1200 tests

test-fast: install
	$(PY) -m pytest -q --timeout 600 -m "not slow" tests

bench: install
	$(PY) bench/run.py

clean:
	rm -rf work_dirs output .pytest_cache
