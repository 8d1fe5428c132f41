//! Live transcripts from an ALSA microphone. Run with `--help` for the options.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use qwen_asr_realtime::{CaptureConfig, Conversation, Error};

const USAGE: &str = "\
mic: live transcripts from an ALSA microphone with Qwen-ASR-Realtime

usage: cargo run --release --example mic -- [OPTIONS]

Ctrl-C ends the session gracefully (the last utterance is still transcribed). In manual
mode, press Enter to commit what was said since the last Enter (push-to-talk).

options:
  --device NAME      ALSA capture device (default: default; see `arecord -L`, e.g. plughw:1,0)
  --seconds N        stop after N seconds of audio (default: until Ctrl-C)
";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Waits up to `timeout` for a line on stdin; true if Enter was pressed.
fn enter_pressed(timeout: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) } > 0;
    if !ready {
        return false;
    }
    let mut line = String::new();
    // EOF (stdin closed) reads 0 bytes: not a commit, and poll would report it again, so
    // treat it as no input from now on by sleeping the rest of the timeout.
    match std::io::stdin().read_line(&mut line) {
        Ok(n) if n > 0 => true,
        _ => {
            std::thread::sleep(timeout);
            false
        }
    }
}

fn main() {
    let usage = format!("{USAGE}{}{}", common::GATE_OPTIONS, common::COMMON_OPTIONS);
    let opts = common::parse_args(&usage, &["--gate"], &["--device", "--seconds"]);
    if !opts.positional.is_empty() {
        eprintln!(
            "error: unexpected argument {:?} (see --help)",
            opts.positional[0]
        );
        std::process::exit(2);
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    let config = common::session_config(&opts, 16000);
    let (conv, _emulator) =
        common::connect(&opts, &config).unwrap_or_else(|e| common::fail("connect", e));
    let printer = common::Printer::spawn(&conv, opts.json);
    let outcome = capture(&conv, &opts);
    common::finish(conv, printer, outcome);
}

/// Captures until Ctrl-C, the `--seconds` limit, a capture error or the end of the
/// connection, then ends the session; the error says what failed.
fn capture(conv: &Conversation, opts: &common::Options) -> Result<(), String> {
    let mut capture_config = CaptureConfig::default().chunk_ms(opts.chunk_ms);
    if let Some(d) = &opts.device {
        capture_config = capture_config.device(d.clone());
    }
    if let Some(s) = opts.seconds {
        capture_config = capture_config.limit_ms((s * 1000.0) as u64);
    }
    let (mut mic, gate) = gate::start(conv, opts, capture_config)?;
    eprintln!("capturing from {}", mic.negotiated());
    if opts.manual {
        eprintln!("manual mode: press Enter to commit what was said");
    }

    // The printer thread shows the events; this one only watches for the end and for Enter.
    let tick = Duration::from_millis(50);
    while !INTERRUPTED.load(Ordering::SeqCst) && mic.is_running() && !conv.is_closed() {
        if !opts.manual {
            std::thread::sleep(tick);
        } else if enter_pressed(tick) {
            match conv.commit() {
                Ok(()) | Err(Error::EmptyCommit) => {}
                Err(e) => eprintln!("commit: {e}"),
            }
        }
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("\nstopping");
    }
    // Stop capturing (what was captured is still sent), then finish the session.
    if let Err(e) = mic.stop() {
        eprintln!("capture ended with an error: {e}");
    }
    if let Some(g) = &gate {
        // An open gate closes (with a commit in manual mode): the last utterance goes out.
        gate::finish(g)?;
    } else if opts.manual {
        match conv.commit() {
            Ok(()) | Err(Error::EmptyCommit) => {}
            Err(e) => eprintln!("commit: {e}"),
        }
    }
    common::end_session_then(conv, || {
        if let Some(g) = &gate {
            gate::summary(g);
        }
    })
}

/// `--gate`: the speech gate between the capture thread and the conversation.
#[cfg(feature = "gate")]
mod gate {
    use qwen_asr_realtime::gate::{GateControl, GatedSink};
    use qwen_asr_realtime::{Capture, CaptureConfig, Conversation};

    /// Starts the capture, through the gate if `--gate` asks for it.
    pub fn start(
        conv: &Conversation,
        opts: &crate::common::Options,
        capture: CaptureConfig,
    ) -> Result<(Capture, Option<GateControl>), String> {
        let mic = |e| crate::common::failure("microphone", e);
        if !opts.gate {
            return Ok((conv.stream_from_microphone(capture).map_err(mic)?, None));
        }
        let session = crate::common::session_config(opts, conv.audio_sender().sample_rate());
        let config = crate::common::gate::config(opts, &session);
        let (sink, control) = GatedSink::new(conv.audio_sender(), config)
            .map_err(|e| crate::common::failure("gate", e))?;
        let capture = capture.sample_rate(control.sample_rate());
        let mic = Capture::start(capture, sink).map_err(mic)?;
        eprintln!("speech gate on: only speech is sent");
        Ok((mic, Some(control)))
    }

    pub fn finish(g: &GateControl) -> Result<(), String> {
        g.finish().map_err(|e| crate::common::failure("gate", e))
    }

    /// The gate's summary on stderr, once the session has ended.
    pub fn summary(g: &GateControl) {
        crate::common::gate::summary(&g.accounting());
    }
}

/// Without the feature `--gate` is refused, and nothing else changes.
#[cfg(not(feature = "gate"))]
mod gate {
    use qwen_asr_realtime::{Capture, CaptureConfig, Conversation};

    pub enum Never {}

    pub fn start(
        conv: &Conversation,
        opts: &crate::common::Options,
        capture: CaptureConfig,
    ) -> Result<(Capture, Option<Never>), String> {
        crate::common::refuse_gate(opts)?;
        let mic = conv
            .stream_from_microphone(capture)
            .map_err(|e| crate::common::failure("microphone", e))?;
        Ok((mic, None))
    }

    pub fn finish(g: &Never) -> Result<(), String> {
        match *g {}
    }

    pub fn summary(g: &Never) {
        match *g {}
    }
}
