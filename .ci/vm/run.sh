#!/usr/bin/env bash
# The real-world scenarios: the examples, built here, run inside a VM with a real kernel sound
# device (snd-aloop) and traffic shaping on its loopback (netem, tbf); then check.py judges
# what each scenario left behind and prints what it checked and the figures.
#
#   .ci/vm/run.sh [NAME...]     (default: every scenario; names as in scenarios.sh)
#
# Exit status: 0 when every scenario passed (or was skipped because its feature is not
# there yet), 1 otherwise. Results stay in target/vm/ for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive
started=$SECONDS

missing=()
for pkg in qemu-system-x86 busybox-static cpio kmod alsa-utils sox espeak-ng iproute2 python3; do
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    # A fresh machine may have no package lists yet.
    timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { timeout 600 apt-get update -qq && timeout 600 apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# Optimized builds: under emulation a debug build of mic needs more than a whole CPU to capture
# and resample 48 kHz stereo (it overran all the time), an optimized one about a third of
# one. Without LTO and with parallel codegen, so that the build takes about as long as a
# debug one; in a folder of their own, so that no other build is invalidated.
target=$(pwd -P)/${CARGO_TARGET_DIR:-target}
CARGO_TARGET_DIR=$target/vm-build CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=2 \
    cargo build --locked -q --release --features gate,opus --example mic --example transcribe_file \
    --bin qwen-asr-emulator -p qwen-asr-realtime -p qwen-asr-emulator
bin=$target/vm-build/release/examples
# The emulator is a binary of its own crate; the scenarios find it beside the examples.
ln -sf ../qwen-asr-emulator "$bin/emulator"
out=$target/vm
rm -rf "$out"
mkdir -p "$out/audio"
a=$out/audio
# OUT FIRST COUNT GAPS LEAD TRAIL: see audio.sh. What is played starts with 4 s of silence:
# the player has to open the card before mic does (it sets the format), and what it plays
# before mic has started (over a second under emulation) is not captured.
.ci/vm/audio.sh "$a/speech3" 0 3 1.5 4
.ci/vm/audio.sh "$a/speech4" 3 4 1.5 4
.ci/vm/audio.sh "$a/speech2" 7 2 1.5 4 0.5
.ci/vm/audio.sh "$a/speech2b" 9 2 1.5 0.5 0.5
.ci/vm/audio.sh "$a/speech15" 0 15
.ci/vm/audio.sh "$a/long" 4 11 0.3,0.3,0.3,1.5
.ci/vm/audio.sh "$a/speech6" 5 6
.ci/vm/audio.sh "$a/speech6m" 5 6 1.5 4
# For the speech gate: four sentences 6 s apart, longer than the idle timeout the scenario
# sets, so that each pause ends a session and the next sentence opens one.
.ci/vm/audio.sh "$a/gated" 11 4 6 4 3
echo "audio made (t=$((SECONDS - started)) s)"

status=0
# The scenarios take about 3 minutes of real time (two lanes at once); the bound leaves room
# for a slow machine.
.ci/vm/vm.sh --timeout 400 --results "$out" -- bash .ci/vm/scenarios.sh "$bin" "$a" "$out" "$@" \
    || status=$?
echo "VM done (exit $status, t=$((SECONDS - started)) s)"
if [ "$status" -ne 0 ]; then
    echo "FAIL: the VM run ended with status $status"
fi
python3 .ci/vm/check.py "$out" "$@" || status=1
echo "VM scenarios: $((SECONDS - started)) s in all"
[ "$status" -eq 0 ]
