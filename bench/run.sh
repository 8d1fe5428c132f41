#!/bin/sh
# Builds what the benchmark runs and runs it: this client (release, default features), the
# same without TLS and ALSA (for the peak-RSS rows; the emulator in it has no TLS either), the
# emulator, and the Python SDK peer when `python3 -c 'import dashscope'` works (pip install
# dashscope). Options go to the benchmark; see `target/release/bench --help` (`--quick` is a
# trial run). Takes about eight minutes on two cores.
# The same build makes target/release/slow_uplink, the slow-uplink scenario (README, "Slow
# uplink"): run it on its own, it takes about seven minutes and has options of its own.
set -eu
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build --release -p qwen-asr-bench -p qwen-asr-emulator
CARGO_TARGET_DIR="$target/lean" cargo build --release -p qwen-asr-bench --no-default-features \
    --bin transcribe_file
exec "$target/release/bench" --lean-dir "$target/lean/release" "$@"
