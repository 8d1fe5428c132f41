//! The speech gate's cost: CPU per audio second (and, with valgrind, instructions per audio
//! second) on fixtures built in memory, with the share of the audio each one forwards; and
//! with `--onset`, the wall-clock time from an onset to its first partial transcript against
//! the emulator on loopback, with the idle close on (a new session must be opened first) and
//! off. Run with `--help`.

#[path = "../../../tests/gate_support/mod.rs"]
mod gate_support;

use std::process::Command;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use gate_support::{clips, level_dbfs, long_scene, noise, Noise};
use qwen_asr_emulator::{Emulator, EmulatorConfig};
use qwen_asr_realtime::audio::resample::Resampler;
use qwen_asr_realtime::gate::{Gate, GateConfig, GatedSender, Output};
use qwen_asr_realtime::{ConnectParams, Conversation, EventKind, SessionConfig};

const USAGE: &str = "\
gate_bench: CPU and instructions per audio second of the speech gate

usage:
  cargo run --release -p qwen-asr-bench --features gate --bin gate_bench -- [OPTIONS]

Each scenario is built in memory, then gated in 100 ms chunks; the figure is the thread's
CPU time (CLOCK_THREAD_CPUTIME_ID) over the best of --repeat runs, divided by the audio
length. With valgrind on the PATH the instructions are counted too (callgrind, on a
shorter run): a run that builds the scenario and gates it, less one that only builds it.

scenarios:
  near-silence   white noise at -70 dBFS: below the energy floor, the network never runs
  room           room noise at -50 dBFS: steady, so the network rarely runs
  fan            brown noise at -35 dBFS: it fluctuates, so the network runs on every frame
                 (the steady worst case)
  day            room noise with 10 % speech (espeak-ng clips): the README's fixture
  day-8k         the same at 8 kHz (the detector runs on a 16 kHz copy)

With --onset, instead: onset to first partial on loopback (the emulator, partials every
100 ms of speech). Each trial feeds silence until the gate is idle (with the idle close on,
until the session has been closed), then a spoken clip at real time in 100 ms chunks; the
figure runs from handing over the chunk on which the gate opened to the first partial
transcript's arrival. With the idle close on, that includes opening a new session.

options:
  --onset               measure onset to first partial (idle close on and off)
  --onset-trials N      trials per mode (default 10)
  --seconds N           audio per scenario (default 600)
  --repeat N            runs per scenario, the fastest kept (default 3)
  --scenario NAME       only this scenario (repeatable; default all)
  --no-callgrind        skip the instruction counts
  --callgrind-seconds N audio per scenario under valgrind (default 60)
  -h, --help            this text
";

const SCENARIOS: [&str; 5] = ["near-silence", "room", "fan", "day", "day-8k"];
const CHUNK_MS: usize = 100;

struct Options {
    onset: bool,
    onset_trials: usize,
    seconds: f64,
    repeat: usize,
    scenarios: Vec<String>,
    callgrind: bool,
    callgrind_seconds: f64,
    /// Internal: run one scenario once, for valgrind.
    child: bool,
    /// Internal, with `child`: build the scenario but do not gate it (the baseline).
    build_only: bool,
}

fn parse() -> Options {
    let mut o = Options {
        onset: false,
        onset_trials: 10,
        seconds: 600.0,
        repeat: 3,
        scenarios: Vec::new(),
        callgrind: true,
        callgrind_seconds: 60.0,
        child: false,
        build_only: false,
    };
    let mut args = std::env::args().skip(1);
    let number = |v: Option<String>, flag: &str| -> f64 {
        match v.as_deref().map(str::parse::<f64>) {
            Some(Ok(n)) if n > 0.0 && n.is_finite() => n,
            _ => usage_error(&format!("{flag} needs a positive number")),
        }
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--seconds" => o.seconds = number(args.next(), "--seconds"),
            "--repeat" => o.repeat = number(args.next(), "--repeat") as usize,
            "--callgrind-seconds" => {
                o.callgrind_seconds = number(args.next(), "--callgrind-seconds")
            }
            "--no-callgrind" => o.callgrind = false,
            "--onset" => o.onset = true,
            "--onset-trials" => o.onset_trials = number(args.next(), "--onset-trials") as usize,
            "--child" => o.child = true,
            "--build-only" => o.build_only = true,
            "--scenario" => match args.next() {
                Some(s) if SCENARIOS.contains(&s.as_str()) => o.scenarios.push(s),
                other => usage_error(&format!("unknown scenario {other:?}")),
            },
            other => usage_error(&format!("unknown option {other}")),
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios = SCENARIOS.iter().map(|s| s.to_string()).collect();
    }
    o.repeat = o.repeat.max(1);
    o
}

fn usage_error(message: &str) -> ! {
    eprintln!("gate_bench: {message}\n\n{USAGE}");
    std::process::exit(2);
}

/// The scenario's audio and rate.
fn build(name: &str, seconds: f64) -> (Vec<i16>, u32) {
    match name {
        "near-silence" => (noise(Noise::NearSilence, seconds, 1), 16_000),
        "room" => (noise(Noise::Room, seconds, 2), 16_000),
        "fan" => (noise(Noise::Fan, seconds, 3), 16_000),
        "day" => (long_scene(seconds / 60.0, 0.10, 5).pcm, 16_000),
        "day-8k" => {
            let pcm = long_scene(seconds / 60.0, 0.10, 5).pcm;
            let mut down = Resampler::new(16_000, 1, 8_000).expect("16 kHz to 8 kHz");
            let mut out = Vec::new();
            down.process(&pcm, &mut out);
            (out, 8_000)
        }
        _ => unreachable!("checked in parse"),
    }
}

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Gates `pcm` once; returns the gate (for its counters) and the CPU seconds it took.
fn gate_once(pcm: &[i16], rate: u32) -> (Gate, f64) {
    let config = GateConfig::for_session(&SessionConfig::vad().sample_rate(rate));
    let mut gate = Gate::new(config, rate).unwrap_or_else(|e| {
        eprintln!("gate_bench: {e}");
        std::process::exit(1)
    });
    let chunk = rate as usize * CHUNK_MS / 1000;
    let mut forwarded = 0usize;
    let mut emit = |o: Output<'_>| {
        if let Output::Audio { samples, .. } = o {
            forwarded += samples.len();
        }
    };
    let t = thread_cpu_seconds();
    for piece in pcm.chunks(chunk) {
        run_gate(&mut gate, piece, &mut emit);
    }
    gate.finish(&mut emit);
    let cpu = thread_cpu_seconds() - t;
    assert_eq!(forwarded as u64, gate.counters().forwarded_samples);
    (gate, cpu)
}

// Not inlined, so that callgrind can collect this function's cost alone.
#[inline(never)]
fn run_gate(gate: &mut Gate, pcm: &[i16], emit: &mut impl FnMut(Output<'_>)) {
    gate.process(pcm, emit);
}

/// Instructions of gating `seconds` of the scenario: a callgrind run that builds and gates
/// it less one that only builds it (the release build has no symbols to select by).
fn instructions(name: &str, seconds: f64) -> Option<u64> {
    let with = callgrind_total(name, seconds, false)?;
    let without = callgrind_total(name, seconds, true)?;
    with.checked_sub(without)
}

fn callgrind_total(name: &str, seconds: f64, build_only: bool) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let out = std::env::temp_dir().join(format!(
        "gate_bench.{}.{name}.{build_only}.callgrind",
        std::process::id()
    ));
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .args([
            "--child",
            "--scenario",
            name,
            "--seconds",
            &seconds.to_string(),
        ]);
    if build_only {
        cmd.arg("--build-only");
    }
    let status = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    let text = std::fs::read_to_string(&out).ok();
    let _ = std::fs::remove_file(&out);
    if !status.success() {
        return None;
    }
    text?
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// What the event thread reports, with when it read it.
enum Seen {
    Partial(Instant),
    IdleClosed,
    Completed,
    /// A new session was opened in this many ms.
    Reopened(u64),
}

/// Onset to first partial, in ms, for each trial; and each new session's opening time.
fn onset_trials(idle_close: bool, trials: usize) -> (Vec<f64>, Vec<f64>) {
    let fail = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("gate_bench: {e}");
        std::process::exit(1)
    };
    let emu = Emulator::start(EmulatorConfig {
        partial_interval_ms: 100,
        ..EmulatorConfig::default()
    })
    .unwrap_or_else(|e| fail(&e));
    let session = SessionConfig::vad();
    let params = ConnectParams::new().url(emu.url()).api_key("bench");
    let conv = Conversation::start(params, &session).unwrap_or_else(|e| fail(&e));
    const IDLE_MS: u32 = 2_000;
    let config = GateConfig::for_session(&session);
    let config = if idle_close {
        config.idle_timeout_ms(Some(IDLE_MS))
    } else {
        config.keep_session_open()
    };
    let mut gated = GatedSender::new(conv.audio_sender(), config).unwrap_or_else(|e| fail(&e));
    let events = conv.take_events().unwrap_or_else(|e| fail(&e));
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for e in events.iter() {
            let seen = match e.kind {
                EventKind::Partial(_) => Seen::Partial(Instant::now()),
                EventKind::SessionIdleClosed { .. } => Seen::IdleClosed,
                EventKind::Completed(_) => Seen::Completed,
                EventKind::SessionReopened { connect_ms, .. } => Seen::Reopened(connect_ms),
                _ => continue,
            };
            if tx.send(seen).is_err() {
                break;
            }
        }
    });
    let clips = clips();
    let silence = noise(Noise::Room, f64::from(IDLE_MS) / 1000.0 + 2.0, 7);
    let chunk = 1600;
    let mut out = Vec::new();
    let mut connects = Vec::new();
    let mut note = |seen: &Seen| {
        if let Seen::Reopened(ms) = seen {
            connects.push(*ms as f64);
        }
    };
    for trial in 0..trials {
        // Quiet until idle: the session closed (idle close on), or the last utterance done.
        for piece in silence.chunks(chunk) {
            gated.append_pcm(piece).unwrap_or_else(|e| fail(&e));
        }
        if idle_close || trial > 0 {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(Seen::IdleClosed) if idle_close => break,
                    Ok(Seen::Completed) if !idle_close => break,
                    Ok(_) => {}
                    Err(_) => fail(&"the session did not go idle within 20 s"),
                }
            }
        }
        // The clip, at real time, until its first partial.
        let clip = &clips[trial % clips.len()];
        let start = Instant::now();
        let mut onset = None;
        let mut first_partial = None;
        for (i, piece) in clip.chunks(chunk).enumerate() {
            let due = start + Duration::from_millis(100 * i as u64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let openings = gated.counters().openings;
            let handed = Instant::now();
            gated.append_pcm(piece).unwrap_or_else(|e| fail(&e));
            if onset.is_none() && gated.counters().openings > openings {
                onset = Some(handed);
            }
            while let Ok(seen) = rx.try_recv() {
                note(&seen);
                if let (Seen::Partial(at), Some(_), None) = (seen, onset, first_partial) {
                    first_partial = Some(at);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while first_partial.is_none() && Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Seen::Partial(at)) => first_partial = Some(at),
                Ok(seen) => note(&seen),
                Err(_) => {}
            }
        }
        match (onset, first_partial) {
            (Some(o), Some(p)) => out.push(p.saturating_duration_since(o).as_secs_f64() * 1000.0),
            _ => eprintln!("gate_bench: trial {trial}: no onset or no partial"),
        }
    }
    gated.finish().unwrap_or_else(|e| fail(&e));
    let _ = conv.end_session_default();
    drop(conv);
    let _ = reader.join();
    emu.shutdown();
    (out, connects)
}

fn print_onsets(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        println!("{label:<18} no trial completed");
        return;
    }
    let median = ms[ms.len() / 2];
    println!(
        "{label:<18} {:>6} {:>10.1} {:>10.1} {:>10.1}",
        ms.len(),
        ms[0],
        median,
        ms[ms.len() - 1]
    );
}

fn main() {
    let o = parse();
    if o.onset {
        println!(
            "{:<18} {:>6} {:>10} {:>10} {:>10}",
            "onset to partial", "trials", "min ms", "median ms", "max ms"
        );
        print_onsets("idle close off", onset_trials(false, o.onset_trials).0);
        let (onsets, connects) = onset_trials(true, o.onset_trials);
        print_onsets("idle close on", onsets);
        print_onsets("  new session", connects);
        return;
    }
    if o.child {
        for name in &o.scenarios {
            let (pcm, rate) = build(name, o.seconds);
            if !o.build_only {
                gate_once(&pcm, rate);
            }
        }
        return;
    }
    println!(
        "{:<13} {:>8} {:>9} {:>11} {:>8} {:>9} {:>10} {:>12}",
        "scenario", "audio s", "level", "CPU ms", "ms/s", "sent %", "network %", "instr/s"
    );
    for name in &o.scenarios {
        let (pcm, rate) = build(name, o.seconds);
        let audio_s = pcm.len() as f64 / f64::from(rate);
        let mut best = f64::INFINITY;
        let mut counters = None;
        for _ in 0..o.repeat {
            let (gate, cpu) = gate_once(&pcm, rate);
            best = best.min(cpu);
            counters = Some(gate.counters());
        }
        let c = counters.expect("at least one run");
        let ir = if o.callgrind {
            instructions(name, o.callgrind_seconds.min(o.seconds))
                .map(|ir| format!("{:.0}", ir as f64 / o.callgrind_seconds.min(o.seconds)))
                .unwrap_or_else(|| "-".into())
        } else {
            "-".into()
        };
        println!(
            "{:<13} {:>8.0} {:>9} {:>11.1} {:>8.3} {:>9.1} {:>10.1} {:>12}",
            name,
            audio_s,
            format!("{:.1} dB", level_dbfs(&pcm)),
            best * 1000.0,
            best * 1000.0 / audio_s,
            c.share_forwarded() * 100.0,
            c.detector_frames as f64 / c.frames.max(1) as f64 * 100.0,
            ir
        );
    }
}
