# The README's commands. Every target installs the stack first (idempotent: a stamp skips a done install).
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install lock demo study study-ablations rehearse test test-fast coverage bench clean

install:
	bash scripts/install.sh

# requirements/pins.txt + pyproject.toml -> requirements/lock.txt (UPGRADE=1: the newest releases the pins allow)
lock:
	bash scripts/lock.sh

demo: install
	$(PY) tools/demo.py

# the paper's data-scale and transfer studies in miniature (<= 2 hours on 2 CPU cores; a larger profile on a GPU)
study: install
	$(PY) tools/study.py configs/study/mini.yaml --jobs 2 --quiet

# Table 4, LS-KD and Table 1a in miniature (<= 1 hour on 2 cores), with make study's world and teacher
study-ablations: install
	$(PY) tools/study.py configs/study/mini_ablations.yaml --jobs 2 --quiet

# the paper's own paths at their real settings, a few iterations each, with projected full-schedule cost
# (cpu profile: <= 30 min on 2 cores; --profile gpu on a GPU machine). Report: work_dirs/rehearse/report.md
rehearse: install
	$(PY) tools/rehearse.py

# both cores (pytest-xdist, one worker each); the slowest tests listed at the end (docs/testing.md)
test: install
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=20 --timeout 1200 tests

test-fast: install
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=10 --timeout 600 -m "not slow" tests

# line coverage of `make test`, the tools' own processes included (pyproject.toml [tool.coverage.*])
coverage: install
	rm -rf work_dirs/coverage && mkdir -p work_dirs/coverage
	$(PY) -m coverage run -m pytest -q -n 2 --dist worksteal --timeout 1200 -p no:cacheprovider tests
	$(PY) -m coverage combine -q && $(PY) -m coverage report --format=total && $(PY) -m coverage report | tail -n 3

bench: install
	$(PY) bench/run.py

clean:
	rm -rf work_dirs output .pytest_cache
