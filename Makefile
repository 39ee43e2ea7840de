# The two commands of the README:
#   make run   installs and starts what is missing, then runs `sluice standalone`
#   make test  the same set-up, then every test, against ClickHouse 26.9 and 18.16
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
CONFIG ?= sluice.example.toml
CARGO ?= cargo
# Integration tests share two cores with both ClickHouse servers: keep parallelism sane.
TEST_THREADS ?= 4

.PHONY: contract run test services services-test toolchain db build bench api.yaml lint clean mutants

toolchain:
	@command -v $(CARGO) >/dev/null || { echo "Rust is missing: install a toolchain >= 1.94 (rustup) first" >&2; exit 1; }
	@command -v cc >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc >/dev/null; }
	@command -v curl >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl ca-certificates >/dev/null; }
	@command -v tmux >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -q tmux >/dev/null; }

services: toolchain
	scripts/services.sh postgres ch26

services-test: toolchain
	scripts/services.sh postgres ch26 ch18 moto

# The database of `make run` (tests make their own, one per test).
db: services
	@psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'sluice'" | grep -q 1 \
	  || psql -h 127.0.0.1 -U postgres -qc 'CREATE DATABASE sluice'

build: toolchain
	$(CARGO) build --release

run: db build
	@echo "Sluice on http://127.0.0.1:8080 (Swagger UI at /docs). Ctrl-C stops it."
	./target/release/sluice --config $(CONFIG) standalone

test: services-test
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) build --tests
	@echo "=== integration suite against ClickHouse 26.9 (chdb-core, port 8125) ==="
	SLUICE_TEST_CLICKHOUSE_URL=http://127.0.0.1:8125 $(CARGO) test -- --test-threads=$(TEST_THREADS)
	@echo "=== integration suite against ClickHouse 18.16 (Debian, port 8123) ==="
	SLUICE_TEST_CLICKHOUSE_URL=http://127.0.0.1:8123 $(CARGO) test --tests -- --test-threads=$(TEST_THREADS)
	@echo "=== the API contract: a generated Python client and schemathesis against a live server ==="
	$(MAKE) contract

# api.yaml as client developers meet it (scripts/contract.sh).
contract: services-test
	$(CARGO) build
	scripts/contract.sh

# Figures for the issue notes: pickup latency, closed loop, backlog drain against the
# ClickHouse ceiling with a per-step breakdown, streaming ratio, worker RSS, claim latency.
bench: db
	$(CARGO) build --release
	./target/release/sluice --config $(CONFIG) bench

# Mutation testing (cargo-mutants) of the queue and the worker: each surviving mutant is a
# change to src/store or src/worker that no test notices. A build and a test run per
# mutant: not in CI. Each mutant builds only the test targets named in MUTANTS_TESTS
# (passed to every cargo call, so the other 12 test binaries are not linked) and runs
# them under nextest, several tests at once across binaries, stopping at the first
# failure: about 35 s a mutant on two cores. Narrow it with MUTANTS_FILES, e.g.
# `make mutants MUTANTS_FILES="--file src/store/queue.rs"`; the outcome is in
# mutants.out/ (missed.txt lists the survivors).
MUTANTS_FILES ?= --file 'src/store/*.rs' --file 'src/worker/*.rs'
MUTANTS_TESTS ?= --lib --test=bookkeeper --test=faults --test=outages --test=pipeline --test=tenancy \
  --test=concurrency --test=jobs --test=groups --test=truncate --test=followups --test=metrics \
  --test=crash --test=limits --test=fidelity --test=webhooks --test=security --test=bench
MUTANTS_THREADS ?= 6
mutants: services-test
	@command -v cargo-mutants >/dev/null || $(CARGO) install --locked cargo-mutants
	@command -v cargo-nextest >/dev/null || $(CARGO) install --locked cargo-nextest
	SLUICE_TEST_CLICKHOUSE_URL=http://127.0.0.1:8125 NEXTEST_TEST_THREADS=$(MUTANTS_THREADS) \
	  $(CARGO) mutants --test-tool nextest $(MUTANTS_FILES) $(addprefix --cargo-arg=,$(MUTANTS_TESTS))

# Regenerates the committed OpenAPI document (a test fails when it is stale).
api.yaml:
	$(CARGO) run -q -- openapi > api.yaml

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	scripts/services.sh stop
	$(CARGO) clean
