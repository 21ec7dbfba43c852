# The two commands of the README:
#   make run   builds edgeward in release mode and serves config/edgeward.yaml on 127.0.0.1:8080
#   make test  runs every test, then cargo fmt --check and cargo clippy -D warnings
# Both first install what a fresh Debian machine with only the Rust toolchain lacks.

CARGO ?= cargo
CONFIG ?= config/edgeward.yaml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test bench setup build check-format lint unit-and-e2e

run: build
	@echo
	@echo "edgeward is starting on http://127.0.0.1:8080 (Ctrl-C stops it). Try:"
	@echo "  curl -s localhost:8080/hello"
	@echo "  curl -s localhost:8080/any/path?with=query -d 'a body'"
	@echo "  curl -s --http2-prior-knowledge localhost:8080/over-h2c"
	@echo "  ./target/release/edgeward validate --config $(CONFIG)"
	@echo
	./target/release/edgeward run --config $(CONFIG)

test: setup check-format unit-and-e2e lint

# In-process costs of the filter host (instance creation, per-request overhead); see README.
bench: setup
	$(CARGO) bench --locked -p edgeward --bench filter_host

build: setup
	$(CARGO) build --release --locked -p edgeward

unit-and-e2e:
	$(CARGO) test --workspace --locked

check-format:
	$(CARGO) fmt --all -- --check
	cd tests/filters && $(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	cd tests/filters && CARGO_TARGET_DIR=$(CURDIR)/target/test-filters $(CARGO) clippy --target wasm32-wasip1 --release --locked -- -D warnings

# Pingora's zlib-ng build needs cmake; filters are built for wasm32-wasip1.
setup:
	@command -v cmake >/dev/null 2>&1 || { \
		echo "installing cmake (needed by Pingora's zlib-ng)"; \
		$(SUDO) apt-get install -y cmake || { $(SUDO) apt-get update && $(SUDO) apt-get install -y cmake; }; }
	@command -v cc >/dev/null 2>&1 || $(SUDO) apt-get install -y build-essential
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
