//! The example programs as a user runs them: the built binaries, started as child processes,
//! against an emulator in this process.
//!
//! `cargo test` builds the examples (into `<target>/<profile>/examples/`) before it runs any
//! test; `cargo test --test examples` alone does not, so each binary is checked to be newer
//! than its sources. Under a cross build's runner (qemu-user, set by
//! `CARGO_TARGET_<TRIPLE>_RUNNER` as for the tests themselves) the children are started through
//! the same runner.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{le_bytes, start_emulator, utterances};
use qwen_asr_emulator::{EmulatorConfig, Fault, FaultAction};
use qwen_asr_realtime::audio::wav;

/// A child that takes longer than this is killed and the test fails. Generous: under qemu an
/// example's start-up alone takes seconds.
const CHILD_LIMIT: Duration = Duration::from_secs(180);

/// Whether `bin` is older than any source file it was built from, by the dependency list
/// cargo writes next to it (`bin.d`, the list cargo itself checks to decide on a rebuild).
fn stale(bin: &Path, built: SystemTime) -> Option<String> {
    let deps = std::fs::read_to_string(bin.with_extension("d")).ok()?;
    let (_, sources) = deps.lines().next()?.split_once(": ")?;
    sources
        .split_whitespace()
        .find(|src| {
            std::fs::metadata(src)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > built)
        })
        .map(str::to_owned)
}

/// A command for the example `name`, built by this `cargo test`.
fn example(name: &str) -> Command {
    let me = std::env::current_exe().unwrap();
    // <target>[/<triple>]/<profile>/deps/examples-HASH
    let profile_dir = me.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("examples").join(name);
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
            "{}: {e}: `cargo test` builds the examples, `cargo test --test examples` alone does \
             not (run `cargo build --examples` first)",
            bin.display()
        )
        });
    if let Some(src) = stale(&bin, built) {
        panic!(
            "{} is older than {src}: `cargo test` rebuilds it, `cargo test --test examples` \
             alone does not (run `cargo build --examples` first)",
            bin.display()
        );
    }
    // A cross build's test runs under the runner cargo was given for the target; so must its
    // children, or their exec fails with "Exec format error".
    let triple = profile_dir.parent().and_then(Path::file_name).unwrap();
    let var = format!(
        "CARGO_TARGET_{}_RUNNER",
        triple
            .to_string_lossy()
            .to_uppercase()
            .replace(['-', '.'], "_")
    );
    let mut cmd = match std::env::var(&var) {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut words = runner.split_whitespace();
            let mut c = Command::new(words.next().unwrap());
            c.args(words).arg(&bin);
            c
        }
        _ => Command::new(&bin),
    };
    // Whatever key the machine has must not decide what the example does.
    cmd.env_remove("DASHSCOPE_API_KEY")
        .env_remove("DASHSCOPE_API_KEY_FILE_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to its end, within [`CHILD_LIMIT`].
fn run(mut cmd: Command) -> Run {
    let mut child = cmd.spawn().expect("start the example");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + CHILD_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not end within {CHILD_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A scratch directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qwen-asr-examples-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a 16 kHz mono WAV of `utterances` tone bursts; its header claims `claim_factor`
/// times the data it holds.
fn write_wav(path: &Path, count: usize, claim_factor: u32) {
    let data = le_bytes(&utterances(16000, count));
    let mut file = wav::header(16000, 1, data.len() as u32 * claim_factor).to_vec();
    file.extend_from_slice(&data);
    std::fs::write(path, file).unwrap();
}

fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

fn event_type(line: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line: {line:?}: {e}"));
    v["type"].as_str().unwrap_or("").to_owned()
}

/// The connection dies under the example, which does not reconnect, so it fails: its
/// `--json` output still ends with the library's last event, `client.closed`, and it exits
/// non-zero. The exit used to race the printer thread; each way to die is tried, and a few
/// points in the stream.
#[test]
fn json_output_ends_with_client_closed_when_the_connection_dies() {
    let dir = scratch("dies");
    let wav = dir.join("speech.wav");
    // 20 ms chunks of 22 s of audio: far more appends than the send queue holds, so the
    // example is blocked in an append when the connection dies.
    write_wav(&wav, 10, 1);
    let cases = [
        (FaultAction::Drop, 3),
        (FaultAction::Reset, 3),
        (FaultAction::Drop, 40),
        (FaultAction::Reset, 200),
    ];
    for (action, n) in cases {
        let emulator = start_emulator(EmulatorConfig {
            faults: vec![Fault::AfterAppends {
                n,
                action: action.clone(),
            }],
            ..EmulatorConfig::default()
        });
        let mut cmd = example("transcribe_file");
        cmd.args(["--url", &emulator.url(), "--api-key", "test"])
            .args(["--no-reconnect", "--json", "--chunk-ms", "20"])
            .arg(&wav);
        let r = run(cmd);
        let case = format!(
            "{action:?} after {n} appends:\nstdout:\n{}\nstderr:\n{}",
            r.stdout, r.stderr
        );
        assert!(!r.status.success(), "exited {}: {case}", r.status);
        assert_eq!(event_type(last_line(&r.stdout)), "client.closed", "{case}");
        assert!(
            last_line(&r.stderr).starts_with("error: "),
            "the error is reported last: {case}"
        );
        emulator.shutdown();
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// No key anywhere (environment, key file, `--api-key`) and no `--emulator`: one line that
/// says what to set and that `--emulator` exists, and a failure exit, not a quiet run
/// against the emulator that looks like success.
#[test]
fn no_key_and_no_emulator_flag_fails_with_one_line_naming_the_variable() {
    let home = scratch("nokey-home");
    let wav = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/audio/hello_16k.wav");
    let mut names = vec![("transcribe_file", vec![wav])];
    if cfg!(feature = "alsa") {
        names.push(("mic", vec!["--seconds", "1"]));
    }
    for (name, args) in names {
        let mut cmd = example(name);
        cmd.args(&args).env("HOME", &home);
        let r = run(cmd);
        let case = format!("{name}:\nstdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
        assert!(!r.status.success(), "exited {}: {case}", r.status);
        assert_eq!(r.stderr.trim_end().lines().count(), 1, "one line: {case}");
        assert!(r.stderr.contains("DASHSCOPE_API_KEY"), "{case}");
        assert!(r.stderr.contains("--emulator"), "{case}");
        assert!(r.stdout.is_empty(), "{case}");
    }
    std::fs::remove_dir_all(&home).ok();
}

/// A WAV whose header claims more audio than the file holds: what is there is streamed, and
/// the user is told the file was cut short.
#[test]
fn a_truncated_wav_is_streamed_with_a_warning() {
    let dir = scratch("truncated");
    let wav = dir.join("cut.wav");
    write_wav(&wav, 1, 3);
    let mut cmd = example("transcribe_file");
    cmd.args(["--emulator", "--json"]).arg(&wav);
    let r = run(cmd);
    let case = format!("stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.status.success(), "exited {}: {case}", r.status);
    assert!(
        r.stderr
            .lines()
            .any(|l| l.starts_with("warning: ") && l.contains("truncated")),
        "{case}"
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| event_type(l) == "conversation.item.input_audio_transcription.completed"),
        "what the file holds is transcribed: {case}"
    );
    assert_eq!(event_type(last_line(&r.stdout)), "client.closed", "{case}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `--format opus`: with the feature, the file goes up as Ogg Opus (the session says so) and
/// is transcribed; without it, the option is refused in one line naming the feature, before
/// anything connects.
#[test]
fn transcribe_file_format_opus_runs_with_the_feature_and_is_refused_without() {
    let wav = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/audio/hello_16k.wav");
    let mut cmd = example("transcribe_file");
    cmd.args([
        "--emulator",
        "--json",
        "--mode",
        "manual",
        "--format",
        "opus",
        "--opus-bitrate",
        "16000",
        wav,
    ]);
    let r = run(cmd);
    let case = format!("stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    if cfg!(feature = "opus") {
        assert!(r.status.success(), "exited {}: {case}", r.status);
        assert!(
            r.stdout.lines().any(|l| event_type(l) == "session.updated"
                && l.contains(r#""input_audio_format":"opus""#)),
            "{case}"
        );
        assert!(
            r.stdout
                .lines()
                .any(|l| event_type(l) == "conversation.item.input_audio_transcription.completed"),
            "{case}"
        );
        assert_eq!(event_type(last_line(&r.stdout)), "client.closed", "{case}");
    } else {
        assert_eq!(r.status.code(), Some(2), "{case}");
        assert_eq!(r.stderr.trim_end().lines().count(), 1, "one line: {case}");
        assert!(r.stderr.contains("feature `opus`"), "{case}");
        assert!(r.stdout.is_empty(), "{case}");
    }
}

#[cfg(all(feature = "gate", feature = "alsa"))]
#[path = "gate_support/mod.rs"]
mod gate_support;

/// `mic --gate` captures through ALSA (a file-backed device) and puts the speech gate
/// between the capture thread and the conversation. The gate runs on the audio timeline, so
/// it must send exactly what `transcribe_file --gate` sends from the same audio: the same
/// utterances, with the same samples (the emulator's transcripts name their length and
/// CRC-32), and with `--json` the gate's openings and closings in the stream.
#[cfg(all(feature = "gate", feature = "alsa"))]
#[test]
fn mic_with_the_gate_sends_what_transcribe_file_with_the_gate_sends() {
    use gate_support::{scene, Noise};
    let dir = scratch("mic-gate");
    let s = scene(Noise::Room, 14.0, &[2.0, 8.0], None, 7);
    let data = le_bytes(&s.pcm);
    let wav_path = dir.join("scene.wav");
    let mut file = wav::header(16000, 1, data.len() as u32).to_vec();
    file.extend_from_slice(&data);
    std::fs::write(&wav_path, file).unwrap();
    let raw = dir.join("scene.raw");
    std::fs::write(&raw, &data).unwrap();
    std::fs::create_dir_all(dir.join("xdg/alsa")).unwrap();
    std::fs::write(
        dir.join("xdg/alsa/asoundrc"),
        format!(
            "pcm.scene {{ type file slave.pcm \"null\" file \"/dev/null\" infile \"{}\" format \"raw\" }}\n",
            raw.display()
        ),
    )
    .unwrap();
    let seconds = format!("{:.3}", s.pcm.len() as f64 / 16000.0);

    let mut file_cmd = example("transcribe_file");
    file_cmd.args(["--emulator", "--gate"]).arg(&wav_path);
    let from_file = run(file_cmd);
    let mut mic_cmd = example("mic");
    mic_cmd
        .args([
            "--emulator",
            "--gate",
            "--device",
            "scene",
            "--seconds",
            &seconds,
        ])
        .env("XDG_CONFIG_HOME", dir.join("xdg"));
    let from_mic = run(mic_cmd);
    let case = format!(
        "file:\n{}{}\nmic:\n{}{}",
        from_file.stdout, from_file.stderr, from_mic.stdout, from_mic.stderr
    );
    assert!(
        from_file.status.success() && from_mic.status.success(),
        "{case}"
    );
    assert_eq!(
        from_file.stdout.lines().count(),
        2,
        "two utterances: {case}"
    );
    assert_eq!(from_file.stdout, from_mic.stdout, "{case}");
    // The summary: less than the whole was sent, and nothing was dropped.
    let summary = from_mic
        .stderr
        .lines()
        .find(|l| l.starts_with("gate: "))
        .unwrap_or_else(|| panic!("no gate summary: {case}"));
    let share: f64 = summary
        .split(" ms (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no share in {summary:?}"));
    assert!(share > 10.0 && share < 80.0, "{summary}");
    assert!(summary.contains("dropped 0 ms"), "{summary}");

    let mut json_cmd = example("mic");
    json_cmd
        .args(["--emulator", "--gate", "--json", "--device", "scene"])
        .args(["--seconds", &seconds])
        .env("XDG_CONFIG_HOME", dir.join("xdg"));
    let json = run(json_cmd);
    let types: Vec<String> = json.stdout.lines().map(event_type).collect();
    let gate_events: Vec<&str> = types
        .iter()
        .map(String::as_str)
        .filter(|t| t.starts_with("client.gate_"))
        .collect();
    assert_eq!(
        gate_events,
        [
            "client.gate_opened",
            "client.gate_closed",
            "client.gate_opened",
            "client.gate_closed"
        ],
        "{}",
        json.stdout
    );
    assert_eq!(types.last().map(String::as_str), Some("client.closed"));
    std::fs::remove_dir_all(&dir).ok();
}
