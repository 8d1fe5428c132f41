//! What the examples share: options, connecting (to the service or the bundled emulator),
//! showing events on a terminal or as JSON lines, and ending a run so that the library's
//! last events are shown before the process exits.
#![allow(dead_code)] // each example uses its own subset

#[cfg(feature = "gate")]
pub mod gate;

use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::time::Duration;

use qwen_asr_emulator::{Emulator, EmulatorConfig};
use qwen_asr_realtime::config::{ApiKey, API_KEY_ENV, API_KEY_FILE_ENV};
use qwen_asr_realtime::{
    ConnectParams, Conversation, Error, Event, EventKind, Keepalive, ReconnectPolicy, SessionConfig,
};

/// The options the examples have in common.
// (The first line is not continued from this one with `\`, which would eat its indent.)
pub const COMMON_OPTIONS: &str = "  --url URL          service endpoint (default: Beijing, wss://dashscope.aliyuncs.com/api-ws/v1/realtime;
                     Singapore: wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime)
  --model NAME       model (default qwen3-asr-flash-realtime)
  --api-key KEY      API key (default: $DASHSCOPE_API_KEY, $DASHSCOPE_API_KEY_FILE_PATH, ~/.dashscope/api_key)
  --mode vad|manual  server VAD cuts utterances (default), or manual commits
  --language CODE    zh, yue, en, ja, de, ko, ru, fr, pt, ar, it, es, hi, id, th, tr, uk, vi, cs,
                     da, fil, fi, is, ms, no, pl, sv (default: detect automatically)
  --context TEXT     context text for biasing (names, vocabulary)
  --chunk-ms N       audio per append in ms, 20..=500 (default 100)
  --format pcm|opus  what goes on the wire: 16-bit PCM (default), or Ogg Opus encoded on the
                     device, about a tenth of the bytes (needs the crate feature `opus`:
                     cargo run --features opus --example ...)
  --opus-bitrate BPS the Opus encoder's target bitrate, 6000..=128000 bits per second
                     (default 24000; with --format opus)
  --ca-cert PEM      also trust the CA certificate in this PEM file (repeatable), for a private
                     gateway or a TLS-inspecting proxy; the system's roots stay trusted
  --emulator         use the bundled local emulator instead of the service (no API key needed;
                     without a key and without this flag, the example stops with an error)
  --json             one JSON object per line on stdout: every event as received, and the
                     library's own events with a type starting client.
  --no-reconnect     end on a dropped connection instead of reconnecting and replaying the
                     audio whose transcript had not come back
  --max-backlog-ms N when more than N ms of audio wait to leave the device (a live source on
                     a slow link), drop the oldest queued audio, reported, instead of waiting
                     for the link (default: wait; not for files sent faster than real time)
  --ping-ms N        a WebSocket ping every N ms (default 10000)
  --dead-peer-ms N   nothing received for N ms means the link is dead: reconnect (default 20000)
  -h, --help         this help";

/// The speech gate's options, for the examples that offer `--gate`.
pub const GATE_OPTIONS: &str =
    "  --gate             send only speech: an on-device speech gate (crate feature `gate`) holds
                     the rest back; a summary goes to stderr at the end
  --gate-preroll-ms N   audio kept and sent before each onset (default 500)
  --gate-hangover-ms N  audio sent after speech ends (default 500; in VAD mode at least the
                     session's silence window plus 300 ms, so that each utterance ends on time)
  --gate-idle-ms N   after N ms of audio without speech end the session, and open a new one at
                     the next onset (default 30000; 0 keeps the session open)
";

/// Parsed options.
#[derive(Debug, Default)]
pub struct Options {
    pub url: Option<String>,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub manual: bool,
    pub language: Option<String>,
    pub context: Option<String>,
    pub chunk_ms: u32,
    /// `--format opus`, and `--opus-bitrate`.
    pub opus: bool,
    pub opus_bitrate: Option<u32>,
    /// PEM files of extra root certificates (`--ca-cert`, repeatable).
    pub ca_certs: Vec<String>,
    pub emulator: bool,
    pub json: bool,
    pub realtime: bool,
    pub reconnect: bool,
    pub max_backlog_ms: Option<u64>,
    /// `--gate` and its settings (see [`GATE_OPTIONS`]).
    pub gate: bool,
    pub gate_preroll_ms: Option<u32>,
    pub gate_hangover_ms: Option<u32>,
    /// `--gate-idle-ms`: `Some(0)` keeps the session open.
    pub gate_idle_ms: Option<u32>,
    /// `--ping-ms`, `--dead-peer-ms`: the library's defaults when unset.
    pub ping_ms: Option<u64>,
    pub dead_peer_ms: Option<u64>,
    pub device: Option<String>,
    pub seconds: Option<f64>,
    pub positional: Vec<String>,
}

/// Prints `usage` and exits 0 for `--help`; exits 2 with a one-line error for bad options.
/// `extra` lists the flags (without value) and `extra_valued` the options taking a value
/// that this example adds.
pub fn parse_args(usage: &str, extra: &[&str], extra_valued: &[&str]) -> Options {
    match try_parse(std::env::args().skip(1), extra, extra_valued) {
        Ok(Some(o)) => o,
        Ok(None) => {
            // Not println!: it panics when the reader has gone (`--help | head`).
            let _ = writeln!(std::io::stdout(), "{usage}");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("error: {e} (see --help)");
            std::process::exit(2);
        }
    }
}

fn try_parse(
    mut args: impl Iterator<Item = String>,
    extra: &[&str],
    extra_valued: &[&str],
) -> Result<Option<Options>, String> {
    let mut o = Options {
        chunk_ms: 100,
        reconnect: true,
        ..Options::default()
    };
    while let Some(arg) = args.next() {
        let known_valued = [
            "--url",
            "--model",
            "--api-key",
            "--mode",
            "--language",
            "--context",
            "--chunk-ms",
            "--format",
            "--opus-bitrate",
            "--ca-cert",
            "--max-backlog-ms",
            "--ping-ms",
            "--dead-peer-ms",
        ];
        // The gate's settings belong to `--gate`, offered by the examples that list it.
        let gate_valued = ["--gate-preroll-ms", "--gate-hangover-ms", "--gate-idle-ms"];
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let takes_value = known_valued.contains(&name.as_str())
            || extra_valued.contains(&name.as_str())
            || (extra.contains(&"--gate") && gate_valued.contains(&name.as_str()));
        let value = if takes_value {
            match inline.or_else(|| args.next()) {
                Some(v) => v,
                None => return Err(format!("{name} needs a value")),
            }
        } else {
            String::new()
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--url" => o.url = Some(value),
            "--model" => o.model = Some(value),
            "--api-key" => o.api_key = Some(value),
            "--mode" => {
                o.manual = match value.as_str() {
                    "vad" => false,
                    "manual" => true,
                    v => return Err(format!("--mode takes vad or manual, not {v:?}")),
                }
            }
            "--language" => o.language = Some(value),
            "--context" => o.context = Some(value),
            "--chunk-ms" => {
                o.chunk_ms = value
                    .parse()
                    .ok()
                    .filter(|n| (20..=500).contains(n))
                    .ok_or(format!(
                        "--chunk-ms takes a whole number from 20 to 500, not {value:?}"
                    ))?
            }
            "--format" => {
                o.opus = match value.as_str() {
                    "pcm" => false,
                    "opus" if cfg!(feature = "opus") => true,
                    "opus" => {
                        return Err("--format opus needs the crate feature `opus` \
                             (cargo run --features opus --example ...)"
                            .into())
                    }
                    v => return Err(format!("--format takes pcm or opus, not {v:?}")),
                }
            }
            "--opus-bitrate" => {
                o.opus_bitrate = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|n| (6_000..=128_000).contains(n))
                        .ok_or(format!(
                        "--opus-bitrate takes bits per second from 6000 to 128000, not {value:?}"
                    ))?,
                )
            }
            "--ca-cert" => o.ca_certs.push(value),
            "--max-backlog-ms" => {
                o.max_backlog_ms = Some(value.parse().ok().filter(|n| *n > 0).ok_or(format!(
                    "--max-backlog-ms takes a positive whole number, not {value:?}"
                ))?)
            }
            "--ping-ms" | "--dead-peer-ms" => {
                let ms = value.parse().ok().filter(|n| *n > 0).ok_or(format!(
                    "{name} takes a positive whole number, not {value:?}"
                ))?;
                if name == "--ping-ms" {
                    o.ping_ms = Some(ms);
                } else {
                    o.dead_peer_ms = Some(ms);
                }
            }
            "--device" if extra_valued.contains(&"--device") => o.device = Some(value),
            "--seconds" if extra_valued.contains(&"--seconds") => {
                o.seconds = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|s: &f64| *s > 0.0 && s.is_finite())
                        .ok_or(format!("--seconds takes a positive number, not {value:?}"))?,
                )
            }
            "--emulator" => o.emulator = true,
            "--json" => o.json = true,
            "--no-reconnect" => o.reconnect = false,
            "--realtime" if extra.contains(&"--realtime") => o.realtime = true,
            "--gate" if extra.contains(&"--gate") => o.gate = true,
            "--gate-preroll-ms" | "--gate-hangover-ms" | "--gate-idle-ms"
                if extra.contains(&"--gate") =>
            {
                let ms = value.parse().ok().ok_or(format!(
                    "{name} takes a whole number of milliseconds, not {value:?}"
                ))?;
                match name.as_str() {
                    "--gate-preroll-ms" => o.gate_preroll_ms = Some(ms),
                    "--gate-hangover-ms" => o.gate_hangover_ms = Some(ms),
                    _ => o.gate_idle_ms = Some(ms),
                }
            }
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}")),
            _ => o.positional.push(arg),
        }
    }
    if o.opus_bitrate.is_some() && !o.opus {
        return Err("--opus-bitrate needs --format opus".into());
    }
    Ok(Some(o))
}

/// Built without the feature `gate`: `--gate` is refused in one line naming the feature.
#[cfg(not(feature = "gate"))]
pub fn refuse_gate(o: &Options) -> Result<(), String> {
    if o.gate {
        return Err("--gate needs the crate feature `gate` (cargo run --features gate ...)".into());
    }
    Ok(())
}

/// Ends the session, then runs `after` (a summary that must count the session's end), and
/// gives the end's outcome.
pub fn end_session_then(conv: &Conversation, after: impl FnOnce()) -> Result<(), String> {
    let ended = conv
        .end_session(END_SESSION_TIMEOUT)
        .map_err(|e| failure("end of session", e));
    after();
    ended
}

/// The session configuration the options ask for.
pub fn session_config(o: &Options, sample_rate: u32) -> SessionConfig {
    let mut cfg = if o.manual {
        SessionConfig::manual()
    } else {
        SessionConfig::vad()
    };
    cfg = cfg.sample_rate(sample_rate);
    if let Some(l) = &o.language {
        cfg = cfg.language(l.clone());
    }
    if let Some(c) = &o.context {
        cfg = cfg.context(c.clone());
    }
    // Without the feature the parser has refused `--format opus` already.
    #[cfg(feature = "opus")]
    if o.opus {
        let mut opus = qwen_asr_realtime::opus::OpusConfig::default();
        if let Some(bps) = o.opus_bitrate {
            opus = opus.bitrate_bps(bps);
        }
        cfg = cfg.opus(opus);
    }
    cfg
}

/// Connects to the service, or with `--emulator` starts the bundled emulator and connects to
/// it (saying so on stderr). Without an API key and without `--emulator`, exits 2 with a
/// one-line error: quietly running against the emulator would look like success on a device.
pub fn connect(
    o: &Options,
    config: &SessionConfig,
) -> Result<(Conversation, Option<Emulator>), Error> {
    let mut params = ConnectParams::new();
    if o.reconnect {
        params = params.reconnect(ReconnectPolicy::default());
    }
    if let Some(ms) = o.max_backlog_ms {
        params = params.max_backlog(Some(std::time::Duration::from_millis(ms)));
    }
    if let Some(m) = &o.model {
        params = params.model(m.clone());
    }
    let mut keepalive = Keepalive::default();
    if let Some(ms) = o.ping_ms {
        keepalive.ping_interval = Some(Duration::from_millis(ms));
    }
    if let Some(ms) = o.dead_peer_ms {
        keepalive.dead_peer_timeout = Duration::from_millis(ms);
    }
    params = params.keepalive(keepalive);
    let have_key = o.api_key.is_some() || ApiKey::from_env().is_ok();
    if !o.emulator && !have_key {
        eprintln!(
            "error: no API key: set {API_KEY_ENV} (or {API_KEY_FILE_ENV}, or write it to \
             ~/.dashscope/api_key) or pass --api-key KEY; or add --emulator to use the bundled \
             local emulator"
        );
        std::process::exit(2);
    }
    let mut emulator = None;
    if o.emulator {
        let emu = Emulator::start(EmulatorConfig::default())
            .map_err(|e| Error::Internal(format!("cannot start the emulator: {e}")))?;
        eprintln!("using the bundled local emulator at {}", emu.url());
        params = params.url(emu.url()).api_key("emulator");
        emulator = Some(emu);
    } else {
        if let Some(u) = &o.url {
            params = params.url(u.clone());
        }
        if let Some(k) = &o.api_key {
            params = params.api_key(k.clone());
        }
        for path in &o.ca_certs {
            let pem = std::fs::read(path).unwrap_or_else(|e| fail(&format!("--ca-cert {path}"), e));
            params = params.root_certificate(pem);
        }
    }
    let conv = Conversation::start(params, config)?;
    Ok((conv, emulator))
}

/// Shows events: JSON lines, or on a terminal one live line with the current partial
/// (confirmed text, then the provisional stash dimmed) and each completed transcript on a
/// line of its own. Errors and the library's own events go to stderr.
pub struct Display {
    json: bool,
    tty: bool,
    live: bool,
}

impl Display {
    pub fn new(json: bool) -> Display {
        Display {
            json,
            tty: std::io::stdout().is_terminal(),
            live: false,
        }
    }

    pub fn show(&mut self, event: &Event) {
        let mut out = std::io::stdout().lock();
        if self.json {
            let _ = writeln!(out, "{}", event.to_json_line());
            let _ = out.flush();
            return;
        }
        match &event.kind {
            EventKind::Partial(p) if self.tty => {
                let _ = write!(out, "\r\x1b[2K{}\x1b[2m{}\x1b[0m", p.text, p.stash);
                self.live = true;
            }
            EventKind::Completed(c) => {
                if self.live {
                    let _ = write!(out, "\r\x1b[2K");
                    self.live = false;
                }
                let _ = writeln!(out, "{}", c.transcript);
            }
            EventKind::Error(e) => eprintln!("server error: {e}"),
            EventKind::Failed(f) => eprintln!("transcription failed: {}", f.error),
            EventKind::Malformed { reason } => eprintln!("malformed event: {reason}"),
            EventKind::AudioDropped { ms, reason } => eprintln!("lost {ms} ms of audio: {reason}"),
            EventKind::CaptureOverrun { count, gap_ms } => {
                eprintln!("capture overrun #{count}: about {gap_ms} ms of audio missing")
            }
            EventKind::CaptureError { message } => eprintln!("capture stopped: {message}"),
            EventKind::LinkBehind { behind_ms } => {
                eprintln!("the link is {behind_ms} ms behind real time")
            }
            EventKind::LinkCaughtUp { max_behind_ms } => {
                eprintln!("the link caught up (it was up to {max_behind_ms} ms behind)")
            }
            EventKind::Reconnected {
                attempt,
                replayed_ms,
                code,
                reason,
                ..
            } => eprintln!(
                "reconnected (attempt {attempt}) after the connection ended ({code} {reason}); \
                 {replayed_ms} ms replayed"
            ),
            EventKind::Closed { code, reason } if *code != 1000 => {
                eprintln!("connection closed: {code} {reason}")
            }
            _ => {}
        }
        let _ = out.flush();
    }
}

/// Shows the conversation's events on a thread of its own, up to `client.closed` (always the
/// library's last event); [`finish`] waits for it.
pub struct Printer {
    /// Receives, when the thread is done, whether it showed `client.closed`.
    done: mpsc::Receiver<bool>,
}

impl Printer {
    /// Starts the thread.
    pub fn spawn(conv: &Conversation, json: bool) -> Printer {
        let events = match conv.take_events() {
            Ok(events) => events,
            Err(e) => fail("cannot read the events", e),
        };
        let (done_tx, done) = mpsc::channel();
        let started = std::thread::Builder::new()
            .name("printer".into())
            .spawn(move || {
                let mut display = Display::new(json);
                let mut closed = false;
                for event in events.iter() {
                    display.show(&event);
                    if matches!(event.kind, EventKind::Closed { .. }) {
                        closed = true;
                        break;
                    }
                }
                let _ = done_tx.send(closed);
            });
        if let Err(e) = started {
            fail("cannot start the printer thread", e);
        }
        Printer { done }
    }
}

/// How long [`finish`] waits for the printer to show the last events once the conversation
/// is closed. They are already queued by then (closing joins the library's I/O thread), so
/// this only bounds a stuck terminal or pipe.
pub const PRINTER_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Ends a run however it went: closes the conversation (the library reports audio without
/// a transcript as `client.audio_dropped`, then `client.closed`), waits up to
/// [`PRINTER_DRAIN_TIMEOUT`] for the printer to show those events, and only then reports
/// `outcome`'s error on stderr and exits 1. Exiting first would cut the output short of
/// those last events. Also exits 1, with a warning, if the events did not end with
/// `client.closed`. Returns on success.
pub fn finish(conv: Conversation, printer: Printer, outcome: Result<(), String>) {
    drop(conv);
    let complete = match printer.done.recv_timeout(PRINTER_DRAIN_TIMEOUT) {
        Ok(true) => true,
        Ok(false) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            eprintln!("warning: the event stream ended without client.closed");
            false
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            eprintln!(
                "warning: the last events were not all shown within {PRINTER_DRAIN_TIMEOUT:?}"
            );
            false
        }
    };
    if let Err(e) = outcome {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    if !complete {
        std::process::exit(1);
    }
}

/// `"{what}: {e}"`, the error line [`finish`] prints.
pub fn failure(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// `end_session` with the SDKs' 20 s default.
pub const END_SESSION_TIMEOUT: Duration = Duration::from_secs(20);

/// Prints a one-line error and exits 1: for errors before a conversation exists (once one
/// does, [`finish`] reports them after its last events).
pub fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("error: {what}: {e}");
    std::process::exit(1);
}
