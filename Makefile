# Benchmarks (issue 10). Run as root from the repository root.
#   make bench                      Kestrel vs perf and bpftrace: 3 rounds x 20 s (bench/peers.py)
#   make bench ROUNDS=1 DURATION=5  a quick smoke run
#   make bench-memory               the kernel-memory table of docs/benchmarks.md (bench/memory_table.py)
#   make bench-symbols              the symbol-store bench (criterion)
# bench waits up to QUIET_WAIT_MIN minutes (default 40) for a quiet machine first; 0 skips the wait.

ROUNDS ?= 3
DURATION ?= 20
START_DELAY ?= 3
QUIET_WAIT_MIN ?= 40
PYTHON ?= python3

.PHONY: bench bench-memory bench-symbols

bench:
	scripts/install-deps build
	PATH="$$HOME/.cargo/bin:$$PATH" $(PYTHON) bench/peers.py --rounds $(ROUNDS) --duration $(DURATION) \
		--start-delay $(START_DELAY) --quiet-wait-min $(QUIET_WAIT_MIN)

bench-memory:
	PATH="$$HOME/.cargo/bin:$$PATH" cargo build --release --locked -p kestrel
	$(PYTHON) bench/memory_table.py

bench-symbols:
	PATH="$$HOME/.cargo/bin:$$PATH" cargo bench -p kestrel-symbols --bench store
