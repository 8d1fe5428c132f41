//! The benchmark: this client side by side with the official Python SDK, in one run, against
//! the same loopback server, printed as one table with ratios. Run with `--help`.
//!
//! Every client run is a child process of this driver (`bench_client`, src/bin/bench_client.rs,
//! for ours, `python_peer.py` for the SDK's `OmniRealtimeConversation`, and the client's
//! `transcribe_file` example for its peak RSS), reaped with `wait4(2)`, so its CPU and peak RSS
//! are of a process that holds only the client. The server is the emulator crate's binary
//! (`qwen-asr-emulator`), a separate process. Latency is measured against a small WebSocket peer inside this driver that
//! timestamps on CLOCK_MONOTONIC, the clock both clients read (see `LatencyPeer`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const USAGE: &str = "\
bench: qwen-asr-realtime against the official Python SDK (dashscope), on loopback

usage:
  bench/run.sh [OPTIONS]       (builds everything below, then runs the benchmark)
or, by hand, from the workspace root:
  cargo build --release -p qwen-asr-bench -p qwen-asr-emulator
  target/release/bench [OPTIONS]

The Python SDK is measured when `PYTHON -c 'import dashscope'` works
(pip install dashscope, or pass --install-dashscope); otherwise only this client is.

options:
  --python PATH           the Python interpreter (default python3)
  --no-python             measure this client only
  --install-dashscope     run `PYTHON -m pip install dashscope` first
  --rt-secs N             audio paced at real time (default 20)
  --fast-secs N           audio sent as fast as possible (default 600)
  --idle-secs N           a connected, silent session (default 60)
  --latency-chunks N      100 ms chunks in each latency run (default 500)
  --interval-ms N         one chunk, and one server event, every N ms there (default 20)
  --connects N            connect-to-first-append repetitions (default 20)
  --repeat N              rounds of the streaming runs (ours, the SDK's, the floor's,
                          interleaved); each row keeps its median run (default 3)
  --no-callgrind          skip the instruction counts (valgrind --tool=callgrind)
  --callgrind-python      count the Python SDK's instructions too (slow: minutes)
  --lean-dir DIR          also measure DIR/transcribe_file, built without TLS and ALSA
                          (bench/run.sh builds it with this crate's --no-default-features)
  --quick                 short runs, for trying the benchmark out (not for numbers)
  -h, --help              this text
";

/// 100 ms chunks, as the issue's reference measurement and the SDKs' examples use.
const CHUNK_MS: u64 = 100;
const SAMPLE_RATE: u32 = 16_000;
const PCM_BYTES_PER_SEC: f64 = SAMPLE_RATE as f64 * 2.0;

struct Options {
    python: Option<String>,
    install: bool,
    rt_secs: u32,
    fast_secs: u32,
    idle_secs: u32,
    latency_chunks: u64,
    interval_ms: u64,
    connects: u32,
    callgrind: bool,
    callgrind_python: bool,
    lean_dir: Option<PathBuf>,
    repeat: u32,
}

fn parse_options() -> Options {
    let mut o = Options {
        python: Some("python3".into()),
        install: false,
        rt_secs: 20,
        fast_secs: 600,
        idle_secs: 60,
        latency_chunks: 500,
        interval_ms: 20,
        connects: 20,
        callgrind: true,
        callgrind_python: false,
        lean_dir: None,
        repeat: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> u64 {
            let v = args.next().unwrap_or_default();
            v.parse().unwrap_or_else(|_| {
                eprintln!("error: {name} takes a whole number, not {v:?} (see --help)");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--python" => o.python = args.next(),
            "--no-python" => o.python = None,
            "--install-dashscope" => o.install = true,
            "--rt-secs" => o.rt_secs = num(&a) as u32,
            "--fast-secs" => o.fast_secs = num(&a) as u32,
            "--idle-secs" => o.idle_secs = num(&a) as u32,
            "--latency-chunks" => o.latency_chunks = num(&a),
            "--interval-ms" => o.interval_ms = num(&a),
            "--connects" => o.connects = num(&a) as u32,
            "--no-callgrind" => o.callgrind = false,
            "--callgrind-python" => o.callgrind_python = true,
            "--lean-dir" => o.lean_dir = args.next().map(PathBuf::from),
            "--repeat" => o.repeat = (num(&a) as u32).max(1),
            "--quick" => {
                o.rt_secs = 3;
                o.fast_secs = 30;
                o.idle_secs = 3;
                o.latency_chunks = 100;
                o.connects = 5;
                o.repeat = 1;
            }
            other => {
                eprintln!("error: unknown option {other} (see --help)");
                std::process::exit(2);
            }
        }
    }
    o
}

// ---------------------------------------------------------------------------------------------
// Clocks and child processes

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill in.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sleep_until(t_ns: u64) {
    let now = now_ns();
    if t_ns > now {
        std::thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

/// What one child process cost, from `wait4(2)`, and the JSON it printed last.
#[derive(Clone, Debug, Default)]
struct Run {
    cpu_s: f64,
    /// Voluntary and involuntary context switches.
    switches: f64,
    max_rss_kb: u64,
    wall_s: f64,
    out: Value,
}

impl Run {
    fn num(&self, key: &str) -> f64 {
        self.out
            .get(key)
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN)
    }

    fn list(&self, key: &str) -> Vec<u64> {
        self.out
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    }

    /// CPU from the client's own start (after the runtime, or Python's imports) to its end.
    fn cpu_after_start_s(&self) -> f64 {
        (self.num("cpu_end_us") - self.num("cpu_start_us")) / 1e6
    }
}

/// Runs a client to completion through `bench --launch` (see [`launch`]) and returns what it
/// cost and what it printed.
fn run(what: &str, cmd: &mut Command) -> Result<Run, String> {
    eprint!("  {what} ... ");
    let _ = std::io::stderr().flush();
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut launcher = Command::new(me);
    launcher
        .arg("--launch")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let t0 = Instant::now();
    let mut child = launcher
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let wall_s = t0.elapsed().as_secs_f64();
    let mut json = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok());
    let usage = json.next().unwrap_or(Value::Null);
    let field = |k: &str| usage.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let r = Run {
        cpu_s: field("cpu_s"),
        switches: field("voluntary_switches") + field("involuntary_switches"),
        max_rss_kb: field("max_rss_kb") as u64,
        wall_s,
        out: json.next().unwrap_or(Value::Null),
    };
    if !status.success() || usage.is_null() {
        eprintln!("failed");
        return Err(format!("{what}: {status}"));
    }
    eprintln!("{:.1} s", r.wall_s);
    Ok(r)
}

/// `bench --launch PROGRAM ARGS...`: runs the program and prints its CPU time and peak RSS as
/// a last JSON line. Peak RSS (`ru_maxrss`) counts the memory of the process the client was
/// forked from, up to its exec: run straight from this driver it would include the driver's
/// own. This launcher is small when it forks, and forks rather than vforks (a vfork child
/// shares, and is charged for, the parent's whole memory), so what is reported is the client's.
fn launch(args: &[String]) -> ! {
    use std::os::unix::process::CommandExt;
    let Some((program, rest)) = args.split_first() else {
        eprintln!("bench --launch: no program");
        std::process::exit(2)
    };
    let mut cmd = Command::new(program);
    cmd.args(rest);
    // SAFETY: an empty closure; it only makes std use fork(2) instead of vfork(2).
    unsafe { cmd.pre_exec(|| Ok(())) };
    let child = cmd.spawn().unwrap_or_else(|e| {
        eprintln!("bench --launch: {program}: {e}");
        std::process::exit(127)
    });
    let (status, ru) = reap(&child).unwrap_or_else(|e| {
        eprintln!("bench --launch: {e}");
        std::process::exit(1)
    });
    let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    println!(
        r#"{{"cpu_s":{},"max_rss_kb":{},"voluntary_switches":{},"involuntary_switches":{}}}"#,
        cpu(ru.ru_utime) + cpu(ru.ru_stime),
        ru.ru_maxrss,
        ru.ru_nvcsw,
        ru.ru_nivcsw
    );
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    };
    std::process::exit(code)
}

/// Waits for the child with `wait4(2)`, which also gives its rusage (ru_maxrss in KiB).
fn reap(child: &Child) -> Result<(i32, libc::rusage), String> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            return Ok((status, ru));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("wait4: {e}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test audio

/// Writes `secs` of speech-like 16 kHz mono audio: utterances of 1.2–3.5 s (a gliding voiced
/// tone with harmonics, syllable-rate envelope) between 0.9–1.6 s pauses of low noise, so the
/// emulator's VAD cuts it into utterances and answers with partials and transcripts, as the
/// service would. Deterministic: the same file every run.
fn write_speech_wav(path: &Path, secs: u32) -> std::io::Result<()> {
    let total = u64::from(secs) * u64::from(SAMPLE_RATE);
    let mut w = BufWriter::new(File::create(path)?);
    w.write_all(&qwen_asr_realtime::audio::wav::header(
        SAMPLE_RATE,
        1,
        (total * 2) as u32,
    ))?;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let rate = f64::from(SAMPLE_RATE);
    let mut n = 0u64;
    let mut speaking = false;
    while n < total {
        let len_s = if speaking {
            1.2 + 2.3 * rand()
        } else {
            0.9 + 0.7 * rand()
        };
        let len = ((len_s * rate) as u64).min(total - n);
        let f0 = 100.0 + 100.0 * rand();
        let mut phase = 0.0f64;
        for i in 0..len {
            let t = i as f64 / rate;
            let noise = (rand() - 0.5) * 60.0;
            let s = if speaking {
                let f = f0 + 25.0 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
                phase += 2.0 * std::f64::consts::PI * f / rate;
                let voiced: f64 = [1.0, 0.6, 0.8, 0.5, 0.3, 0.2]
                    .iter()
                    .enumerate()
                    .map(|(k, a)| a * ((k + 1) as f64 * phase).sin())
                    .sum();
                let syllable = 0.3 + 0.7 * (std::f64::consts::PI * 4.0 * t).sin().abs();
                let edge = (t / 0.02).min((len_s - t) / 0.02).clamp(0.0, 1.0);
                2500.0 * voiced * syllable * edge + noise
            } else {
                noise
            };
            w.write_all(&(s.clamp(-32768.0, 32767.0) as i16).to_le_bytes())?;
        }
        n += len;
        speaking = !speaking;
    }
    w.flush()
}

// ---------------------------------------------------------------------------------------------
// The emulator, as a separate process

/// A self-signed certificate for localhost and its key, made with the `openssl` command
/// (Debian's package openssl, which .ci/run installs): (cert path, key path).
fn self_signed_cert(dir: &Path) -> Result<(String, String), String> {
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-keyout", &key, "-out", &cert])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if !status.success() {
        return Err(format!("openssl req failed ({status})"));
    }
    Ok((cert, key))
}

struct EmulatorProcess {
    child: Child,
    url: String,
}

impl EmulatorProcess {
    fn start(bin: &Path, args: &[&str]) -> Result<Self, String> {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut line = String::new();
        let out = child.stdout.take().ok_or("no stdout")?;
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| format!("emulator: {e}"))?;
        let url = line.trim().to_owned();
        if !url.starts_with("ws://") && !url.starts_with("wss://") {
            return Err(format!("emulator printed {url:?}, not a URL"));
        }
        Ok(EmulatorProcess { child, url })
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        // Closing its stdin is its signal to stop.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The latency peer: a minimal WebSocket server in this process

/// What the peer saw of one connection.
#[derive(Default)]
struct PeerReport {
    /// CLOCK_MONOTONIC when each append frame's last byte had been read, in order.
    append_arrival_ns: Vec<u64>,
    /// Bytes of the append frames on the wire (header, mask key, payload).
    append_wire_bytes: u64,
    /// Bytes of every client frame after the HTTP upgrade.
    client_wire_bytes: u64,
    /// (seq, CLOCK_MONOTONIC when the write of that numbered partial returned).
    sent_ns: Vec<(u64, u64)>,
}

/// A WebSocket server for one connection that speaks just enough of the protocol for both
/// clients (session.created, session.updated, session.finished, the close handshake), records
/// when each append's last byte arrives, and from the first append on sends a numbered partial
/// transcript every `interval_ms`, half an interval after the client's appends, recording when
/// each write returned. Both clients timestamp on CLOCK_MONOTONIC too, so the differences are
/// the clients' added latency plus the loopback floor (measured with `floor_client`).
struct LatencyPeer {
    url: String,
    handle: std::thread::JoinHandle<PeerReport>,
}

impl LatencyPeer {
    fn start(max_events: u64, interval_ms: u64) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!(
            "ws://127.0.0.1:{}/api-ws/v1/realtime",
            listener.local_addr()?.port()
        );
        let handle = std::thread::spawn(move || {
            serve_peer(listener, max_events, interval_ms).unwrap_or_else(|e| {
                eprintln!("latency peer: {e}");
                PeerReport::default()
            })
        });
        Ok(LatencyPeer { url, handle })
    }

    fn finish(self) -> PeerReport {
        self.handle.join().unwrap_or_default()
    }
}

fn read_http_head(s: &mut impl Read) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// One frame: opcode, unmasked payload, bytes on the wire, and when its last byte was read.
fn read_frame(r: &mut impl Read) -> std::io::Result<(u8, Vec<u8>, u64, u64)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h)?;
    let mut wire = 2u64;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b)?;
        len = u64::from(u16::from_be_bytes(b));
        wire += 2;
    } else if len == 127 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        len = u64::from_be_bytes(b);
        wire += 8;
    }
    let mut mask = [0u8; 4];
    if h[1] & 0x80 != 0 {
        r.read_exact(&mut mask)?;
        wire += 4;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    let t = now_ns();
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok((h[0] & 0x0f, payload, wire + len, t))
}

/// A frame as a server sends it (unmasked) or a client does (masked, `mask` given).
fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n < 65536 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i & 3]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// The value of the `"type"` member, whether written `"type":"x"` or `"type": "x"`.
fn event_type(json: &[u8]) -> &str {
    let s = std::str::from_utf8(json).unwrap_or("");
    let Some(i) = s.find("\"type\"") else {
        return "";
    };
    let rest = s[i + 6..].trim_start_matches([' ', ':']);
    let rest = rest.strip_prefix('"').unwrap_or("");
    &rest[..rest.find('"').unwrap_or(0)]
}

fn partial_json(seq: u64) -> String {
    // The size and shape of the service's partials: `text` (the confirmed prefix) and `stash`
    // (the provisional rest), with `item_id`, `content_index`, `language` and `emotion`.
    format!(
        r#"{{"event_id":"event_{seq:021}","type":"conversation.item.input_audio_transcription.text","item_id":"item_{:021}","content_index":0,"language":"en","emotion":"neutral","text":"hello, this is a partial transcript","stash":" {seq}"}}"#,
        seq / 10
    )
}

fn serve_peer(
    listener: TcpListener,
    max_events: u64,
    interval_ms: u64,
) -> std::io::Result<PeerReport> {
    let (mut s, _) = listener.accept()?;
    s.set_nodelay(true)?;
    let head = read_http_head(&mut s)?;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let key = header("sec-websocket-key");
    let model = head
        .split_once("model=")
        .map(|(_, m)| m.split([' ', '&']).next().unwrap_or("").to_owned())
        .unwrap_or_default();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    write!(
        s,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )?;
    let created = format!(
        r#"{{"event_id":"event_created","type":"session.created","session":{{"id":"sess_bench","object":"realtime.session","model":"{model}","modalities":["text"],"input_audio_format":"pcm16","sample_rate":16000}}}}"#
    );
    s.write_all(&frame(1, created.as_bytes(), None))?;

    let writer = Arc::new(Mutex::new(s.try_clone()?));
    let stop = Arc::new(AtomicBool::new(false));
    let (start_tx, start_rx) = mpsc::channel::<u64>();
    let sender = {
        let (writer, stop) = (Arc::clone(&writer), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut sent = Vec::new();
            let Ok(t0) = start_rx.recv() else {
                return sent;
            };
            for seq in 0..max_events {
                sleep_until(t0 + (seq * 2 + 1) * interval_ms * 500_000);
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let f = frame(1, partial_json(seq).as_bytes(), None);
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                if w.write_all(&f).is_err() {
                    break;
                }
                sent.push((seq, now_ns()));
            }
            sent
        })
    };
    let reply = |text: String| {
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(&frame(1, text.as_bytes(), None))
    };

    let mut report = PeerReport::default();
    let mut r = BufReader::with_capacity(64 * 1024, s);
    let mut start_tx = Some(start_tx);
    while let Ok((op, payload, wire, t)) = read_frame(&mut r) {
        report.client_wire_bytes += wire;
        match op {
            1 => match event_type(&payload) {
                "input_audio_buffer.append" => {
                    report.append_arrival_ns.push(t);
                    report.append_wire_bytes += wire;
                    if let Some(tx) = start_tx.take() {
                        let _ = tx.send(t);
                    }
                }
                "session.update" => {
                    reply(r#"{"event_id":"event_updated","type":"session.updated","session":{"id":"sess_bench","object":"realtime.session","model":"qwen3-asr-flash-realtime","modalities":["text"],"input_audio_format":"pcm16","sample_rate":16000}}"#.into())?;
                }
                "session.finish" => {
                    stop.store(true, Ordering::SeqCst);
                    reply(r#"{"event_id":"event_finished","type":"session.finished"}"#.into())?;
                }
                _ => {}
            },
            8 => {
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                let _ = w.write_all(&frame(8, &payload[..payload.len().min(2)], None));
                let _ = w.shutdown(std::net::Shutdown::Write);
                break;
            }
            9 => {
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                let _ = w.write_all(&frame(10, &payload, None));
            }
            _ => {}
        }
    }
    stop.store(true, Ordering::SeqCst);
    drop(start_tx);
    report.sent_ns = sender.join().unwrap_or_default();
    Ok(report)
}

/// The loopback floor: a raw client in this process that writes ready-made masked frames of
/// the same size as ours from a blocking thread, and reads the partials with another. What
/// it measures is the kernel and the peer, not any client.
fn floor_client(
    url: &str,
    chunks: u64,
    interval_ms: u64,
    frame_len: usize,
) -> std::io::Result<Value> {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or("");
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET /api-ws/v1/realtime?model=qwen3-asr-flash-realtime HTTP/1.1\r\nHost: {addr}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )?;
    let mut r = BufReader::new(s.try_clone()?);
    read_http_head(&mut r)?;
    let reader = std::thread::spawn(move || {
        let mut recv = Vec::new();
        while let Ok((op, payload, _, t)) = read_frame(&mut r) {
            if op == 8 {
                break;
            }
            let text = String::from_utf8_lossy(&payload);
            if let Some(i) = text.find("\"stash\":\" ") {
                let digits: String = text[i + 10..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(seq) = digits.parse::<u64>() {
                    recv.push([seq, t]);
                }
            }
        }
        recv
    });
    let mask = [0x12, 0x34, 0x56, 0x78];
    let prefix = br#"{"event_id":"event_00000000000000000000000000000000","type":"input_audio_buffer.append","audio":""#;
    let mut body = prefix.to_vec();
    body.resize(frame_len.saturating_sub(8 + 2), b'A');
    body.extend_from_slice(b"\"}");
    let append = frame(1, &body, Some(mask));
    let mut handover = Vec::new();
    let t_start = now_ns();
    for i in 0..chunks {
        sleep_until(t_start + i * interval_ms * 1_000_000);
        let t = now_ns();
        s.write_all(&append)?;
        handover.push(t);
    }
    s.write_all(&frame(1, br#"{"type":"session.finish"}"#, Some(mask)))?;
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(&frame(8, &1000u16.to_be_bytes(), Some(mask)))?;
    let recv = reader.join().unwrap_or_default();
    Ok(serde_json::json!({ "handover_ns": handover, "recv": recv }))
}

/// Added latency, both ways, in microseconds, from a client's report and the peer's.
struct Latency {
    out_us: Vec<f64>,
    in_us: Vec<f64>,
    in_sent: usize,
    wire_bytes_per_audio_s: f64,
    /// From calling connect to the first append's last byte at the peer.
    connect_to_wire_ms: f64,
}

fn latency_of(client: &Value, peer: &PeerReport) -> Latency {
    let list = |k: &str| -> Vec<Value> {
        client
            .get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let handover: Vec<u64> = list("handover_ns")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    if handover.len() != peer.append_arrival_ns.len() {
        eprintln!(
            "  note: {} appends handed over, {} arrived",
            handover.len(),
            peer.append_arrival_ns.len()
        );
    }
    let out_us = handover
        .iter()
        .zip(&peer.append_arrival_ns)
        .map(|(h, a)| (*a as f64 - *h as f64) / 1e3)
        .collect();
    let sent: HashMap<u64, u64> = peer.sent_ns.iter().copied().collect();
    let in_us = list("recv")
        .iter()
        .filter_map(|p| {
            let seq = p.get(0)?.as_u64()?;
            let t = p.get(1)?.as_u64()?;
            Some((t as f64 - *sent.get(&seq)? as f64) / 1e3)
        })
        .collect();
    let appends = peer.append_arrival_ns.len();
    let connect_to_wire_ms = match (
        client.get("connect_start_ns").and_then(Value::as_u64),
        peer.append_arrival_ns.first(),
    ) {
        (Some(t0), Some(t1)) => (*t1 as f64 - t0 as f64) / 1e6,
        _ => f64::NAN,
    };
    Latency {
        out_us,
        in_us,
        in_sent: peer.sent_ns.len(),
        wire_bytes_per_audio_s: peer.append_wire_bytes as f64
            / (appends as f64 * CHUNK_MS as f64 / 1000.0),
        connect_to_wire_ms,
    }
}

/// Nearest-rank percentile of unsorted values.
fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

fn median(v: &[f64]) -> f64 {
    pct(v, 50.0)
}

// ---------------------------------------------------------------------------------------------
// callgrind

/// Total instructions (Ir) of one run under callgrind, and the file it wrote.
fn callgrind(what: &str, out_dir: &Path, cmd: &[String]) -> Result<(u64, PathBuf), String> {
    let out = out_dir.join(format!("callgrind.{what}.out"));
    let mut c = Command::new("valgrind");
    c.args(["-q", "--tool=callgrind"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .args(cmd)
        .stderr(Stdio::null());
    run(&format!("callgrind {what}"), &mut c)?;
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let ir = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no instruction total in {}", out.display()))?;
    Ok((ir, out))
}

/// The heaviest functions by inclusive-of-nothing (self) cost, from callgrind_annotate.
fn top_functions(file: &Path, n: usize) -> Vec<String> {
    let Ok(o) = Command::new("callgrind_annotate")
        .arg("--threshold=99")
        .arg(file)
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .skip_while(|l| !l.contains("file:function"))
        .skip(1)
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .take(n)
        .map(|l| l.trim().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The table

fn ratio(python: f64, ours: f64) -> String {
    if python.is_finite() && ours.is_finite() && ours > 0.0 {
        let r = python / ours;
        if r >= 10.0 {
            format!("{r:.0}×")
        } else {
            format!("{r:.1}×")
        }
    } else {
        "–".into()
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--launch") {
        launch(&args[1..]);
    }
    let o = parse_options();
    if let Err(e) = bench(&o) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn python_ok(python: &str) -> bool {
    Command::new(python)
        .args(["-c", "import dashscope"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

#[allow(clippy::too_many_lines)]
fn bench(o: &Options) -> Result<(), String> {
    let dir = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .ok_or("no directory for this executable")?
        .to_owned();
    let bin = |name: &str| -> Result<PathBuf, String> {
        let p = dir.join(name);
        p.exists().then_some(p).ok_or_else(|| {
            format!(
                "{name} not found next to this program: build everything first with \
                 `cargo build --release -p qwen-asr-bench -p qwen-asr-emulator`"
            )
        })
    };
    let (emulator_bin, client, transcribe) = (
        bin("qwen-asr-emulator")?,
        bin("bench_client")?,
        bin("transcribe_file")?,
    );
    let peer_py = Path::new(env!("CARGO_MANIFEST_DIR")).join("python_peer.py");

    let mut python = o.python.clone();
    if let Some(py) = &python {
        if o.install {
            eprintln!("installing dashscope with {py} -m pip");
            let _ = Command::new(py)
                .args(["-m", "pip", "install", "--quiet", "dashscope"])
                .status();
        }
        if !python_ok(py) {
            eprintln!(
                "note: `{py} -c 'import dashscope'` failed: measuring this client only \
                 (pip install dashscope, or pass --install-dashscope)"
            );
            python = None;
        }
    }
    let sdk_version = python.as_ref().and_then(|py| {
        let o = Command::new(py)
            .args([
                "-c",
                "import dashscope,sys;print(dashscope.__version__, sys.version.split()[0])",
            ])
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    });
    let py_cmd = |args: &[&str]| -> Command {
        let mut c = Command::new(python.as_deref().unwrap_or("python3"));
        c.arg(&peer_py).args(args);
        c
    };
    let rs_cmd = |args: &[&str]| -> Command {
        let mut c = Command::new(&client);
        c.args(args);
        c
    };

    let tmp = std::env::temp_dir().join(format!("qwen-asr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let _cleanup = Cleanup(tmp.clone());
    let wav = |secs: u32| -> Result<String, String> {
        let p = tmp.join(format!("speech_{secs}s.wav"));
        write_speech_wav(&p, secs).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p.display().to_string())
    };
    eprintln!("writing test audio ({} s and {} s)", o.rt_secs, o.fast_secs);
    let (wav_rt, wav_fast) = (wav(o.rt_secs)?, wav(o.fast_secs)?);

    let load_start = loadavg();
    let emu = EmulatorProcess::start(&emulator_bin, &[])?;
    let url = emu.url.clone();
    eprintln!("emulator at {url}");
    let rt_s = f64::from(o.rt_secs);
    let fast_s = f64::from(o.fast_secs);

    // Our client, the SDK and the floor, one after the other (2 shared cores: nothing else
    // runs), `repeat` rounds interleaved so that a slow spell of the machine hits them all;
    // each keeps its median run.
    let mut rounds: Vec<[Option<Run>; 6]> = Vec::new();
    for round in 1..=o.repeat {
        eprintln!(
            "round {round} of {}: {} s paced at real time, {} s as fast as possible, and the floor",
            o.repeat, o.rt_secs, o.fast_secs
        );
        let rt = ["stream", url.as_str(), wav_rt.as_str(), "--realtime"];
        let fast = ["stream", url.as_str(), wav_fast.as_str()];
        let py = |args: &[&str]| -> Result<Option<Run>, String> {
            match &python {
                Some(_) => run("python SDK", &mut py_cmd(args)).map(Some),
                None => Ok(None),
            }
        };
        rounds.push([
            Some(run("bench_client", &mut rs_cmd(&rt))?),
            py(&rt)?,
            Some(run(
                "floor",
                &mut rs_cmd(&["floor", &url, &wav_rt, "--realtime"]),
            )?),
            Some(run("bench_client", &mut rs_cmd(&fast))?),
            py(&fast)?,
            Some(run("floor", &mut rs_cmd(&["floor", &url, &wav_fast]))?),
        ]);
    }
    let median_run = |i: usize| -> Option<Run> {
        let mut runs: Vec<Run> = rounds.iter().filter_map(|r| r[i].clone()).collect();
        runs.sort_by(|a, b| a.cpu_s.total_cmp(&b.cpu_s));
        let mid = runs.len() / 2;
        runs.into_iter().nth(mid)
    };
    let missing = || "no run".to_string();
    let (rs_rt, py_rt) = (median_run(0).ok_or_else(missing)?, median_run(1));
    let fl_rt = median_run(2).ok_or_else(missing)?;
    let (rs_fast, py_fast) = (median_run(3).ok_or_else(missing)?, median_run(4));
    let fl_fast = median_run(5).ok_or_else(missing)?;

    eprintln!(
        "transcribe_file, {} s paced at real time and {} s as fast as possible",
        o.rt_secs, o.fast_secs
    );
    let tf_rt = run(
        "transcribe_file",
        Command::new(&transcribe).args([
            "--url",
            &url,
            "--api-key",
            "bench",
            "--realtime",
            &wav_rt,
        ]),
    )?;
    let tf_fast = run(
        "transcribe_file",
        Command::new(&transcribe).args(["--url", &url, "--api-key", "bench", &wav_fast]),
    )?;
    // The same over wss://, as on the real service: TLS with the system's roots loaded, and a
    // self-signed certificate for the emulator trusted on top (--ca-cert).
    let emu_tls = match self_signed_cert(&tmp) {
        Ok((cert, key)) => {
            let emu =
                EmulatorProcess::start(&emulator_bin, &["--tls-cert", &cert, "--tls-key", &key])?;
            Some((emu, cert))
        }
        Err(e) => {
            eprintln!("note: no wss:// rows: {e}");
            None
        }
    };
    let tls = match &emu_tls {
        Some((emu_tls, cert)) => {
            eprintln!("transcribe_file over wss:// ({})", emu_tls.url);
            let go = |extra: &[&str], w: &str| {
                let mut c = Command::new(&transcribe);
                c.args([
                    "--url",
                    &emu_tls.url,
                    "--api-key",
                    "bench",
                    "--ca-cert",
                    cert,
                ])
                .args(extra)
                .arg(w);
                run("transcribe_file (wss)", &mut c)
            };
            Some((go(&["--realtime"], &wav_rt)?, go(&[], &wav_fast)?))
        }
        None => None,
    };
    let lean = match &o.lean_dir {
        Some(d) => {
            let bin = d.join("transcribe_file");
            eprintln!("lean build: {}", bin.display());
            let go = |extra: &[&str], w: &str| {
                let mut c = Command::new(&bin);
                c.args(["--url", &url, "--api-key", "bench"])
                    .args(extra)
                    .arg(w);
                run("transcribe_file (lean)", &mut c)
            };
            Some((go(&["--realtime"], &wav_rt)?, go(&[], &wav_fast)?))
        }
        None => None,
    };

    eprintln!("connect to first append, {} times", o.connects);
    let n = o.connects.to_string();
    let rs_conn = run("bench_client", &mut rs_cmd(&["connect", &url, &n]))?;
    let rs_conn_tls = match &emu_tls {
        Some((emu, cert)) => Some(run(
            "bench_client (wss)",
            &mut rs_cmd(&["connect", &emu.url, &n, cert]),
        )?),
        None => None,
    };
    drop(emu_tls);
    let py_conn = match &python {
        Some(_) => Some(run("python SDK", &mut py_cmd(&["connect", &url, &n]))?),
        None => None,
    };

    eprintln!(
        "latency: {} chunks and {} server events, one every {} ms",
        o.latency_chunks, o.latency_chunks, o.interval_ms
    );
    let (chunks, iv) = (o.latency_chunks.to_string(), o.interval_ms.to_string());
    let latency_run =
        |cmd: &mut dyn FnMut(&str) -> Command, what: &str| -> Result<Latency, String> {
            let peer =
                LatencyPeer::start(o.latency_chunks, o.interval_ms).map_err(|e| e.to_string())?;
            let r = run(what, &mut cmd(&peer.url))?;
            Ok(latency_of(&r.out, &peer.finish()))
        };
    let rs_lat = latency_run(
        &mut |u| rs_cmd(&["latency", u, &wav_rt, &chunks, &iv]),
        "bench_client",
    )?;
    let py_lat = match &python {
        Some(_) => Some(latency_run(
            &mut |u| py_cmd(&["latency", u, &wav_rt, &chunks, &iv]),
            "python SDK",
        )?),
        None => None,
    };
    let floor = {
        eprint!("  loopback floor ... ");
        let peer =
            LatencyPeer::start(o.latency_chunks, o.interval_ms).map_err(|e| e.to_string())?;
        let frame_len = (rs_lat.wire_bytes_per_audio_s * CHUNK_MS as f64 / 1000.0) as usize;
        let v = floor_client(&peer.url, o.latency_chunks, o.interval_ms, frame_len)
            .map_err(|e| format!("floor client: {e}"))?;
        eprintln!("done");
        latency_of(&v, &peer.finish())
    };

    eprintln!(
        "idle: connected and silent for {} s (both clients at once)",
        o.idle_secs
    );
    let secs = o.idle_secs.to_string();
    let (rs_idle, py_idle) = std::thread::scope(|sc| {
        let py = python
            .as_ref()
            .map(|_| sc.spawn(|| run("python SDK", &mut py_cmd(&["idle", &url, &secs]))));
        let rs = run("bench_client", &mut rs_cmd(&["idle", &url, &secs]));
        (
            rs,
            py.map(|h| h.join().unwrap_or_else(|_| Err("panicked".into()))),
        )
    });
    let rs_idle = rs_idle?;
    let py_idle = py_idle.transpose()?;

    // Instructions: the difference between a long and a short fast run, per audio second,
    // so that start-up and connecting cancel out.
    let mut cg: Vec<(String, f64, f64, Vec<String>)> = Vec::new();
    let have_valgrind = Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if o.callgrind && !have_valgrind {
        eprintln!("note: valgrind not found: no instruction counts (apt-get install valgrind)");
    }
    if o.callgrind && have_valgrind {
        eprintln!("callgrind: 10 s and 70 s of audio, as fast as possible");
        let (w10, w70) = (wav(10)?, wav(70)?);
        let mut measure = |name: &str, base: Vec<String>| -> Result<(), String> {
            let with = |w: &str| {
                let mut v = base.clone();
                v.extend(["stream".into(), url.clone(), w.to_owned()]);
                v
            };
            let (ir10, _) = callgrind(&format!("{name}-10s"), &tmp, &with(&w10))?;
            let (ir70, file) = callgrind(&format!("{name}-70s"), &tmp, &with(&w70))?;
            let marginal = (ir70 as f64 - ir10 as f64) / 60.0;
            cg.push((
                name.into(),
                marginal,
                ir70 as f64 / 70.0,
                top_functions(&file, 12),
            ));
            Ok(())
        };
        measure("ours", vec![client.display().to_string()])?;
        if let (Some(py), true) = (&python, o.callgrind_python) {
            // The interpreter itself: `python3` may be a wrapper script (pyenv) that valgrind
            // would measure instead.
            let exe = Command::new(py)
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|_| py.clone());
            measure("python", vec![exe, peer_py.display().to_string()])?;
        }
    }
    drop(emu);

    // ------------------------------------------------------------------ the table
    let load_end = loadavg();
    let nan = f64::NAN;
    let opt = |r: &Option<Run>, f: &dyn Fn(&Run) -> f64| r.as_ref().map_or(nan, f);
    let mut t = Table::default();
    let mb = |r: &Run| r.max_rss_kb as f64 / 1024.0;
    let per_s = |r: &Run, s: f64| r.cpu_after_start_s() / s * 1e3;

    let (rt_o, rt_p) = (rs_rt.cpu_s, opt(&py_rt, &|r| r.cpu_s));
    t.row(
        format!("whole-process CPU, {} s paced at real time (s)", o.rt_secs),
        3,
    )
    .vals(rt_o, rt_p)
    .floor(fl_rt.cpu_s)
    .target("≤ 0.02 s, ≥ 40× less");
    t.verdict(
        "whole-process CPU at real time ≤ 0.02 s (20 s run)",
        rt_o <= 0.02 * rt_s / 20.0,
        format!("{rt_o:.3} s; the floor alone is {:.3} s", fl_rt.cpu_s),
    );
    if rt_p.is_finite() {
        t.verdict(
            "whole-process CPU at real time ≥ 40× less than the Python SDK",
            rt_p / rt_o >= 40.0,
            format!("{} less", ratio(rt_p, rt_o)),
        );
    }
    t.row(format!("peak RSS, {} s at real time (MB)", o.rt_secs), 1)
        .vals(mb(&rs_rt), opt(&py_rt, &mb))
        .floor(mb(&fl_rt));
    t.row(
        format!(
            "whole-process CPU, {} s as fast as possible (s)",
            o.fast_secs
        ),
        3,
    )
    .vals(rs_fast.cpu_s, opt(&py_fast, &|r| r.cpu_s))
    .floor(fl_fast.cpu_s);
    t.row(
        format!("peak RSS, {} s as fast as possible (MB)", o.fast_secs),
        1,
    )
    .vals(mb(&rs_fast), opt(&py_fast, &mb))
    .floor(mb(&fl_fast));
    t.row(
        format!("wall time, {} s as fast as possible (s)", o.fast_secs),
        2,
    )
    .vals(rs_fast.wall_s, opt(&py_fast, &|r| r.wall_s))
    .floor(fl_fast.wall_s);
    t.row(
        "CPU per audio second at real time, after start-up (ms)".into(),
        3,
    )
    .vals(per_s(&rs_rt, rt_s), opt(&py_rt, &|r| per_s(r, rt_s)))
    .floor(per_s(&fl_rt, rt_s));
    let fast_o = per_s(&rs_fast, fast_s);
    t.row(
        "CPU per audio second as fast as possible, after start-up (ms)".into(),
        4,
    )
    .vals(fast_o, opt(&py_fast, &|r| per_s(r, fast_s)))
    .floor(per_s(&fl_fast, fast_s))
    .target("≤ 0.05 ms");
    t.verdict(
        "CPU per audio second as fast as possible ≤ 0.05 ms",
        fast_o <= 0.05,
        format!(
            "{fast_o:.4} ms; the floor alone is {:.4} ms",
            per_s(&fl_fast, fast_s)
        ),
    );
    let switches = |r: &Run, s: f64| r.switches / s;
    t.row("  context switches per audio second, fast".into(), 1)
        .vals(
            switches(&rs_fast, fast_s),
            opt(&py_fast, &|r| switches(r, fast_s)),
        )
        .floor(switches(&fl_fast, fast_s));

    let conn = |r: &Run| {
        r.list("connect_ns")
            .iter()
            .map(|&n| n as f64 / 1e6)
            .collect::<Vec<_>>()
    };
    let (c_o, c_p) = (
        conn(&rs_conn),
        py_conn.as_ref().map(conn).unwrap_or_default(),
    );
    t.row(
        format!(
            "connect → first append returned, median of {} (ms)",
            o.connects
        ),
        2,
    )
    .vals(median(&c_o), median(&c_p))
    .target("≤ 5 ms");
    t.row("  the same, slowest (ms)".into(), 2)
        .vals(pct(&c_o, 100.0), pct(&c_p, 100.0));
    t.row(
        "  connect → first append's last byte read by the peer (ms)".into(),
        2,
    )
    .vals(
        rs_lat.connect_to_wire_ms,
        py_lat.as_ref().map_or(nan, |l| l.connect_to_wire_ms),
    );
    if let Some(r) = &rs_conn_tls {
        let c = conn(r);
        let cpu: Vec<f64> = r
            .list("connect_cpu_us")
            .iter()
            .map(|&n| n as f64 / 1e3)
            .collect();
        t.row(
            format!(
                "  connect over wss:// → first append returned, median of {} (ms)",
                o.connects
            ),
            2,
        )
        .vals(median(&c), nan);
        t.row(
            "  CPU of a connect over wss://, the first in the process (ms)".into(),
            2,
        )
        .vals(cpu.first().copied().unwrap_or(nan), nan);
        t.row(
            "  CPU of a connect over wss://, the later ones, median (ms)".into(),
            2,
        )
        .vals(median(cpu.get(1..).unwrap_or_default()), nan);
    }
    t.verdict(
        "connect to first append ≤ 5 ms",
        median(&c_o) <= 5.0,
        format!(
            "median {:.2} ms, slowest {:.2} ms",
            median(&c_o),
            pct(&c_o, 100.0)
        ),
    );

    for (out, name) in [
        (true, "append handed over → its last byte read by the peer"),
        (
            false,
            "server event's last byte written → the caller has it",
        ),
    ] {
        let pick = |l: &Latency| {
            if out {
                l.out_us.clone()
            } else {
                l.in_us.clone()
            }
        };
        for (p, pname) in [(50.0, "p50"), (99.0, "p99"), (100.0, "max")] {
            let v = |l: &Latency| pct(&pick(l), p) / 1e3;
            t.row(format!("{name}, {pname} (ms)"), 3)
                .vals(v(&rs_lat), py_lat.as_ref().map_or(nan, v))
                .floor(v(&floor))
                .target(if p == 99.0 { "≤ 2 ms" } else { "" });
        }
        let p99 = pct(&pick(&rs_lat), 99.0) / 1e3;
        t.verdict(
            if out {
                "added latency p99 ≤ 2 ms, outbound"
            } else {
                "added latency p99 ≤ 2 ms, inbound"
            },
            p99 <= 2.0,
            format!("{p99:.3} ms"),
        );
    }
    let wire_p = py_lat.as_ref().map_or(nan, |l| l.wire_bytes_per_audio_s);
    t.row(
        "bytes on the wire per audio second, client → server, ws://".into(),
        0,
    )
    .vals(rs_lat.wire_bytes_per_audio_s, wire_p);
    t.row("  the same ÷ raw PCM (32000 B/s)".into(), 3).vals(
        rs_lat.wire_bytes_per_audio_s / PCM_BYTES_PER_SEC,
        wire_p / PCM_BYTES_PER_SEC,
    );

    let idle_pct = |r: &Run| r.num("idle_cpu_us") / (r.num("idle_ns") / 1e3) * 100.0;
    let idle_o = idle_pct(&rs_idle);
    t.row(
        format!(
            "idle CPU, connected and silent for {} s (% of one core)",
            o.idle_secs
        ),
        4,
    )
    .vals(idle_o, opt(&py_idle, &idle_pct))
    .target("≤ 0.1 %");
    t.verdict(
        "idle CPU ≤ 0.1 % of one core",
        idle_o <= 0.1,
        format!("{idle_o:.4} %"),
    );

    // The same four rows for each build of transcribe_file measured.
    let tf_rows = |t: &mut Table, build: &str, rt: &Run, fast: &Run, targets: [&str; 2]| {
        let name = format!("transcribe_file{build}");
        t.row(
            format!("{name}: peak RSS, {} s at real time (MB)", o.rt_secs),
            2,
        )
        .vals(mb(rt), nan)
        .target(targets[0]);
        t.row(
            format!(
                "{name}: peak RSS, {} s as fast as possible (MB)",
                o.fast_secs
            ),
            2,
        )
        .vals(mb(fast), nan)
        .target(targets[1]);
        t.row(
            format!(
                "{name}: whole-process CPU, {} s at real time (s)",
                o.rt_secs
            ),
            3,
        )
        .vals(rt.cpu_s, nan);
        t.row(
            format!(
                "{name}: whole-process CPU, {} s as fast as possible (s)",
                o.fast_secs
            ),
            3,
        )
        .vals(fast.cpu_s, nan);
    };
    tf_rows(&mut t, "", &tf_rt, &tf_fast, ["≤ 3 MB", "flat with length"]);
    let mut rss_detail = format!("{:.2} MB / {:.2} MB", mb(&tf_rt), mb(&tf_fast));
    let rss_ok = mb(&tf_rt).max(mb(&tf_fast)) <= 3.0;
    if let Some((w_rt, w_fast)) = &tls {
        tf_rows(&mut t, " over wss://", w_rt, w_fast, ["", ""]);
        rss_detail += &format!("; over wss://: {:.2} MB / {:.2} MB", mb(w_rt), mb(w_fast));
    }
    if let Some((l_rt, l_fast)) = &lean {
        tf_rows(&mut t, ", no TLS or ALSA", l_rt, l_fast, ["", ""]);
        rss_detail += &format!("; without TLS: {:.2} MB / {:.2} MB", mb(l_rt), mb(l_fast));
    }
    t.verdict(
        "transcribe_file peak RSS ≤ 3 MB (default features)",
        rss_ok,
        rss_detail,
    );

    let cg_of = |n: &str| cg.iter().find(|c| c.0 == n);
    if let Some(ours) = cg_of("ours") {
        let py_cg = cg_of("python");
        t.row(
            "instructions per audio second, fast (callgrind, 70 s run − 10 s run)".into(),
            0,
        )
        .vals(ours.1, py_cg.map_or(nan, |c| c.1));
        t.row("  the same, whole 70 s run ÷ 70".into(), 0)
            .vals(ours.2, py_cg.map_or(nan, |c| c.2));
    }

    // ------------------------------------------------------------------ print
    println!();
    println!(
        "Machine: {}; load average {load_start} at the start, {load_end} at the end",
        machine()
    );
    println!(
        "Clients: qwen-asr-realtime {} (bench_client, release); {}",
        env!("CARGO_PKG_VERSION"),
        sdk_version
            .as_deref()
            .map_or("Python SDK not measured".into(), |v| {
                let mut p = v.split_whitespace();
                format!(
                    "dashscope {} on Python {} (bench/python_peer.py)",
                    p.next().unwrap_or("?"),
                    p.next().unwrap_or("?")
                )
            })
    );
    println!(
        "Server: the emulator (qwen-asr-emulator), its own process, ws://127.0.0.1; latency \
         against a WebSocket peer inside the bench driver. 16 kHz mono PCM, {CHUNK_MS} ms chunks. \
         Floor: `bench_client floor`, the same pacing and frames written straight to a raw \
         socket, no client (latency: a raw socket in the driver). Streaming rows (ours, the \
         SDK's, the floor's): the median of {} interleaved rounds.",
        o.repeat
    );
    println!();
    t.print();
    println!();
    let events = |r: &Run| {
        format!(
            "{} events ({} transcripts)",
            r.num("events"),
            r.num("completed")
        )
    };
    println!(
        "Each {} s real-time run received: ours {}, Python {}. Latency samples: ours {} out, {} of {} in{}.",
        o.rt_secs,
        events(&rs_rt),
        py_rt.as_ref().map_or("–".into(), events),
        rs_lat.out_us.len(),
        rs_lat.in_us.len(),
        rs_lat.in_sent,
        py_lat.as_ref().map_or(String::new(), |l| format!(
            "; Python {} out, {} of {} in",
            l.out_us.len(),
            l.in_us.len(),
            l.in_sent
        ))
    );
    println!();
    println!("Targets:");
    for (name, ok, detail) in &t.verdicts {
        println!("- {name}: {} ({detail})", verdict(*ok));
    }
    for (name, marginal, total, top) in &cg {
        println!();
        println!(
            "callgrind, {name}: {marginal:.0} instructions per audio second (70 s run − 10 s \
             run), {total:.0} over the whole 70 s run. Heaviest functions (own cost) in the 70 s \
             run; a build with symbols names them (CARGO_PROFILE_RELEASE_STRIP=false):"
        );
        for l in top {
            println!("    {l}");
        }
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The result table: rows of our value, the Python SDK's, their ratio, the floor, the target.
#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    verdicts: Vec<(String, bool, String)>,
}

struct Row {
    metric: String,
    digits: usize,
    ours: f64,
    python: f64,
    floor: f64,
    target: String,
}

impl Table {
    fn row(&mut self, metric: String, digits: usize) -> &mut Row {
        self.rows.push(Row {
            metric,
            digits,
            ours: f64::NAN,
            python: f64::NAN,
            floor: f64::NAN,
            target: String::new(),
        });
        self.rows.last_mut().expect("just pushed")
    }

    fn verdict(&mut self, name: &str, ok: bool, detail: String) {
        self.verdicts.push((name.into(), ok, detail));
    }

    fn print(&self) {
        println!("| metric | qwen-asr-realtime | Python SDK | Python ÷ ours | floor | target |");
        println!("| --- | ---: | ---: | ---: | ---: | --- |");
        for r in &self.rows {
            let f = |v: f64| {
                if v.is_finite() {
                    format!("{v:.*}", r.digits)
                } else {
                    "–".into()
                }
            };
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.metric,
                f(r.ours),
                f(r.python),
                ratio(r.python, r.ours),
                f(r.floor),
                r.target
            );
        }
    }
}

impl Row {
    fn vals(&mut self, ours: f64, python: f64) -> &mut Row {
        self.ours = ours;
        self.python = python;
        self
    }

    fn floor(&mut self, v: f64) -> &mut Row {
        self.floor = v;
        self
    }

    fn target(&mut self, t: &str) -> &mut Row {
        self.target = t.into();
        self
    }
}

/// Removes the temporary directory (test audio, callgrind files) however the run ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
