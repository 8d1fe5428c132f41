#!/usr/bin/env python3
"""The Python side of the benchmark: the official DashScope SDK
(dashscope.audio.qwen_omni.OmniRealtimeConversation) doing what bench_client
(src/bin/bench_client.rs) does, step for step, with the same command line and the same
one-line JSON on stdout. The bench driver (src/main.rs) runs it as a child process when
`python3 -c 'import dashscope'` works (`pip install dashscope`).

    python_peer.py stream  URL WAV [--realtime]
    python_peer.py idle    URL SECONDS
    python_peer.py connect URL N
    python_peer.py latency URL WAV CHUNKS INTERVAL_MS

URL is the server's address without ?model= (the SDK appends it). Times are
time.monotonic_ns(), which is CLOCK_MONOTONIC, the clock the Rust side reads too.
"""

import base64
import json
import resource
import sys
import threading
import time
import wave

# The SDK's import is part of what a user's process pays; CPU is read after it (cpu_start_us).
from dashscope.audio.qwen_omni import (  # noqa: E402
    MultiModality,
    OmniRealtimeCallback,
    OmniRealtimeConversation,
)
from dashscope.audio.qwen_omni.omni_realtime import TranscriptionParams  # noqa: E402

CHUNK_MS = 100
MODEL = "qwen3-asr-flash-realtime"


def cpu_us():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return int((ru.ru_utime + ru.ru_stime) * 1e6)


def sleep_until(t_ns):
    left = t_ns - time.monotonic_ns()
    if left > 0:
        time.sleep(left / 1e9)


class Callback(OmniRealtimeCallback):
    """Counts events; in latency mode, timestamps the partials the peer numbered."""

    def __init__(self):
        self.events = 0
        self.completed = 0
        self.recv = []

    def on_event(self, message):
        t = time.monotonic_ns()
        self.events += 1
        kind = message.get("type", "")
        if kind.endswith("transcription.completed"):
            self.completed += 1
        elif kind.endswith("transcription.text"):
            stash = message.get("stash", "").strip()
            if stash.isdigit():
                self.recv.append([int(stash), t])


def start(url, callback):
    """Connect and configure as the SDK's ASR example does: server VAD, 16 kHz PCM."""
    conv = OmniRealtimeConversation(model=MODEL, callback=callback, url=url, api_key="bench")
    conv.connect()
    conv.update_session(
        output_modalities=[MultiModality.TEXT],
        enable_input_audio_transcription=True,
        transcription_params=TranscriptionParams(sample_rate=16000, input_audio_format="pcm"),
        enable_turn_detection=True,
        turn_detection_type="server_vad",
    )
    return conv


def chunk_bytes(w):
    return w.getframerate() * CHUNK_MS // 1000 * w.getsampwidth()


def stream(url, path, realtime, cpu_start):
    w = wave.open(path, "rb")
    size = chunk_bytes(w) // w.getsampwidth()
    cb = Callback()
    t0 = time.monotonic_ns()
    conv = start(url, cb)
    first_append_ns = 0
    chunks = 0
    audio_bytes = 0
    t_stream = time.monotonic_ns()
    while True:
        data = w.readframes(size)
        if not data:
            break
        conv.append_audio(base64.b64encode(data).decode("ascii"))
        if chunks == 0:
            first_append_ns = time.monotonic_ns() - t0
        chunks += 1
        audio_bytes += len(data)
        if realtime:
            sleep_until(t_stream + chunks * CHUNK_MS * 1_000_000)
    conv.end_session(timeout=60)
    conv.close()
    wall_ns = time.monotonic_ns() - t0
    return {
        "cpu_start_us": cpu_start,
        "cpu_end_us": cpu_us(),
        "connect_to_first_append_ns": first_append_ns,
        "wall_ns": wall_ns,
        "audio_bytes": audio_bytes,
        "events": cb.events,
        "completed": cb.completed,
    }


def idle(url, secs):
    conv = start(url, Callback())
    c0, t0 = cpu_us(), time.monotonic_ns()
    time.sleep(secs)
    c1, t1 = cpu_us(), time.monotonic_ns()
    conv.close()
    return {"idle_cpu_us": c1 - c0, "idle_ns": t1 - t0}


def connect(url, n):
    chunk = base64.b64encode(bytes(3200)).decode("ascii")
    times = []
    for _ in range(n):
        t0 = time.monotonic_ns()
        conv = start(url, Callback())
        conv.append_audio(chunk)
        times.append(time.monotonic_ns() - t0)
        conv.close()
    return {"connect_ns": times}


def latency(url, path, chunks, interval_ms):
    w = wave.open(path, "rb")
    size = chunk_bytes(w) // w.getsampwidth()
    cb = Callback()
    t_connect = time.monotonic_ns()
    conv = start(url, cb)
    handover = []
    t_start = time.monotonic_ns()
    for i in range(chunks):
        sleep_until(t_start + i * interval_ms * 1_000_000)
        data = w.readframes(size)
        if not data:
            w.rewind()
            data = w.readframes(size)
        # Handed over before the base64: the Rust client encodes inside its append.
        t = time.monotonic_ns()
        conv.append_audio(base64.b64encode(data).decode("ascii"))
        handover.append(t)
    conv.end_session(timeout=20)
    conv.close()
    return {"connect_start_ns": t_connect, "handover_ns": handover, "recv": cb.recv}


def main():
    cpu_start = cpu_us()
    args = sys.argv[1:]
    mode = args[0] if args else ""
    if mode == "stream":
        out = stream(args[1], args[2], "--realtime" in args, cpu_start)
    elif mode == "idle":
        out = idle(args[1], int(args[2]))
    elif mode == "connect":
        out = connect(args[1], int(args[2]))
    elif mode == "latency":
        out = latency(args[1], args[2], int(args[3]), int(args[4]))
    else:
        sys.exit(__doc__)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
