//! The slow-uplink scenario: a live source streaming PCM at real time through a link that
//! carries less than the stream needs, measured on loopback. Run with `--help`.
//!
//! The client talks to an in-process emulator through a forwarder on 127.0.0.1 that passes
//! client → server at a fixed rate (a token bucket pacing its reads from the client socket)
//! and server → client unthrottled. The forwarder's accepted socket has a small receive
//! buffer, so the backlog piles up on the client's side, where a device would hold it, and
//! not in the forwarder's kernel buffer. Each scenario gets a fresh emulator and forwarder,
//! and checks the loss invariant: what the server received plus what the client reported as
//! `client.audio_dropped` is what the appends took.

use std::io::{self, ErrorKind, Read, Write};
use std::mem::ManuallyDrop;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use qwen_asr_emulator::{Emulator, EmulatorConfig};
use qwen_asr_realtime::audio::wav::WavReader;
use qwen_asr_realtime::{
    ConnectParams, Conversation, Event, EventKind, SessionConfig, Stats, TryAppendError,
};

const USAGE: &str = "\
slow_uplink: a real-time PCM source on an uplink slower than the stream, on loopback

usage (from the workspace root):
  cargo run --release -p qwen-asr-bench --bin slow_uplink -- [OPTIONS]

Three scenarios, each against a fresh in-process emulator behind a throttling forwarder
(client -> server at --rate bytes/s, server -> client unthrottled):
  A  blocking append_pcm, default ConnectParams (send buffer capped at 32 KiB)
  B  try_append_pcm with max_backlog(Some(--max-backlog-ms)), as a live source that
     must not wait
  C  as A, with send_buffer_bytes(None): the kernel autotunes the send buffer
  D  as C, but end_session with its default timeout (Timeouts::end_session, 20 s),
     which the backlog C builds up outlasts
and two at --narrow-rate (default 8000 B/s: 64 kbit/s, a weak cellular uplink), built
with --features opus:
  E  PCM, try_append_pcm with max_backlog(Some(--max-backlog-ms)): the stream needs five
     times the link, so most of it must be dropped, reported
  F  the same audio as Ogg Opus (SessionConfig::opus, the defaults: 24 kbit/s), same
     appends and bound: it fits, nothing should be dropped
Audio is the shipped hello_16k.wav looped, with silence between the copies so that the
emulator's VAD ends an utterance each time, appended in 100 ms chunks paced by the wall
clock, then end_session. Prints a Markdown table; exits 1 if, in any scenario, audio was
lost without a report: when session.finished came, what the server received plus what
was reported dropped must be what the appends took; when it did not, the audio whose
transcripts reached the caller plus what was reported dropped must cover it.
Takes about 2.2 x --secs for each of A and C, 1.1 x for B, 1.4 x for D (the link
carries under half the stream); about seven minutes in all.

options:
  --secs N             seconds of audio per scenario (default 60)
  --rate N             client -> server bytes per second through the forwarder
                       (default 20000; the PCM stream needs about 43750 on the wire)
  --max-backlog-ms N   scenario B's bound (default 2000)
  --rcvbuf N           SO_RCVBUF of the forwarder's accepted socket, in bytes; Linux
                       doubles it (default 4096)
  --end-timeout-secs N end_session's timeout (default 300)
  --narrow-rate N      client -> server bytes per second for E and F (default 8000)
  --only LIST          run only these scenarios, e.g. --only ab (default abcd, and ef
                       when built with --features opus)
  --quick              10 s of audio, for trying it out (not for numbers)
  -h, --help           this text
";

const MODEL: &str = "qwen3-asr-flash-realtime";
const SAMPLE_RATE_HZ: u64 = 16_000;
const PCM_BYTES_PER_MS: u64 = SAMPLE_RATE_HZ * 2 / 1000;
const CHUNK_MS: u64 = 100;
/// Longer than the VAD's 800 ms hangover, so every copy of the file is its own utterance.
const GAP_MS: u64 = 1_200;
/// Wire bytes per ms of PCM audio in 100 ms append frames (43,750 B/s, measured by the main
/// benchmark): converts the kernel's byte counts into audio.
const WIRE_BYTES_PER_AUDIO_MS: f64 = 43.75;
/// How often the monitor samples the kernel's send queue and the stats.
const SAMPLE_MS: u64 = 50;
/// The longest any socket read or write in the forwarder blocks before it looks at `stop`.
const FORWARDER_POLL_MS: u64 = 100;
/// The invariant's slack: each drop is counted in whole ms of whole 100 ms chunks, so any
/// difference beyond rounding is a real one.
const INVARIANT_TOLERANCE_MS: i64 = 5;
const HELLO_WAV: &[u8] = include_bytes!("../../../examples/audio/hello_16k.wav");

struct Options {
    secs: u64,
    rate: u64,
    max_backlog_ms: u64,
    rcvbuf: usize,
    end_timeout: Duration,
    narrow_rate: u64,
    only: String,
}

fn parse_options() -> Options {
    let mut o = Options {
        secs: 60,
        rate: 20_000,
        max_backlog_ms: 2_000,
        rcvbuf: 4096,
        end_timeout: Duration::from_secs(300),
        narrow_rate: 8_000,
        only: if cfg!(feature = "opus") {
            "abcdef".into()
        } else {
            "abcd".into()
        },
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
            "--secs" => o.secs = num(&a).max(1),
            "--rate" => o.rate = num(&a).max(100),
            "--narrow-rate" => o.narrow_rate = num(&a).max(100),
            "--max-backlog-ms" => o.max_backlog_ms = num(&a),
            "--rcvbuf" => o.rcvbuf = num(&a) as usize,
            "--end-timeout-secs" => o.end_timeout = Duration::from_secs(num(&a)),
            "--only" => o.only = args.next().unwrap_or_default().to_ascii_lowercase(),
            "--quick" => o.secs = 10,
            other => {
                eprintln!("error: unknown option {other} (see --help)");
                std::process::exit(2);
            }
        }
    }
    o
}

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("slow_uplink: {what}: {e}");
    std::process::exit(2);
}

/// `secs` of the shipped speech file, looped with `GAP_MS` of silence after each copy.
fn speech(secs: u64) -> Vec<i16> {
    let mut wav =
        WavReader::new(io::Cursor::new(HELLO_WAV)).unwrap_or_else(|e| die("hello_16k.wav", e));
    let mut hello = vec![0i16; HELLO_WAV.len() / 2];
    let n = wav
        .read_samples(&mut hello)
        .unwrap_or_else(|e| die("hello_16k.wav", e));
    hello.truncate(n);
    let total = (secs * SAMPLE_RATE_HZ) as usize;
    let gap = vec![0i16; (GAP_MS * SAMPLE_RATE_HZ / 1000) as usize];
    let mut out = Vec::with_capacity(total + hello.len() + gap.len());
    while out.len() < total {
        out.extend_from_slice(&hello);
        out.extend_from_slice(&gap);
    }
    out.truncate(total);
    out
}

// ---------------------------------------------------------------------------------------------
// Process and socket figures

/// A `kB` field of /proc/self/status (VmRSS, VmHWM), in kB.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux 4.0+), so each scenario's peak is its own.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn set_rcvbuf(fd: RawFd, bytes: usize) -> io::Result<()> {
    let value = bytes.clamp(1, i32::MAX as usize) as libc::c_int;
    // SAFETY: a socket fd and a pointer to a c_int that lives through the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_rcvbuf(fd: RawFd) -> u64 {
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid pointers to a c_int and its length, both live through the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut got as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        got.max(0) as u64
    } else {
        0
    }
}

/// `ioctl` that reads one int: FIONREAD (bytes waiting to be read) or TIOCOUTQ (SIOCOUTQ on
/// a socket: bytes in the send queue, unsent or unacknowledged).
fn ioctl_int(fd: RawFd, request: libc::Ioctl) -> Option<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: both requests write one c_int through the pointer.
    let rc = unsafe { libc::ioctl(fd, request, &mut n as *mut libc::c_int) };
    (rc == 0).then_some(n.max(0) as u64)
}

/// The peer address of descriptor `fd` if it is a TCP socket, without taking ownership.
fn peer_of(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: the stream is never dropped (ManuallyDrop), so the descriptor, owned elsewhere,
    // is not closed; peer_addr only calls getpeername(2), which fails on a non-socket.
    let s = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
    s.peer_addr().ok()
}

/// The client library's socket: the one descriptor of this process connected to the
/// forwarder (the forwarder's own sockets are its listener, its accepted end and its
/// connection to the emulator).
fn find_socket_to(peer: SocketAddr) -> Option<RawFd> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .find(|&fd| peer_of(fd) == Some(peer))
}

// ---------------------------------------------------------------------------------------------
// The throttling forwarder

#[derive(Default)]
struct ForwarderFigures {
    up_bytes: AtomicU64,
    /// The largest FIONREAD seen on the accepted socket: what its kernel buffer held.
    peak_receive_queue: AtomicU64,
    /// SO_RCVBUF of the accepted socket, as the kernel reports it.
    rcvbuf: AtomicU64,
    connections: AtomicU64,
}

struct Forwarder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<Vec<JoinHandle<()>>>>,
    figures: Arc<ForwarderFigures>,
}

impl Forwarder {
    fn start(upstream: SocketAddr, rate: u64, rcvbuf: usize) -> io::Result<Forwarder> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        // Accepted sockets inherit the listener's buffer size: set before any connection.
        set_rcvbuf(listener.as_raw_fd(), rcvbuf)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let figures = Arc::new(ForwarderFigures::default());
        let accept = {
            let (stop, figures) = (Arc::clone(&stop), Arc::clone(&figures));
            thread::Builder::new()
                .name("fwd-accept".into())
                .spawn(move || accept_loop(&listener, upstream, rate, &stop, &figures))?
        };
        Ok(Forwarder {
            addr,
            stop,
            accept: Some(accept),
            figures,
        })
    }

    /// Stops every thread (each looks at `stop` at least every `FORWARDER_POLL_MS`) and
    /// joins them.
    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            for pump in accept.join().unwrap_or_default() {
                let _ = pump.join();
            }
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    upstream: SocketAddr,
    rate: u64,
    stop: &Arc<AtomicBool>,
    figures: &Arc<ForwarderFigures>,
) -> Vec<JoinHandle<()>> {
    let mut pumps = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => {
                eprintln!("forwarder: accept: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let server = match TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("forwarder: connect to the emulator: {e}");
                continue;
            }
        };
        figures.connections.fetch_add(1, Ordering::Relaxed);
        figures
            .rcvbuf
            .store(get_rcvbuf(client.as_raw_fd()), Ordering::Relaxed);
        let poll = Some(Duration::from_millis(FORWARDER_POLL_MS));
        for s in [&client, &server] {
            let _ = s.set_nonblocking(false);
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(poll);
            let _ = s.set_write_timeout(poll);
        }
        let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
            eprintln!("forwarder: cannot clone a socket");
            continue;
        };
        let (st, fig) = (Arc::clone(stop), Arc::clone(figures));
        if let Ok(h) = thread::Builder::new()
            .name("fwd-up".into())
            .spawn(move || pump_up(client, server, rate, &st, &fig))
        {
            pumps.push(h);
        }
        let st = Arc::clone(stop);
        if let Ok(h) = thread::Builder::new()
            .name("fwd-down".into())
            .spawn(move || pump_down(server2, client2, &st))
        {
            pumps.push(h);
        }
    }
    pumps
}

/// Writes all of `data` unless the socket fails or `stop` is set.
fn write_all_until_stop(to: &mut TcpStream, mut data: &[u8], stop: &AtomicBool) -> io::Result<()> {
    while !data.is_empty() {
        match to.write(data) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Client → server at `rate` bytes/s: a token bucket of 100 ms worth, and each read asks the
/// kernel for no more than the tokens there are, so unread bytes stay in the client's send
/// queue (the accepted socket's own receive buffer being small).
fn pump_up(
    mut from: TcpStream,
    mut to: TcpStream,
    rate: u64,
    stop: &AtomicBool,
    figures: &ForwarderFigures,
) {
    let burst = (rate / 10).max(1) as f64;
    // Reads of at least a quarter of the bucket: fewer, larger reads, at the same rate.
    let min_read = (burst / 4.0).max(1.0);
    let mut tokens = burst;
    let mut last = Instant::now();
    let mut buf = vec![0u8; burst as usize];
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        tokens = (tokens + now.duration_since(last).as_secs_f64() * rate as f64).min(burst);
        last = now;
        if tokens < min_read {
            thread::sleep(Duration::from_secs_f64((min_read - tokens) / rate as f64));
            continue;
        }
        if let Some(q) = ioctl_int(from.as_raw_fd(), libc::FIONREAD) {
            figures.peak_receive_queue.fetch_max(q, Ordering::Relaxed);
        }
        let want = (tokens as usize).min(buf.len());
        match from.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                tokens -= n as f64;
                if write_all_until_stop(&mut to, &buf[..n], stop).is_err() {
                    break;
                }
                figures.up_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
    // The emulator sees the client's end; its close comes back through pump_down.
    let _ = to.shutdown(Shutdown::Write);
}

/// Server → client, unthrottled.
fn pump_down(mut from: TcpStream, mut to: TcpStream, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if write_all_until_stop(&mut to, &buf[..n], stop).is_err() {
                    break;
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------------------------
// One scenario

#[derive(Clone, Copy, PartialEq)]
enum Appends {
    Blocking,
    Try,
}

struct Scenario {
    name: &'static str,
    what: String,
    params: ConnectParams,
    appends: Appends,
    /// `end_session`'s timeout when not `--end-timeout-secs`.
    end_timeout: Option<Duration>,
    /// What the session sends: PCM, or Ogg Opus encoded by the library.
    session: SessionConfig,
    /// The forwarder's client -> server rate, in bytes per second.
    rate: u64,
}

/// What the event reader saw, with times from the first append.
#[derive(Default)]
struct Seen {
    behind: Vec<(f64, u64)>,
    caught_up: Vec<(f64, u64)>,
    dropped: Vec<(u64, String)>,
    completed: usize,
    reconnects: usize,
    /// The type of the last event.
    last: String,
    closed: Option<(u16, String)>,
}

#[derive(Default)]
struct Outcome {
    stats: Stats,
    refused_ms: u64,
    blocked: Duration,
    longest_append: Duration,
    caller_late_at_end: Duration,
    end_session: String,
    end_session_took: Duration,
    seen: Seen,
    received_ms: u64,
    transcribed_ms: u64,
    /// Audio whose result reached the caller: everything received once `session.finished`
    /// came, else the utterances whose transcripts the caller got.
    resulted_ms: u64,
    session_finished: bool,
    server_items: usize,
    server_finished: bool,
    sessions: usize,
    peak_outq_bytes: u64,
    outq_sampled: bool,
    peak_fwd_queue_bytes: u64,
    fwd_rcvbuf: u64,
    up_bytes: u64,
    rss_start_kb: u64,
    peak_rss_kb: u64,
    peak_rss_reset: bool,
    wall: Duration,
}

impl Outcome {
    fn invariant_diff_ms(&self) -> i64 {
        self.received_ms as i64 + self.stats.dropped_ms as i64 - self.stats.appended_ms as i64
    }

    /// Audio with a result plus audio reported dropped, less what was appended: negative is
    /// audio lost without a word, positive audio reported dropped that did have a result.
    fn accounted_diff_ms(&self) -> i64 {
        self.resulted_ms as i64 + self.stats.dropped_ms as i64 - self.stats.appended_ms as i64
    }

    /// Once `session.finished` came, everything the server received has its result, so the
    /// received and the reported must add up to the appended exactly. Without it, audio the
    /// server received but never answered is rightly reported dropped too: then nothing may
    /// be missing from the results and the reports together.
    fn invariant_holds(&self) -> bool {
        if self.session_finished {
            self.invariant_diff_ms().abs() <= INVARIANT_TOLERANCE_MS
        } else {
            self.accounted_diff_ms() >= -INVARIANT_TOLERANCE_MS
        }
    }
}

fn read_events(conv: &Conversation, t0: &Mutex<Option<Instant>>, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let mut quiet_since = Instant::now();
    let since = |t0: &Mutex<Option<Instant>>| {
        t0.lock()
            .ok()
            .and_then(|t| t.map(|t| t.elapsed().as_secs_f64()))
            .unwrap_or(0.0)
    };
    loop {
        let event: Event = match conv.recv_timeout(Duration::from_millis(200)) {
            Ok(e) => e,
            Err(qwen_asr_realtime::RecvTimeoutError::Timeout) => {
                // Bounded: once the scenario is over, 5 s without an event ends the wait.
                if stop.load(Ordering::SeqCst) && quiet_since.elapsed() > Duration::from_secs(5) {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        quiet_since = Instant::now();
        seen.last = event.type_name().to_owned();
        match &event.kind {
            EventKind::LinkBehind { behind_ms } => seen.behind.push((since(t0), *behind_ms)),
            EventKind::LinkCaughtUp { max_behind_ms } => {
                seen.caught_up.push((since(t0), *max_behind_ms))
            }
            EventKind::AudioDropped { ms, reason } => seen.dropped.push((*ms, reason.clone())),
            EventKind::Completed(_) => seen.completed += 1,
            EventKind::Reconnected { .. } => seen.reconnects += 1,
            EventKind::Closed { code, reason } => {
                seen.closed = Some((*code, reason.clone()));
                break;
            }
            _ => {}
        }
    }
    seen
}

fn run_scenario(sc: &Scenario, o: &Options, audio: &[i16]) -> Outcome {
    eprintln!("scenario {}: {} ...", sc.name, sc.what);
    let started = Instant::now();
    let mut out = Outcome {
        peak_rss_reset: reset_peak_rss(),
        rss_start_kb: status_kb("VmRSS"),
        ..Outcome::default()
    };
    let emulator = Emulator::start(EmulatorConfig {
        record_audio: true,
        ..EmulatorConfig::default()
    })
    .unwrap_or_else(|e| die("emulator", e));
    let fwd = Forwarder::start(emulator.local_addr(), sc.rate, o.rcvbuf)
        .unwrap_or_else(|e| die("forwarder", e));
    let url = emulator
        .url()
        .replacen(&emulator.local_addr().to_string(), &fwd.addr.to_string(), 1);
    let params = sc.params.clone().url(url).api_key("bench").model(MODEL);
    let conv = Conversation::start(params, &sc.session).unwrap_or_else(|e| die("connect", e));
    let client_fd = find_socket_to(fwd.addr);
    out.outq_sampled = client_fd.is_some();
    let t0: Mutex<Option<Instant>> = Mutex::new(None);
    let stop_monitor = AtomicBool::new(false);
    let stop_events = AtomicBool::new(false);
    let peak_outq = AtomicU64::new(0);
    let chunk = (SAMPLE_RATE_HZ * CHUNK_MS / 1000) as usize;
    thread::scope(|s| {
        let reader = s.spawn(|| read_events(&conv, &t0, &stop_events));
        let monitor = s.spawn(|| {
            while !stop_monitor.load(Ordering::SeqCst) {
                // Re-checked each time: the descriptor is the library's, and closes at the end.
                if let Some(fd) = client_fd.filter(|&fd| peer_of(fd) == Some(fwd.addr)) {
                    if let Some(q) = ioctl_int(fd, libc::TIOCOUTQ) {
                        peak_outq.fetch_max(q, Ordering::Relaxed);
                    }
                }
                thread::sleep(Duration::from_millis(SAMPLE_MS));
            }
        });
        let start = Instant::now();
        if let Ok(mut t) = t0.lock() {
            *t = Some(start);
        }
        for (i, samples) in audio.chunks(chunk).enumerate() {
            let due = start + Duration::from_millis(i as u64 * CHUNK_MS);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let t = Instant::now();
            let r = match sc.appends {
                Appends::Blocking => conv.append_pcm(samples).map_err(TryAppendError::Other),
                Appends::Try => conv.try_append_pcm(samples),
            };
            let took = t.elapsed();
            out.blocked += took;
            out.longest_append = out.longest_append.max(took);
            match r {
                Ok(()) => {}
                // A live source's chunk that the library could not take: the caller's loss,
                // counted here, never handed over.
                Err(TryAppendError::Full) => {
                    out.refused_ms += samples.len() as u64 * 1000 / SAMPLE_RATE_HZ
                }
                Err(TryAppendError::Other(e)) => {
                    eprintln!("  append {i} failed: {e}");
                    break;
                }
            }
        }
        let audio_end = start + Duration::from_millis(audio.len() as u64 * 1000 / SAMPLE_RATE_HZ);
        out.caller_late_at_end = Instant::now().saturating_duration_since(audio_end);
        let t = Instant::now();
        out.end_session = match conv.end_session(sc.end_timeout.unwrap_or(o.end_timeout)) {
            Ok(()) => {
                out.session_finished = true;
                "ok".into()
            }
            Err(e) => format!("error: {e}"),
        };
        out.end_session_took = t.elapsed();
        stop_monitor.store(true, Ordering::SeqCst);
        stop_events.store(true, Ordering::SeqCst);
        let _ = monitor.join();
        out.seen = reader.join().unwrap_or_default();
    });
    out.stats = conv.stats();
    drop(conv);
    // Before the emulator's records are copied out below, which would add their own peak.
    out.peak_rss_kb = status_kb("VmHWM");
    if !emulator.wait_for_sessions_closed(1, Duration::from_secs(10)) {
        eprintln!("  the emulator's session had not ended 10 s after the close");
    }
    let sessions = emulator.sessions();
    out.sessions = sessions.len();
    out.received_ms = sessions.iter().map(|s| s.audio.bytes).sum::<u64>() / PCM_BYTES_PER_MS;
    out.transcribed_ms = sessions
        .iter()
        .flat_map(|s| s.items.iter())
        .map(|i| i.audio.bytes)
        .sum::<u64>()
        / PCM_BYTES_PER_MS;
    out.server_items = sessions.iter().map(|s| s.items.len()).sum();
    // Transcripts arrive in the order of the utterances, so the caller's N are the first N.
    out.resulted_ms = if out.session_finished {
        out.received_ms
    } else {
        sessions
            .iter()
            .flat_map(|s| s.items.iter())
            .take(out.seen.completed)
            .map(|i| i.audio.bytes)
            .sum::<u64>()
            / PCM_BYTES_PER_MS
    };
    out.server_finished = sessions.iter().all(|s| s.finished);
    out.peak_outq_bytes = peak_outq.load(Ordering::Relaxed);
    out.peak_fwd_queue_bytes = fwd.figures.peak_receive_queue.load(Ordering::Relaxed);
    out.fwd_rcvbuf = fwd.figures.rcvbuf.load(Ordering::Relaxed);
    out.up_bytes = fwd.figures.up_bytes.load(Ordering::Relaxed);
    if fwd.figures.connections.load(Ordering::Relaxed) != 1 {
        eprintln!(
            "  the forwarder saw {} connections",
            fwd.figures.connections.load(Ordering::Relaxed)
        );
    }
    fwd.stop();
    emulator.shutdown();
    out.wall = started.elapsed();
    eprintln!(
        "  done in {:.0} s: appended {} ms, received {} ms, dropped {} ms",
        out.wall.as_secs_f64(),
        out.stats.appended_ms,
        out.received_ms,
        out.stats.dropped_ms
    );
    out
}

// ---------------------------------------------------------------------------------------------
// The report

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn print_report(o: &Options, runs: &[(Scenario, Outcome)]) {
    println!(
        "\n{} s of 16 kHz PCM at real time in {CHUNK_MS} ms chunks, client -> server at {} B/s \
         ({:.0} % of the stream's {:.0} B/s on the wire; E and F at {} B/s)\n",
        o.secs,
        o.rate,
        o.rate as f64 * 100.0 / (WIRE_BYTES_PER_AUDIO_MS * 1000.0),
        WIRE_BYTES_PER_AUDIO_MS * 1000.0,
        o.narrow_rate
    );
    let mut header = String::from("| |");
    let mut rule = String::from("| --- |");
    for (sc, _) in runs {
        header += &format!(" {}: {} |", sc.name, sc.what);
        rule += " ---: |";
    }
    println!("{header}\n{rule}");
    let row = |label: &str, f: &dyn Fn(&Outcome) -> String| {
        let mut line = format!("| {label} |");
        for (_, out) in runs {
            line += &format!(" {} |", f(out));
        }
        println!("{line}");
    };
    row("audio handed to the appends (ms)", &|r| {
        r.stats.appended_ms.to_string()
    });
    row(
        "refused by try_append_pcm (Full), the caller's loss (ms)",
        &|r| r.refused_ms.to_string(),
    );
    row("largest client.link_behind behind_ms (events)", &|r| {
        let max = r.seen.behind.iter().map(|b| b.1).max();
        max.map_or("none".into(), |m| format!("{m} ({})", r.seen.behind.len()))
    });
    row(
        "first client.link_behind, after the first append (s)",
        &|r| {
            r.seen
                .behind
                .first()
                .map_or("–".into(), |b| format!("{:.1}", b.0))
        },
    );
    row("client.link_caught_up (max_behind_ms)", &|r| {
        if r.seen.caught_up.is_empty() {
            "none".into()
        } else {
            let v: Vec<String> = r.seen.caught_up.iter().map(|c| c.1.to_string()).collect();
            v.join(", ")
        }
    });
    row("stats.max_backlog_ms", &|r| {
        r.stats.max_backlog_ms.to_string()
    });
    row(
        "kernel send queue, peak (SIOCOUTQ, KB ≈ ms of audio)",
        &|r| {
            if r.outq_sampled {
                format!(
                    "{:.0} ≈ {:.0}",
                    r.peak_outq_bytes as f64 / 1000.0,
                    r.peak_outq_bytes as f64 / WIRE_BYTES_PER_AUDIO_MS
                )
            } else {
                "not sampled".into()
            }
        },
    );
    row("forwarder's receive queue, peak (KB; SO_RCVBUF)", &|r| {
        format!(
            "{:.1} ({})",
            r.peak_fwd_queue_bytes as f64 / 1000.0,
            r.fwd_rcvbuf
        )
    });
    row("appends blocked, total (s); longest one (ms)", &|r| {
        format!(
            "{}; {:.0}",
            secs(r.blocked),
            r.longest_append.as_secs_f64() * 1000.0
        )
    });
    row("caller behind real time after its last append (s)", &|r| {
        secs(r.caller_late_at_end)
    });
    row("end_session (s)", &|r| {
        format!("{} in {}", r.end_session, secs(r.end_session_took))
    });
    row("reported dropped, stats.dropped_ms (events)", &|r| {
        let events: u64 = r.seen.dropped.iter().map(|d| d.0).sum();
        if events == r.stats.dropped_ms {
            format!("{} ({})", r.stats.dropped_ms, r.seen.dropped.len())
        } else {
            format!(
                "{} (events say {events} in {})",
                r.stats.dropped_ms,
                r.seen.dropped.len()
            )
        }
    });
    row("received by the server (ms)", &|r| {
        r.received_ms.to_string()
    });
    row("of which in completed utterances (ms)", &|r| {
        r.transcribed_ms.to_string()
    });
    row(
        "received + dropped − appended (ms): invariant",
        &|r: &Outcome| {
            format!(
                "{:+} {}",
                r.invariant_diff_ms(),
                match (r.session_finished, r.invariant_holds()) {
                    (false, _) => "(no session.finished: see the next row)",
                    (true, true) => "ok",
                    (true, false) => "FAILS",
                }
            )
        },
    );
    row(
        "with a result + dropped − appended (ms): no silent loss",
        &|r: &Outcome| {
            let d = r.accounted_diff_ms();
            let verdict = if d < -INVARIANT_TOLERANCE_MS {
                "SILENT LOSS"
            } else if d > INVARIANT_TOLERANCE_MS {
                "ok, over-reported"
            } else {
                "ok"
            };
            format!("{d:+} {verdict}")
        },
    );
    row("transcripts: caller got / server completed", &|r| {
        format!("{} / {}", r.seen.completed, r.server_items)
    });
    row("sessions; session.finished sent; reconnects", &|r| {
        format!(
            "{}; {}; {}",
            r.sessions,
            if r.server_finished { "yes" } else { "no" },
            r.stats.reconnects
        )
    });
    row("last event", &|r| r.seen.last.clone());
    row("peak RSS of the process, VmHWM (MB; at start)", &|r| {
        if r.peak_rss_reset {
            format!("{} ({})", mb(r.peak_rss_kb), mb(r.rss_start_kb))
        } else {
            format!("{} (not reset: cumulative)", mb(r.peak_rss_kb))
        }
    });
    // The emulator runs in this process and keeps all the audio it received.
    row("  of it, the emulator's copy of the audio (MB)", &|r| {
        mb(r.received_ms * PCM_BYTES_PER_MS / 1024)
    });
    row("wall time (s)", &|r| secs(r.wall));
    println!();
    for (sc, r) in runs {
        let behind: Vec<String> = r
            .seen
            .behind
            .iter()
            .map(|(t, ms)| format!("{t:.1} s: {ms}"))
            .collect();
        let caught: Vec<String> = r
            .seen
            .caught_up
            .iter()
            .map(|(t, ms)| format!("{t:.1} s (max {ms})"))
            .collect();
        println!(
            "{}: link_behind [{}]; caught_up [{}]",
            sc.name,
            behind.join(", "),
            caught.join(", ")
        );
        let mut reasons: Vec<&str> = r.seen.dropped.iter().map(|d| d.1.as_str()).collect();
        reasons.dedup();
        for reason in reasons {
            let ms: u64 = r
                .seen
                .dropped
                .iter()
                .filter(|d| d.1 == reason)
                .map(|d| d.0)
                .sum();
            println!("{}:   dropped {ms} ms: {reason}", sc.name);
        }
        if let Some((code, reason)) = &r.seen.closed {
            println!("{}:   client.closed {code} {reason}", sc.name);
        }
    }
}

/// `pcm`'s session sending Ogg Opus at the encoder's defaults, if the encoder is built in.
#[cfg(feature = "opus")]
fn opus_session(pcm: SessionConfig) -> Option<SessionConfig> {
    Some(pcm.opus(qwen_asr_realtime::opus::OpusConfig::default()))
}

#[cfg(not(feature = "opus"))]
fn opus_session(_pcm: SessionConfig) -> Option<SessionConfig> {
    None
}

fn main() {
    let o = parse_options();
    let audio = speech(o.secs);
    let mut runs = Vec::new();
    for name in ["a", "b", "c", "d", "e", "f"] {
        if !o.only.contains(name) {
            continue;
        }
        let pcm = SessionConfig::vad().sample_rate(16000);
        let bounded =
            || ConnectParams::new().max_backlog(Some(Duration::from_millis(o.max_backlog_ms)));
        let sc = match name {
            "a" => Scenario {
                name: "A",
                what: "blocking, 32 KiB send buffer".into(),
                params: ConnectParams::new(),
                appends: Appends::Blocking,
                end_timeout: None,
                session: pcm,
                rate: o.rate,
            },
            "b" => Scenario {
                name: "B",
                what: format!("try_append, max_backlog {} ms", o.max_backlog_ms),
                params: bounded(),
                appends: Appends::Try,
                end_timeout: None,
                session: pcm,
                rate: o.rate,
            },
            "c" => Scenario {
                name: "C",
                what: "blocking, autotuned send buffer".into(),
                params: ConnectParams::new().send_buffer_bytes(None),
                appends: Appends::Blocking,
                end_timeout: None,
                session: pcm,
                rate: o.rate,
            },
            "d" => {
                let params = ConnectParams::new().send_buffer_bytes(None);
                Scenario {
                    name: "D",
                    what: "as C, end_session's default timeout".into(),
                    end_timeout: Some(params.timeouts.end_session),
                    params,
                    appends: Appends::Blocking,
                    session: pcm,
                    rate: o.rate,
                }
            }
            "e" => Scenario {
                name: "E",
                what: format!(
                    "PCM at {} B/s, try_append, max_backlog {} ms",
                    o.narrow_rate, o.max_backlog_ms
                ),
                params: bounded(),
                appends: Appends::Try,
                end_timeout: None,
                session: pcm,
                rate: o.narrow_rate,
            },
            _ => match opus_session(pcm) {
                Some(session) => Scenario {
                    name: "F",
                    what: format!(
                        "Opus at {} B/s, try_append, max_backlog {} ms",
                        o.narrow_rate, o.max_backlog_ms
                    ),
                    params: bounded(),
                    appends: Appends::Try,
                    end_timeout: None,
                    session,
                    rate: o.narrow_rate,
                },
                None => {
                    eprintln!("scenario F needs the Opus encoder: build with --features opus");
                    continue;
                }
            },
        };
        let out = run_scenario(&sc, &o, &audio);
        runs.push((sc, out));
    }
    print_report(&o, &runs);
    let failed: Vec<&str> = runs
        .iter()
        .filter(|(_, r)| !r.invariant_holds())
        .map(|(sc, _)| sc.name)
        .collect();
    if failed.is_empty() {
        println!(
            "\nno silent loss in any scenario (±{INVARIANT_TOLERANCE_MS} ms): received + reported dropped = \
             appended after session.finished, with a result + reported dropped ≥ appended without it"
        );
    } else {
        println!(
            "\nINVARIANT FAILS in {}: audio lost without a report (see the rows above)",
            failed.join(", ")
        );
        std::process::exit(1);
    }
}
