//! The Rust side of the benchmark (the `bench` driver, src/main.rs, runs it as a child process, one run per
//! measurement, so that its whole-process CPU and peak RSS contain only the client). It does
//! what `python_peer.py` does with the official Python SDK, step for step, and prints
//! one JSON object on stdout. Times are CLOCK_MONOTONIC nanoseconds, the clock Python's
//! `time.monotonic_ns()` reads, so the driver can compare them with its own.
//!
//! ```text
//! bench_client stream  URL WAV [--realtime]       stream a WAV in 100 ms chunks, then end the session
//! bench_client idle    URL SECONDS                connect, configure, send nothing for SECONDS
//! bench_client connect URL N [PEM]                N times: connect, configure, append one chunk, close
//!                                                 (PEM: a root certificate to trust, for wss://)
//! bench_client latency URL WAV CHUNKS INTERVAL_MS append CHUNKS chunks, one every INTERVAL_MS
//! bench_client floor   URL WAV [--realtime]       no client: the same pacing and socket writes
//! ```
//!
//! `floor` is the cost that no client can avoid, for comparison: it paces like `stream` and
//! writes one ready-made append frame of the same size per chunk straight to a raw socket
//! from the pacing thread (no encoding, no I/O thread, no event parsing), while a second thread
//! reads and discards the server's events.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use qwen_asr_realtime::audio::wav::WavReader;
use qwen_asr_realtime::{ConnectParams, Conversation, EventKind, SessionConfig};

const CHUNK_MS: u64 = 100;
const MODEL: &str = "qwen3-asr-flash-realtime";

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill in.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time (user + system) of this process so far, all threads, in microseconds.
fn cpu_us() -> u64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

fn sleep_until(t_ns: u64) {
    let now = now_ns();
    if t_ns > now {
        std::thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("bench_client: {what}: {e}");
    std::process::exit(1);
}

fn start(url: &str) -> Conversation {
    start_with(ConnectParams::new().url(url))
}

fn start_with(params: ConnectParams) -> Conversation {
    let params = params.api_key("bench").model(MODEL);
    Conversation::start(params, &SessionConfig::vad().sample_rate(16000))
        .unwrap_or_else(|e| die("connect", e))
}

fn open_wav(path: &str) -> (WavReader<std::io::BufReader<std::fs::File>>, Vec<u8>) {
    let wav = WavReader::open(path).unwrap_or_else(|e| die(path, e));
    let rate = wav.spec().sample_rate as u64;
    (wav, vec![0u8; (rate * CHUNK_MS / 1000) as usize * 2])
}

fn main() {
    let cpu_start = cpu_us();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str {
        args.get(i)
            .map(String::as_str)
            .unwrap_or_else(|| die("usage", "see the comment at the top of bench_client.rs"))
    };
    let num = |i: usize| -> u64 { arg(i).parse().unwrap_or_else(|e| die(arg(i), e)) };
    let out = match arg(0) {
        "stream" => stream(
            arg(1),
            arg(2),
            args.iter().any(|a| a == "--realtime"),
            cpu_start,
        ),
        "idle" => idle(arg(1), num(2)),
        "connect" => connect(arg(1), num(2), args.get(3).map(String::as_str)),
        "latency" => latency(arg(1), arg(2), num(3), num(4)),
        "floor" => floor(
            arg(1),
            arg(2),
            args.iter().any(|a| a == "--realtime"),
            cpu_start,
        ),
        other => die("unknown mode", other),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{out}");
}

/// What `transcribe_file` does, with timestamps: connect, stream, end the session.
fn stream(url: &str, path: &str, realtime: bool, cpu_start: u64) -> String {
    let (mut wav, mut buf) = open_wav(path);
    let t0 = now_ns();
    let conv = start(url);
    let events = conv.take_events().unwrap_or_else(|e| die("events", e));
    let reader = std::thread::spawn(move || {
        let (mut n, mut completed) = (0u64, 0u64);
        for e in events.iter() {
            n += 1;
            completed += matches!(e.kind, EventKind::Completed(_)) as u64;
        }
        (n, completed)
    });
    let mut first_append_ns = 0;
    let mut chunks = 0u64;
    let mut audio_bytes = 0u64;
    let t_stream = now_ns();
    loop {
        let n = wav.read_bytes(&mut buf).unwrap_or_else(|e| die(path, e));
        if n == 0 {
            break;
        }
        conv.append_bytes(&buf[..n])
            .unwrap_or_else(|e| die("append", e));
        if chunks == 0 {
            first_append_ns = now_ns() - t0;
        }
        chunks += 1;
        audio_bytes += n as u64;
        if realtime {
            sleep_until(t_stream + chunks * CHUNK_MS * 1_000_000);
        }
    }
    conv.end_session(Duration::from_secs(60))
        .unwrap_or_else(|e| die("end_session", e));
    drop(conv);
    let (events, completed) = reader.join().unwrap_or_default();
    let wall_ns = now_ns() - t0;
    format!(
        r#"{{"cpu_start_us":{cpu_start},"cpu_end_us":{},"connect_to_first_append_ns":{first_append_ns},"wall_ns":{wall_ns},"audio_bytes":{audio_bytes},"events":{events},"completed":{completed}}}"#,
        cpu_us()
    )
}

/// A connected, configured conversation that sends nothing: what it costs to keep it open.
fn idle(url: &str, secs: u64) -> String {
    let conv = start(url);
    let c0 = cpu_us();
    let t0 = now_ns();
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, t1) = (cpu_us(), now_ns());
    drop(conv);
    format!(r#"{{"idle_cpu_us":{},"idle_ns":{}}}"#, c1 - c0, t1 - t0)
}

/// Connect to first append, `n` times over, with the CPU time of each.
fn connect(url: &str, n: u64, root_pem: Option<&str>) -> String {
    let chunk = vec![0u8; 3200];
    let mut params = ConnectParams::new().url(url);
    if let Some(path) = root_pem {
        params = params.root_certificate(std::fs::read(path).unwrap_or_else(|e| die(path, e)));
    }
    let (mut times, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (t0, c0) = (now_ns(), cpu_us());
        let conv = start_with(params.clone());
        conv.append_bytes(&chunk)
            .unwrap_or_else(|e| die("append", e));
        times.push(now_ns() - t0);
        cpu.push(cpu_us() - c0);
        conv.close();
    }
    format!(r#"{{"connect_ns":{times:?},"connect_cpu_us":{cpu:?}}}"#)
}

/// Appends `chunks` chunks, one every `interval_ms`, recording when each was handed over, and
/// when each partial transcript the peer numbered in its `stash` reached this thread.
fn latency(url: &str, path: &str, chunks: u64, interval_ms: u64) -> String {
    let (mut wav, mut buf) = open_wav(path);
    let t_connect = now_ns();
    let conv = start(url);
    let events = conv.take_events().unwrap_or_else(|e| die("events", e));
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut recv = Vec::new();
        for e in events.iter() {
            let t = now_ns();
            if let EventKind::Partial(p) = &e.kind {
                if let Ok(seq) = p.stash.trim().parse::<u64>() {
                    recv.push((seq, t));
                }
            }
        }
        let _ = tx.send(recv);
    });
    let mut handover = Vec::with_capacity(chunks as usize);
    let t_start = now_ns();
    for i in 0..chunks {
        sleep_until(t_start + i * interval_ms * 1_000_000);
        let mut n = wav.read_bytes(&mut buf).unwrap_or_else(|e| die(path, e));
        if n == 0 {
            wav = open_wav(path).0;
            n = wav.read_bytes(&mut buf).unwrap_or_else(|e| die(path, e));
        }
        let t = now_ns();
        conv.append_bytes(&buf[..n])
            .unwrap_or_else(|e| die("append", e));
        handover.push(t);
    }
    conv.end_session(Duration::from_secs(20))
        .unwrap_or_else(|e| die("end_session", e));
    drop(conv);
    let recv = rx.recv().unwrap_or_default();
    let _ = reader.join();
    let recv: Vec<[u64; 2]> = recv.into_iter().map(|(s, t)| [s, t]).collect();
    format!(r#"{{"connect_start_ns":{t_connect},"handover_ns":{handover:?},"recv":{recv:?}}}"#)
}

/// A masked client text frame.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x13, 0xc7, 0x2e];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

/// See the module comment: the pacing and socket writes of `stream`, and nothing else.
fn floor(url: &str, path: &str, realtime: bool, cpu_start: u64) -> String {
    let (mut wav, mut buf) = open_wav(path);
    let t0 = now_ns();
    let rest = url
        .strip_prefix("ws://")
        .unwrap_or_else(|| die(url, "not a ws:// URL"));
    let (addr, path_q) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| die("connect", e));
    s.set_nodelay(true).unwrap_or_else(|e| die("connect", e));
    write!(
        s,
        "GET {path_q}?model={MODEL} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap_or_else(|e| die("handshake", e));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => die("handshake", "the server closed"),
        }
    }
    let mut rx = s.try_clone().unwrap_or_else(|e| die("socket", e));
    let reader = std::thread::spawn(move || {
        let mut sink = vec![0u8; 16 * 1024];
        while matches!(rx.read(&mut sink), Ok(n) if n > 0) {}
    });
    let update = qwen_asr_realtime::__fuzz::session_update_json(
        &SessionConfig::vad().sample_rate(16000),
        "event_floor_update",
    );
    s.write_all(&client_frame(1, update.as_bytes()))
        .unwrap_or_else(|e| die("write", e));
    // One frame, built once: what a client must put on the wire per chunk.
    let n = wav.read_bytes(&mut buf).unwrap_or_else(|e| die(path, e));
    let mut json = String::new();
    qwen_asr_realtime::__fuzz::write_append_json(&mut json, &buf[..n]);
    let append = client_frame(1, json.as_bytes());
    let mut chunks = 1u64;
    let mut audio_bytes = n as u64;
    let t_stream = now_ns();
    let first_append_ns = now_ns() - t0;
    s.write_all(&append).unwrap_or_else(|e| die("write", e));
    loop {
        if realtime {
            sleep_until(t_stream + chunks * CHUNK_MS * 1_000_000);
        }
        let n = wav.read_bytes(&mut buf).unwrap_or_else(|e| die(path, e));
        if n == 0 {
            break;
        }
        s.write_all(&append).unwrap_or_else(|e| die("write", e));
        chunks += 1;
        audio_bytes += n as u64;
    }
    let finish = r#"{"event_id":"event_floor_finish","type":"session.finish"}"#;
    s.write_all(&client_frame(1, finish.as_bytes()))
        .unwrap_or_else(|e| die("write", e));
    s.write_all(&client_frame(8, &1000u16.to_be_bytes()))
        .unwrap_or_else(|e| die("write", e));
    let _ = reader.join();
    let wall_ns = now_ns() - t0;
    format!(
        r#"{{"cpu_start_us":{cpu_start},"cpu_end_us":{},"connect_to_first_append_ns":{first_append_ns},"wall_ns":{wall_ns},"audio_bytes":{audio_bytes},"events":0,"completed":0}}"#,
        cpu_us()
    )
}
