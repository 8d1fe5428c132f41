#!/usr/bin/env bash
# The scenarios, run inside the VM (see run.sh): real-time capture from the snd-aloop card and
# sessions over a shaped loopback. Each scenario leaves its evidence in OUT/NAME/ (the
# client's events as `SECONDS.MICROS JSON` lines, its stderr, the emulator's record, the
# times of what this script did in marks.txt); check.py judges it afterwards.
#
#   scenarios.sh BIN_DIR AUDIO_DIR OUT [NAME...]      (default: all of them)
#
# Two lanes run at once, to keep CI time down: the scenarios that capture from the card one
# after another, and the network ones one after another. Each scenario's emulator listens on
# a port of its own and only that port's traffic is shaped (prio bands with u32 filters on
# lo), so a lane's shaping never touches the other lane's sessions.
set -uo pipefail
bin=$1 audio=$2 out=$3
shift 3
capture_lane=(capture_48k overrun player_restart unplug slow_link_mic gate)
network_lane=(wifi blackout slow_link opus_slow_link)
selected=("$@")

# Fifos cannot live on the 9p results folder: they go in the VM's own /tmp (the overlay).
scratch=$(mktemp -d)
# Every wait here is bounded: in loops by count, on processes by `timeout`.
started=$EPOCHREALTIME
log() { printf '[vm %6.1fs] %s\n' "$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')" "$*"; }
mark() { printf '%s %s\n' "$EPOCHREALTIME" "$*" >> "$dir/marks.txt"; }
# Prefixes each line with the time it arrived (bash's clock: no process per line).
stamp() { while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }

# The emulator, recording every session, serving until $emu_fd (its stdin's fifo) closes.
emulator_start() {
    rm -f "$scratch/emu.in.$port"
    mkfifo "$scratch/emu.in.$port"
    "$bin/emulator" --port "$port" --record "$dir/emu" < "$scratch/emu.in.$port" > "$dir/emu.url" 2> "$dir/emu.log" &
    emu_pid=$!
    exec {emu_fd}> "$scratch/emu.in.$port"
    for _ in $(seq 300); do [ -s "$dir/emu.url" ] && break; sleep 0.1; done
    url=$(head -n 1 "$dir/emu.url")
    [ -n "$url" ] || { log "the emulator did not start"; cat "$dir/emu.log"; return 1; }
}
emulator_stop() {
    exec {emu_fd}>&-
    for _ in $(seq 100); do kill -0 "$emu_pid" 2>/dev/null || break; sleep 0.1; done
    kill "$emu_pid" 2>/dev/null
    wait "$emu_pid" 2>/dev/null
}
# Waits up to $2 tenths of a second for process $1 to end; kills it after that.
wait_bounded() {
    for _ in $(seq "$2"); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$1" 2>/dev/null; then
        log "pid $1 still running after $(($2 / 10)) s: killed"
        kill -9 "$1" 2>/dev/null
    fi
    wait "$1" 2>/dev/null
}
duration_s() { soxi -D "$1"; }
# The client's resident memory every 0.5 s while it runs, as `TIME KB` lines.
sample_rss() {
    : > "$dir/rss.txt"
    for _ in $(seq 1200); do
        kill -0 "$client_pid" 2>/dev/null || break
        while read -r key kb _; do
            [ "$key" = VmRSS: ] && printf '%s %s\n' "$EPOCHREALTIME" "$kb" >> "$dir/rss.txt"
        done < "/proc/$client_pid/status" 2>/dev/null
        sleep 0.5
    done
}
player() { aplay -q -D hw:Loopback,0,0 "$@"; }
# The mic example on the capture side of the card, against this scenario's emulator.
mic_start() {
    "$bin/mic" --url "$url" --api-key vm --device hw:Loopback,1,0 --json "$@" \
        > >(stamp > "$dir/events.txt") 2> "$dir/client.log" < /dev/null &
    client_pid=$!
}
file_start() {
    "$bin/transcribe_file" --url "$url" --api-key vm --realtime --json "$@" \
        > >(stamp > "$dir/events.txt") 2> "$dir/client.log" < /dev/null &
    client_pid=$!
}
client_wait() {
    wait_bounded "$client_pid" "$1"
    echo $? > "$dir/client.rc"
    sleep 0.2 # the stamping reader flushes the last lines
}
# Scenario number N (1-based in the list) owns port 47100+N and prio band N+1 (band 1 takes
# all other traffic, unshaped). lo gets a real link's 1500-byte MTU rather than 64 KiB: tbf
# drops whole packets larger than its burst, which stalls a connection instead of slowing it.
ip link set dev lo mtu 1500
tc qdisc replace dev lo root handle 1: prio bands 16 priomap 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
shape() {
    local band=$((number + 1)) way
    tc qdisc replace dev lo parent 1:$band handle $((band + 100)): "$@" || return 1
    for way in sport dport; do
        tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip $way "$port" 0xffff flowid 1:$band
    done
    mark "shape $*"
}
# Back to a perfect link, for a netem shaping only (the kernel refuses to swap a band's qdisc
# for one of another kind in place, and deleting it would leave a band that drops all).
unshape() {
    tc qdisc change dev lo parent 1:$((number + 1)) handle $((number + 101)): netem
    mark unshape
}

capture_48k() {
    # A 48 kHz stereo player holds the playback side, so the capture side offers only that.
    mark play
    player "$audio/speech3_48k2.wav" &
    local play=$!
    sleep 0.3
    mark capture_start
    mic_start --seconds "$(awk -v d="$(duration_s "$audio/speech3.wav")" 'BEGIN { print d }')"
    wait_bounded "$play" 300
    client_wait 300
}

overrun() {
    mark play
    player "$audio/speech4_48k2.wav" &
    local play=$!
    sleep 0.3
    mic_start --seconds "$(duration_s "$audio/speech4.wav")"
    # Frozen once the first sentence has been captured (its speech_stopped), so that audio
    # before and after the freeze both arrive and the jump between them can be measured.
    for _ in $(seq 200); do grep -q speech_stopped "$dir/events.txt" 2>/dev/null && break; sleep 0.1; done
    # The capturing process itself is frozen (not a wrapper), as a busy device would be.
    mark stop
    kill -STOP "$client_pid"
    sleep 1
    kill -CONT "$client_pid"
    mark cont
    wait_bounded "$play" 300
    client_wait 300
}

player_restart() {
    # The first player opens the playback side before mic opens the capture side: whichever
    # side comes first sets the format (mic first gets 16 kHz mono, and then a 48 kHz stereo
    # player cannot open). Once capture runs, it keeps its format between players.
    mark play1
    player "$audio/speech2_48k2.wav" &
    local play=$!
    sleep 0.3
    mic_start --seconds "$(awk -v a="$(duration_s "$audio/speech2.wav")" 'BEGIN { print 2 * a + 3 }')"
    wait_bounded "$play" 300
    mark play1_end
    sleep 3
    mark play2
    player "$audio/speech2b_48k2.wav"
    mark play2_end
    client_wait 300
}

unplug() {
    mark play
    player "$audio/speech3_48k2.wav" &
    local play=$!
    sleep 0.3
    mic_start --seconds 30
    sleep 6
    # Unbinding the card's platform device removes it while in use, as unplugging a USB
    # microphone does (the module cannot be unloaded while in use); the write returns once
    # every open file of the card is closed.
    mark unplug
    (echo snd_aloop.0 > /sys/bus/platform/drivers/snd_aloop/unbind) &
    local unbind=$!
    client_wait 300
    wait_bounded "$play" 50
    wait_bounded "$unbind" 50
    echo snd_aloop.0 > /sys/bus/platform/drivers/snd_aloop/bind 2>/dev/null
    for _ in $(seq 50); do [ -e /dev/snd/pcmC0D1c ] && break; sleep 0.1; done
    mark replugged
}

wifi() {
    shape netem delay 80ms 40ms loss 1%
    file_start "$audio/speech15.wav"
    client_wait 1200
}

blackout() {
    # Pings every 2 s and 6 s of silence mean a dead link, so the outage is detected while
    # it lasts; 20 s of total loss starts inside the long utterance (2 s to 12 s).
    file_start --ping-ms 2000 --dead-peer-ms 6000 "$audio/long.wav"
    for _ in $(seq 100); do grep -q speech_started "$dir/events.txt" 2>/dev/null && break; sleep 0.1; done
    sleep 4
    shape netem loss 100%
    mark blackout_start
    sleep 20
    unshape
    mark blackout_end
    client_wait 1200
}

slow_link() {
    # 128 kbit/s up and down (lo carries both), less than 16 kHz PCM needs (256 kbit/s, and
    # a third more as base64). transcribe_file's appends block while the link is backed up,
    # so the file goes out slower than real time and end_session's 20 s runs out with audio
    # still unsent: that must be reported as dropped.
    shape tbf rate 128kbit burst 16kb latency 400ms
    file_start "$audio/speech6.wav"
    sample_rss
    client_wait 600
}

slow_link_mic() {
    # The same link with a real-time source: mic cannot wait for the link (the card does
    # not), so what cannot be sent must be dropped, and reported.
    shape tbf rate 128kbit burst 16kb latency 400ms
    mark play
    player "$audio/speech6m_48k2.wav" &
    local play=$!
    sleep 0.3
    mic_start --seconds "$(duration_s "$audio/speech6m.wav")"
    sample_rss
    client_wait 600
    wait_bounded "$play" 100
}

gate() {
    # Sentences with long pauses, mic --gate in real time: the gate holds the pauses back, and
    # with an idle timeout shorter than the pauses each one ends its session and the next
    # onset opens a new one; check.py expects every sentence transcribed, whole, once.
    mark play
    player "$audio/gated_48k2.wav" &
    local play=$!
    sleep 0.3
    mic_start --gate --gate-idle-ms 4000 --seconds "$(duration_s "$audio/gated.wav")"
    wait_bounded "$play" 600
    client_wait 300
}

opus_slow_link() {
    # The same 128 kbit/s link as slow_link, with the file sent as Ogg Opus at real time: the
    # stream needs about a third of the link, so nothing should wait or be dropped.
    ip link set dev lo mtu 1500
    shape tbf rate 128kbit burst 16kb latency 400ms
    file_start --format opus "$audio/speech6.wav"
    client_wait 600
}

run_one() {
    local name=$1
    dir=$out/$name
    rm -rf "$dir"
    mkdir -p "$dir"
    log "scenario $name"
    local t0=$EPOCHREALTIME
    url=
    if emulator_start; then
        mark begin
        "$name"
        mark end
        emulator_stop
    fi
    log "scenario $name done in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
}
run_lane() {
    local name
    for name in "$@"; do
        [ ${#selected[@]} -eq 0 ] || [[ " ${selected[*]} " == *" $name "* ]] || continue
        number=0
        for n in "${all[@]}"; do number=$((number + 1)); [ "$n" = "$name" ] && break; done
        port=$((47100 + number))
        run_one "$name"
    done
}
all=("${capture_lane[@]}" "${network_lane[@]}")
run_lane "${capture_lane[@]}" &
capture=$!
run_lane "${network_lane[@]}" &
network=$!
wait "$capture"
wait "$network"
tc qdisc del dev lo root 2>/dev/null
log "all scenarios done"
