# Entry points for development, tests and the demo. `make test` is what CI runs.
PY := .venv/bin/python

.PHONY: setup infra-up infra-down infra-status protos test test-cluster demo

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
	$(PY) -m pytest -m "not cluster"

# The cluster tests (a Redis Cluster of 3 masters + 3 replicas on 127.0.0.1:7000-7005, a
# 3-node Kafka on 127.0.0.1:19092/19094/19096); not part of `make test`.
test-cluster: setup infra-up
	bash scripts/infra.sh redis-cluster-up
	bash scripts/infra.sh kafka-cluster-up
	$(PY) -m pytest -m cluster

demo: setup infra-up
	bash scripts/demo.sh
