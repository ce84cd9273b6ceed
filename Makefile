# The two commands a newcomer needs:
#   make run    build eventgate and start it in front of a local broker (all dependencies installed)
#   make test   install what the tests need and run them
.PHONY: run test deps build check bench bench-micro fuzz clean

CARGO ?= cargo

run:
	./scripts/deps.sh run
	$(CARGO) build --release
	./scripts/run.sh

test:
	./scripts/deps.sh test
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --no-fail-fast --test-threads 4 && $(CARGO) test --doc; \
	else \
		$(CARGO) test --no-fail-fast -- --test-threads 4; \
	fi

# Formatting and lints, as before every commit.
check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) check --manifest-path fuzz/Cargo.toml

# End-to-end load comparison: direct, socat relay, tansu proxy, eventgate (see BENCHMARKS.md).
bench:
	./scripts/deps.sh bench
	$(CARGO) build --release
	./scripts/bench.sh

# Criterion micro-benchmarks.
bench-micro:
	$(CARGO) bench

# Every fuzz target for FUZZ_SECONDS each, on the stable toolchain (no sanitizer). Corpora grow in
# fuzz/corpus/<target> (not committed), crashes land in fuzz/artifacts/<target>.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= response records produce produce_mirror asyncapi json_value

fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	mkdir -p fuzz/corpus/asyncapi $(addprefix fuzz/corpus/,$(FUZZ_TARGETS))
	cp -f tests/fixtures/asyncapi/* asyncapi/demo.yaml fuzz/corpus/asyncapi/
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
		$(CARGO) fuzz run --sanitizer none $$t fuzz/corpus/$$t $$(test ! -d fuzz/regressions/$$t || echo fuzz/regressions/$$t) -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096; \
	done

clean:
	$(CARGO) clean
	rm -rf .run .venv
