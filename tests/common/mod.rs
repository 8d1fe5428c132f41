//! Helpers shared by the integration tests: audio, certificates, event collection.
#![allow(dead_code)] // each test binary uses its own subset

pub mod forwarder;
pub mod opus_tools;
pub mod signal;

use std::path::Path;
use std::time::{Duration, Instant};

use qwen_asr_emulator::{AudioDigest, Emulator, EmulatorConfig, Fault};
use qwen_asr_realtime::{ConnectParams, Conversation, Event, EventKind, ReconnectPolicy, Timeouts};

/// Every wait in the tests is bounded by this; a hang becomes a failure, not a stuck CI.
pub const WAIT: Duration = Duration::from_secs(20);

/// `ms` of a 440 Hz tone at about -12 dBFS, then `silence_ms` of silence, at `rate`.
pub fn burst(rate: u32, ms: u32, silence_ms: u32) -> Vec<i16> {
    let n = (rate * ms / 1000) as usize;
    let mut v: Vec<i16> = (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
        })
        .collect();
    v.resize(n + (rate * silence_ms / 1000) as usize, 0);
    v
}

/// `count` tone bursts of 1 s, each followed by 1.2 s of silence: `count` utterances for a
/// VAD with the default 800 ms silence duration.
pub fn utterances(rate: u32, count: usize) -> Vec<i16> {
    (0..count).flat_map(|_| burst(rate, 1000, 1200)).collect()
}

pub fn le_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

pub fn digest(samples: &[i16]) -> AudioDigest {
    AudioDigest::of(&le_bytes(samples))
}

/// The samples of a mono WAV file, which must be at `rate` Hz.
pub fn wav_samples(path: &Path, rate: u32) -> Vec<i16> {
    let mut r = qwen_asr_realtime::audio::wav::WavReader::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(r.spec().sample_rate, rate, "{}", path.display());
    assert_eq!(r.spec().channels, 1, "{}", path.display());
    let mut out = Vec::new();
    let mut buf = [0i16; 4096];
    loop {
        let n = r.read_samples(&mut buf).expect("read WAV");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The samples of the WAV shipped for the README's main command (16 kHz mono speech).
pub fn shipped_wav_samples() -> Vec<i16> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/audio/hello_16k.wav");
    wav_samples(Path::new(path), 16_000)
}

pub fn start_emulator(config: EmulatorConfig) -> Emulator {
    Emulator::start(config).expect("start emulator")
}

/// An emulator configuration that records audio, with `faults` on its first session only (the
/// replay on the next session must not trip them again).
pub fn recording(faults: Vec<Fault>) -> EmulatorConfig {
    EmulatorConfig {
        faults,
        fault_sessions: Some(1),
        record_audio: true,
        ..Default::default()
    }
}

/// Parameters for an emulator: its URL, a key, and short timeouts.
pub fn params_for(emu: &Emulator) -> ConnectParams {
    let mut t = Timeouts::default();
    t.connect = Duration::from_secs(5);
    t.handshake = Duration::from_secs(5);
    t.session_created = Duration::from_secs(5);
    t.session_updated = Duration::from_secs(5);
    ConnectParams::new()
        .url(emu.url())
        .api_key("test-key")
        .timeouts(t)
}

/// A reconnect policy for loopback: quick retries (20 ms, at most 200 ms apart), 20 of them.
pub fn fast_reconnect() -> ReconnectPolicy {
    let mut p = ReconnectPolicy::default();
    p.initial_backoff = Duration::from_millis(20);
    p.max_backoff = Duration::from_millis(200);
    p.max_attempts = 20;
    p
}

/// Reads events until `client.closed` (included) or the stream ends, bounded by [`WAIT`].
pub fn collect_until_closed(conv: &Conversation) -> Vec<Event> {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match conv.recv_timeout(left) {
            Ok(e) => {
                let closed = matches!(e.kind, EventKind::Closed { .. });
                out.push(e);
                if closed {
                    return out;
                }
            }
            Err(_) => return out,
        }
    }
    panic!("no client.closed within {WAIT:?}; got {:?}", types(&out));
}

pub fn types(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.type_name().to_owned()).collect()
}

/// The milliseconds the `client.audio_dropped` events among `events` report.
pub fn dropped_ms(events: &[Event]) -> u64 {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::AudioDropped { ms, .. } => Some(*ms),
            _ => None,
        })
        .sum()
}

pub fn transcripts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Completed(c) => Some(c.transcript.clone()),
            _ => None,
        })
        .collect()
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made now: (cert PEM, key PEM).
pub fn self_signed_cert() -> (Vec<u8>, Vec<u8>) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509NameBuilder, X509};

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (
        b.build().to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
}

/// The names of this process's threads (from /proc), to prove ours are gone.
pub fn thread_names() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}
