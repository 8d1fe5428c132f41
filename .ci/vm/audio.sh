#!/usr/bin/env bash
# Makes a speech recording for the VM scenarios: synthetic speech (espeak-ng), one sentence
# per utterance, separated by silence long enough for a VAD to cut there.
#
#   .ci/vm/audio.sh OUT FIRST COUNT [GAPS_S] [LEAD_S] [TRAIL_S]
#
# COUNT sentences from the list below, starting at number FIRST (0-based, wrapping around).
# GAPS_S is the silence after each sentence, a comma-separated list whose last value repeats
# (default 1.5: each sentence its own utterance; 0.3 keeps sentences in one utterance).
# Writes OUT.wav (16 kHz mono 16-bit: what a client sends), OUT_48k2.wav (the same at 48 kHz
# stereo: what a player plays into the loopback card) and OUT.txt (one line per utterance:
# its first and last sample at 16 kHz, then its text). The trailing silence keeps a player's last blocks (which the loopback
# card may drop while the player drains) out of the speech.
set -euo pipefail
out=$1
first=$2
count=$3
IFS=, read -r -a gaps <<< "${4:-1.5}"
lead=${5:-0.5}
trail=${6:-2}
sentences=(
    "The quick brown fox jumps over the lazy dog."
    "Streaming speech recognition runs on a small computer."
    "Every word that was played should arrive at the server."
    "A slow network must never lose audio without saying so."
    "Seven silver swans swam silently seaward."
    "The weather today is cloudy with a chance of rain."
    "Please turn off the lights in the kitchen."
    "My phone number starts with four two seven."
    "The train to the airport leaves every twenty minutes."
    "Bright yellow flowers grow along the river bank."
    "Reconnecting after a blackout replays what was not transcribed."
    "Nothing is lost and nothing is transcribed twice."
    "The meeting has been moved to Thursday afternoon."
    "She sells sea shells by the sea shore."
    "Good morning and welcome to the test."
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
parts=()
: > "$out.txt"
pos=$(awk -v s="$lead" 'BEGIN { printf "%d", s * 16000 }')
sox -n -r 16000 -c 1 -b 16 "$work/lead.wav" trim 0 "$lead"
parts+=("$work/lead.wav")
for ((i = 0; i < count; i++)); do
    text=${sentences[(first + i) % ${#sentences[@]}]}
    espeak-ng -w "$work/raw$i.wav" "$text"
    # Trimmed of espeak's own leading and trailing silence, so the recorded bounds are speech.
    sox "$work/raw$i.wav" -r 16000 -c 1 -b 16 "$work/s$i.wav" silence 1 0.01 0.5% reverse silence 1 0.01 0.5% reverse
    n=$(soxi -s "$work/s$i.wav")
    printf '%d %d %s\n' "$pos" "$((pos + n))" "$text" >> "$out.txt"
    parts+=("$work/s$i.wav")
    pos=$((pos + n))
    if ((i + 1 < count)); then
        gap=${gaps[i < ${#gaps[@]} ? i : ${#gaps[@]} - 1]}
        sox -n -r 16000 -c 1 -b 16 "$work/gap$i.wav" trim 0 "$gap"
        parts+=("$work/gap$i.wav")
        pos=$((pos + $(soxi -s "$work/gap$i.wav")))
    fi
done
sox -n -r 16000 -c 1 -b 16 "$work/trail.wav" trim 0 "$trail"
parts+=("$work/trail.wav")
sox "${parts[@]}" "$out.wav"
sox "$out.wav" -r 48000 -c 2 "$out"_48k2.wav
