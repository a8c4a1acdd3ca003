# ecs-capacity-agent — see README.md. `make run` and `make test` are all a newcomer needs.
CARGO ?= cargo
DESTDIR ?=
PREFIX ?= /usr
NAME := ecs-capacity-agent
# The binary `make install` installs (scripts/install.sh); override with BIN=path.
BIN ?= target/release/$(NAME)

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
	@ls -l target/release/$(NAME)

# Lays out /usr/bin, /etc/ecs-capacity-agent, the systemd unit and /var/lib/ecs-capacity-agent under
# DESTDIR (empty: this machine). Installs BIN as it is: run `make release` first.
install:
	DESTDIR="$(DESTDIR)" BIN="$(BIN)" scripts/install.sh

# The ECS container instance AMI (Packer, AWS credentials needed); see README "Install on an ECS AMI".
ami:
	BIN="$(BIN)" scripts/build-ami.sh
