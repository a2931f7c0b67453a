# fedsilo: `make run` and `make test` set up .venv themselves on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
SCENARIO ?= scenarios/medical.yaml
MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export MLFLOW_TRACKING_URI

.PHONY: setup run test lint format ui clean system-deps image bench bench-quality-full bench-privacy \
	bench-efficiency bench-distributed stack-up stack-down

setup: $(STAMP)

# torch first, from the pinned 2.13.0 CPU wheel, so no resolver ever pulls a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	touch $@

run: setup
	$(VENV)/bin/fedsilo run $(SCENARIO)

test: setup lint
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The CPU benchmark set (under 45 minutes on 2 cores): JSON lines and plots in bench/results/.
# Each script also runs alone: python -m bench.<name> --help. See BENCHMARKS.md.
bench: setup
	$(PY) -m bench.aggregation
	$(PY) -m bench.throughput
	$(PY) -m bench.quality --dataset pneumonia --partitions iid 0.5 0.1 --silos 3 10 \
		--strategies fedavg fedavgm fedprox median
	$(PY) -m bench.quality --dataset sms-spam --partitions iid 0.5 --silos 3 --strategies fedavg fedavgm
	$(PY) -m bench.overhead
	$(PY) -m bench.scale

# The quality grid of BENCHMARKS.md section 1 (about 2 hours on 2 cores).
bench-quality-full: setup
	$(PY) -m bench.quality --dataset pneumonia --partitions iid 1.0 0.5 0.1 --silos 3 10
	$(PY) -m bench.quality --dataset twitter-finance --partitions iid 0.5 --silos 3 \
		--strategies fedavg fedavgm fedprox
	$(PY) -m bench.quality --dataset sms-spam --partitions iid 0.5 --silos 3 \
		--strategies fedavg fedavgm fedprox

# BENCHMARKS.md section 6: secure aggregation's cost, accuracy against epsilon (about 40 minutes).
bench-privacy: setup
	$(PY) -m bench.privacy secagg
	$(PY) -m bench.privacy dp --dataset pneumonia
	$(PY) -m bench.privacy dp --dataset sms-spam
	$(PY) -m bench.privacy central --dataset pneumonia --noise 0.01 0.03 0.1 0.3 1.0

# LoRA adapters and bf16 updates against full float32 updates (about 30 minutes).
bench-efficiency: setup
	$(PY) -m bench.efficiency

# BENCHMARKS.md section 8: distributed against embedded on real servers (two jobs each way).
bench-distributed: setup
	$(PY) -m bench.distributed

ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --port 5000

# Debian packages some tests need (root): podman, runc and debootstrap for the container test and
# image builds without a Docker engine or registry (docker/podman.sh); chromium for the UI test.
system-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap chromium >/dev/null

# The fedsilo image: `docker build .` where Docker runs; here, podman on a debootstrap base.
image:
	docker/podman.sh base
	docker/podman.sh build

# docker/compose.yaml with podman-compose where no Docker engine runs (README "The stack"):
# images built locally, secrets from docker/.env (copy docker/env.example). PROFILE=medical|smoke.
PROFILE ?= medical
COMPOSE = CONTAINERS_CONF=docker/containers.conf FEDSILO_IMAGE=localhost/fedsilo:dev \
	FEDSILO_POSTGRES_IMAGE=localhost/fedsilo-postgres:dev \
	$(VENV)/bin/podman-compose -f docker/compose.yaml --env-file docker/.env --profile $(PROFILE)

stack-up: setup
	test -f docker/.env || { echo "copy docker/env.example to docker/.env and set its values"; exit 2; }
	docker/podman.sh base && docker/podman.sh build && docker/podman.sh postgres
	$(COMPOSE) up -d --no-build

stack-down: setup
	$(COMPOSE) down

clean:
	rm -rf .fedsilo mlartifacts mlruns mlflow.db .pytest_cache
