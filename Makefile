# ecs-capacity-agent — see README.md. `make run` and `make test` are all a newcomer needs.
CARGO ?= cargo
DESTDIR ?=
PREFIX ?= /usr
BIN := ecs-capacity-agent

.PHONY: build run test lint bench release install ami check

build:
	$(CARGO) build

# The daemon on its local default: stdout + Prometheus on 127.0.0.1:9779, no AWS, no IMDS.
run:
	$(CARGO) run -- run --config config/local.toml

# Installs what the tests need (Debian packages, moto in .venv, cargo-nextest), then runs everything.
test:
	scripts/test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

bench:
	$(CARGO) bench

release:
	$(CARGO) build --release --locked
	@ls -l target/release/$(BIN)
