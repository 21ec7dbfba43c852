# The two commands of the README:
#   make run   builds edgeward and the filter modules (filters/, for wasm32-wasip1) in release
#              mode, makes the demo's local CA and HTTPS certificate (config/certs/) if missing,
#              and serves config/edgeward.yaml on 127.0.0.1:8080 and, over HTTPS, 127.0.0.1:8443
#   make test  runs every test (the filters' native unit tests too), then cargo fmt --check, the
#              layering check of proxy/src and cargo clippy -D warnings on the proxy's workspace
#              and both filter workspaces
# and `make fuzz`, the property-based tests with many cases (FUZZ_CASES).
# Both first install what a fresh Debian machine with only the Rust toolchain lacks.

CARGO ?= cargo
CONFIG ?= config/edgeward.yaml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The product filters (filters/) are a workspace of their own, built for wasm32-wasip1 into
# their own target directory whatever CARGO_TARGET_DIR says: config/edgeward.yaml loads them
# from filters/target/wasm32-wasip1/release/.
FILTERS_TARGET_DIR := $(CURDIR)/filters/target
# The demo's local CA and HTTPS certificate (`make demo-certs`), which config/edgeward.yaml
# names as certs/; git-ignored.
DEMO_CERTS := config/certs
# Signed with the demo HMAC key of config/edgeward.yaml; expires in 2100.
DEMO_TOKEN := eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImRlbW8ifQ.eyJpc3MiOiJodHRwczovL2RlbW8uZWRnZXdhcmQuZXhhbXBsZSIsImF1ZCI6ImVkZ2UtYXBpIiwic3ViIjoiZGVtby11c2VyIiwiZW1haWwiOiJkZW1vQGV4YW1wbGUuY29tIiwiaWF0IjoxNzY0MDAwMDAwLCJleHAiOjQxMDI0NDQ4MDB9.-uXvDZjqRwtuqjy467BmqXqH8cQKXiA57vZFKPTozmE

.PHONY: run test fuzz stress reload-test bench bench-proxy bench-host bench-setup setup build filters demo-certs check-format check-layers lint unit-and-e2e

run: build demo-certs
	@echo
	@echo "edgeward is starting on http://127.0.0.1:8080 and https://127.0.0.1:8443 (Ctrl-C stops it). Try:"
	@echo "  curl -s localhost:8080/hello"
	@echo "  curl -s --cacert $(DEMO_CERTS)/ca.pem https://localhost:8443/hello         # HTTPS, trusting the demo's local CA"
	@echo "  curl -s -i -H 'X-Forwarded-For: 192.0.2.10' localhost:8080/hello      # JP client: APAC origin"
	@echo "  curl -s -i localhost:8080/api/orders                                     # 401: no token"
	@echo "  curl -s -H 'Authorization: Bearer $(DEMO_TOKEN)' localhost:8080/api/orders"
	@echo "  curl -s -i localhost:8080/static/app.js                                  # twice: a cache hit"
	@echo "  curl -s -X PURGE localhost:8080/static/app.js"
	@echo "  curl -s -H 'Cookie: ab_bucket=new-checkout' localhost:8080/shop/checkout/pay    # A/B test bucket"
	@echo "  curl -s localhost:8080/public/orders                                  # JSON filtered at the edge"
	@echo "  curl -s 'localhost:8080/account/42?status=shipped'                     # one answer from two upstreams"
	@echo "  curl -s localhost:9901/metrics"
	@echo "  curl -s -X POST localhost:9901/config/reload                           # after editing config/edgeward.yaml"
	@echo "  ./target/release/edgeward validate --config $(CONFIG)"
	@echo
	./target/release/edgeward run --config $(CONFIG)

test: setup check-format check-layers unit-and-e2e lint

# Fuzzing on the stable toolchain: the property-based tests (proptest) with many more cases
# than `make test` runs (a few dozen each). FUZZ_CASES sets how many per property; every
# command below sees it as proptest's standard PROPTEST_CASES. Property tests live in modules
# named `proptests`: one line per crate (or workspace) that has some.
FUZZ_CASES ?= 20000
fuzz: export PROPTEST_CASES := $(FUZZ_CASES)
fuzz: setup
	$(CARGO) test --locked -p edgeward --lib proptests
	cd filters && $(CARGO) test --locked -p jwt-auth --target-dir $(FILTERS_TARGET_DIR) proptests

# edgeward against nginx on this machine (bench/run.py; docs/benchmarks.md), then the
# in-process costs of the filter host. BENCH_SECONDS, BENCH_ROUNDS and BENCH_ONLY tune the first.
bench: bench-proxy bench-host

bench-proxy: build bench-setup
	python3 bench/run.py

bench-host: setup
	$(CARGO) bench --locked -p edgeward --bench filter_host

# Hostile and heavy load on loopback: slowloris against the header timeout, 5,000 concurrent
# connections, a 3-minute soak watching memory (bench/stress.py; docs/benchmarks.md).
stress: build bench-setup
	python3 bench/stress.py

reload-test: build bench-setup
	python3 bench/reload.py

# The benchmark's reference proxy, load generators and taskset (openssl for its certificate and
# cc for its wrk preload come with setup, through build).
bench-setup:
	@command -v nginx >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 && command -v h2load >/dev/null 2>&1 || { \
		echo "installing nginx, wrk and h2load for the benchmark"; \
		$(SUDO) apt-get install -y nginx wrk nghttp2-client || { $(SUDO) apt-get update && $(SUDO) apt-get install -y nginx wrk nghttp2-client; }; }
	@command -v taskset >/dev/null 2>&1 || $(SUDO) apt-get install -y util-linux

build: setup filters
	$(CARGO) build --release --locked -p edgeward

# The demo's HTTPS certificate, made once with the openssl CLI into config/certs/ (git-ignored;
# delete the folder for new ones): a local CA, ca.pem, valid 10 years, and the certificate it
# signs for localhost, 127.0.0.1 and ::1, localhost.pem with its key localhost.key, valid 825
# days, both ECDSA P-256. The keys never leave this machine; localhost.pem is written last, so
# an interrupted run starts over.
demo-certs: setup
	@[ -f $(DEMO_CERTS)/localhost.pem ] || { \
		echo "making the demo's local CA and HTTPS certificate in $(DEMO_CERTS)/"; \
		set -e; mkdir -p $(DEMO_CERTS); cd $(DEMO_CERTS); umask 077; \
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key; \
		openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=edgeward demo CA" -out ca.pem; \
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out localhost.key; \
		printf '%s\n' "basicConstraints = critical, CA:FALSE" "keyUsage = critical, digitalSignature" \
			"extendedKeyUsage = serverAuth" "subjectKeyIdentifier = hash" "authorityKeyIdentifier = keyid" \
			"subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1" > localhost.ext; \
		openssl req -new -key localhost.key -subj "/CN=localhost" -out localhost.csr; \
		openssl x509 -req -in localhost.csr -CA ca.pem -CAkey ca.key -set_serial 0x$$(openssl rand -hex 16) \
			-days 825 -sha256 -extfile localhost.ext -out localhost.pem.new; \
		rm localhost.csr localhost.ext; chmod 644 ca.pem localhost.pem.new; mv localhost.pem.new localhost.pem; }

# The filter modules config/edgeward.yaml uses (jwt_auth.wasm, add_headers.wasm, ...).
filters: setup
	cd filters && $(CARGO) build --release --locked --target wasm32-wasip1 --target-dir $(FILTERS_TARGET_DIR)

unit-and-e2e:
	cd filters && $(CARGO) test --locked --target-dir $(FILTERS_TARGET_DIR)
	$(CARGO) test --workspace --locked

check-format:
	$(CARGO) fmt --all -- --check
	cd tests/filters && $(CARGO) fmt --all -- --check
	cd filters && $(CARGO) fmt --all -- --check

# The files of proxy/src import each other only down the layers docs/architecture.md lists.
check-layers:
	python3 tools/test_check_layers.py
	python3 tools/check_layers.py

# The filter workspaces twice: as the wasm32 modules they ship as, and for the host with their
# native unit tests (`--all-targets`), which the wasm32 pass does not see.
lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	cd tests/filters && CARGO_TARGET_DIR=$(CURDIR)/target/test-filters $(CARGO) clippy --target wasm32-wasip1 --release --locked -- -D warnings
	cd tests/filters && CARGO_TARGET_DIR=$(CURDIR)/target/test-filters $(CARGO) clippy --all-targets --locked -- -D warnings
	cd filters && $(CARGO) clippy --target wasm32-wasip1 --release --locked --target-dir $(FILTERS_TARGET_DIR) -- -D warnings
	cd filters && $(CARGO) clippy --all-targets --locked --target-dir $(FILTERS_TARGET_DIR) -- -D warnings

# Pingora's zlib-ng build needs cmake; filters are built for wasm32-wasip1; the openssl CLI makes
# the demo's certificate (and the benchmark's).
setup:
	@command -v cmake >/dev/null 2>&1 || { \
		echo "installing cmake (needed by Pingora's zlib-ng)"; \
		$(SUDO) apt-get install -y cmake || { $(SUDO) apt-get update && $(SUDO) apt-get install -y cmake; }; }
	@command -v cc >/dev/null 2>&1 || $(SUDO) apt-get install -y build-essential
	@command -v python3 >/dev/null 2>&1 || $(SUDO) apt-get install -y python3
	@command -v openssl >/dev/null 2>&1 || $(SUDO) apt-get install -y openssl
	@command -v curl >/dev/null 2>&1 || $(SUDO) apt-get install -y curl
	@command -v git >/dev/null 2>&1 || $(SUDO) apt-get install -y git
	@command -v npm >/dev/null 2>&1 || { \
		echo "installing node and npm (the AssemblyScript filter template builds with them)"; \
		$(SUDO) apt-get install -y nodejs npm || { $(SUDO) apt-get update && $(SUDO) apt-get install -y nodejs npm; }; }
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
