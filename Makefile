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

# End-to-end load comparison: direct, socat relay, tansu proxy, eventgate (see BENCHMARKS.md).
bench:
	./scripts/deps.sh bench
	$(CARGO) build --release
	./scripts/bench.sh

# Criterion micro-benchmarks.
bench-micro:
	$(CARGO) bench

clean:
	$(CARGO) clean
	rm -rf .run .venv
