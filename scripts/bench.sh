#!/usr/bin/env bash
# Benchmarks devserver against the baselines it must beat, each figure a
# ratio measured side by side in one run (medians of several runs). Builds
# the release binary first. `--smoke` runs tiny sizes, only to check that
# the benchmark still works (CI does this); the figures then mean nothing.
# Needs git, python3 and curl. Takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --release --locked
python3 scripts/bench.py --devserver "$PWD/target/release/devserver" "$@"
