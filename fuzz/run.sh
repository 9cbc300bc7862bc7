#!/usr/bin/env bash
# Run every fuzz target (or the ones named) for SECONDS each; non-zero exit on
# any crash, panic, leak or out-of-memory. Usage: fuzz/run.sh [SECONDS] [TARGET...]
#
# cargo-fuzz needs -Z flags (the address sanitizer): the stable toolchain with
# RUSTC_BOOTSTRAP=1 (tested with 1.95), or nightly with FUZZ_NIGHTLY=1.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
if [ "${FUZZ_NIGHTLY:-0}" = 1 ]; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <("${fuzz[@]}" list)
"${fuzz[@]}" build -O
for t in "${targets[@]}"; do
  echo "=== fuzz $t for ${seconds}s"
  # A scratch copy of the seeds: what libFuzzer adds is not committed.
  work="$(mktemp -d)"
  cp corpus/"$t"/* "$work"/
  "${fuzz[@]}" run -O "$t" "$work" -- -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 2>&1 | tail -n 3
  rm -rf "$work"
done
