#!/bin/sh
# Builds what the benchmark runs and runs it: this client (release, default features), the
# same without TLS and ALSA (for the peak-RSS row), the emulator, and the Python SDK peer when
# `python3 -c 'import dashscope'` works (pip install dashscope). Options go to the benchmark;
# see `target/release/examples/bench --help`. Takes about eight minutes on two cores.
set -eu
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build --release --examples
CARGO_TARGET_DIR="$target/lean" cargo build --release --no-default-features \
    --example transcribe_file
exec "$target/release/examples/bench" --lean-dir "$target/lean/release/examples" "$@"
