# Entry points for development, tests and the demo. `make test` is what CI runs.
PY := .venv/bin/python

.PHONY: setup infra-up infra-down infra-status protos test demo

setup:
	bash scripts/setup.sh

infra-up:
	bash scripts/infra.sh up

infra-down:
	bash scripts/infra.sh down

infra-status:
	bash scripts/infra.sh status

protos: setup
	$(PY) -m protos.generate

test: setup infra-up
	$(PY) -m pytest

demo: setup infra-up
	bash scripts/demo.sh
