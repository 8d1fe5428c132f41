//! Capture through the real alsa-lib without a sound card: ALSA `file` PCMs over `null`
//! whose `infile` is a raw file this test writes (alsa-lib's `file` plugin over the `null` PCM). The `file` PCM is not
//! paced in real time and returns near-silence after its infile ends, so every sink here
//! stops taking audio (answers Closed) before the capture could read past the file's end.
#![cfg(feature = "alsa")]

use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::Duration;

use qwen_asr_emulator::{AudioDigest, Emulator, EmulatorConfig};
use qwen_asr_realtime::audio::resample::Resampler;
use qwen_asr_realtime::capture::{AudioSink, Capture, CaptureConfig, SampleFormat};
use qwen_asr_realtime::{
    AudioSender, ConnectParams, Conversation, Error, EventKind, SessionConfig, TryAppendError,
};

// ---- fixtures --------------------------------------------------------------------------

/// 2 s of speech-like noise at 16 kHz mono: noise through a resonator, in syllable-like
/// bursts, with pauses.
const SPEECH_16K_SAMPLES: usize = 32_000;
/// 1.5 s at 48 kHz stereo: 1 kHz at 10000 (left) and 6000 (right), plus 12 kHz at 3000 on
/// both, which must not survive conversion to 16 kHz (it would alias to 4 kHz).
const TONE_48K_FRAMES: usize = 72_000;
/// 2 s at 16 kHz mono counting 0, 1, 2, ...: every sample says where it was.
const RAMP_16K_SAMPLES: usize = 32_000;

fn speech_16k() -> Vec<i16> {
    let mut seed: u32 = 0x2545_f491;
    let mut noise = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        f64::from(seed >> 8) / f64::from(1u32 << 24) - 0.5
    };
    let (mut y1, mut y2) = (0.0, 0.0);
    (0..SPEECH_16K_SAMPLES)
        .map(|i| {
            let t = i as f64 / 16_000.0;
            // A formant wandering between 400 and 1400 Hz.
            let f = 900.0 + 500.0 * (2.0 * PI * 1.3 * t).sin();
            let r: f64 = 0.97;
            let y = noise() + 2.0 * r * (2.0 * PI * f / 16_000.0).cos() * y1 - r * r * y2;
            (y2, y1) = (y1, y);
            // Four syllables a second, silent a quarter of the time.
            let env = (2.0 * PI * 4.0 * t).sin().max(0.0).powf(0.7);
            (y * env * 900.0).clamp(-32_000.0, 32_000.0) as i16
        })
        .collect()
}

fn tone_48k_stereo() -> Vec<i16> {
    let mut v = Vec::with_capacity(TONE_48K_FRAMES * 2);
    for i in 0..TONE_48K_FRAMES {
        let t = i as f64 / 48_000.0;
        let a = (2.0 * PI * 1000.0 * t + 0.3).sin();
        let hi = 3000.0 * (2.0 * PI * 12_000.0 * t).sin();
        v.push((10_000.0 * a + hi).round() as i16);
        v.push((6_000.0 * a + hi).round() as i16);
    }
    v
}

fn ramp_16k() -> Vec<i16> {
    (0..RAMP_16K_SAMPLES as i16).collect()
}

fn write_raw(path: &Path, samples: &[i16]) {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn fixture_dir() -> PathBuf {
    std::env::temp_dir().join(format!("qwen-capture-test-{}", std::process::id()))
}

/// Removes the fixture directories of earlier runs whose process is gone.
fn remove_stale_fixture_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("qwen-capture-test-"))
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Writes the fixtures and the asoundrc and points alsa-lib at it, once per process and
/// before any ALSA call; returns the lock every test holds (the thread-count test must not
/// see another test's capture thread).
fn setup() -> MutexGuard<'static, ()> {
    static ONCE: Once = Once::new();
    static LOCK: Mutex<()> = Mutex::new(());
    ONCE.call_once(|| {
        remove_stale_fixture_dirs();
        let dir = fixture_dir();
        std::fs::create_dir_all(dir.join("alsa")).unwrap();
        let speech = dir.join("speech16k.raw");
        let tone = dir.join("tone48k_stereo.raw");
        let ramp = dir.join("ramp16k.raw");
        write_raw(&speech, &speech_16k());
        write_raw(&tone, &tone_48k_stereo());
        write_raw(&ramp, &ramp_16k());
        let file_pcm = |name: &str, infile: &Path| {
            format!(
                "pcm.{name} {{\n  type file\n  slave.pcm \"null\"\n  file \"/dev/null\"\n  \
                 infile \"{}\"\n  format \"raw\"\n}}\n",
                infile.display()
            )
        };
        let mut rc = String::new();
        rc += &file_pcm("qwen_speech16k", &speech);
        rc += &file_pcm("qwen_ramp16k", &ramp);
        rc += &file_pcm("qwen_tone48k_raw", &tone);
        // Like a USB microphone on plughw: only 48 kHz stereo. With the capture's default
        // (no rate or channel conversion by plug) it must refuse 16 kHz mono; plug only
        // passes the bytes through (plug *resampling* a file PCM scrambles them, §3).
        rc += "pcm.qwen_usb48k {\n  type plug\n  slave {\n    pcm \"qwen_tone48k_raw\"\n    \
               format S16_LE\n    rate 48000\n    channels 2\n  }\n}\n";
        std::fs::write(dir.join("alsa/asoundrc"), rc).unwrap();
        // Read by alsa.conf: $XDG_CONFIG_HOME/alsa/asoundrc, next to the user's own config.
        std::env::set_var("XDG_CONFIG_HOME", &dir);
    });
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- a sink that records -----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Chunk(Vec<i16>),
    Event(EventKind),
}

#[derive(Clone)]
struct Recorder {
    log: Arc<Mutex<Vec<Item>>>,
    taken: Arc<Mutex<usize>>,
    /// Answers Closed once this many samples were taken (None: takes everything, keeps
    /// nothing).
    limit: Option<usize>,
    /// Answers Full this many more times first.
    refuse: Arc<Mutex<u32>>,
}

impl Recorder {
    fn new(limit: Option<usize>) -> Recorder {
        Recorder {
            log: Arc::default(),
            taken: Arc::default(),
            limit,
            refuse: Arc::default(),
        }
    }

    fn items(&self) -> Vec<Item> {
        self.log.lock().unwrap().clone()
    }

    fn samples(&self) -> Vec<i16> {
        let mut v = Vec::new();
        for item in self.items() {
            if let Item::Chunk(c) = item {
                v.extend(c);
            }
        }
        v
    }

    fn events(&self) -> Vec<EventKind> {
        self.items()
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(e),
                Item::Chunk(_) => None,
            })
            .collect()
    }
}

impl AudioSink for Recorder {
    fn try_append(&self, samples: &[i16]) -> Result<(), TryAppendError> {
        {
            let mut refuse = self.refuse.lock().unwrap();
            if *refuse > 0 {
                *refuse -= 1;
                return Err(TryAppendError::Full);
            }
        }
        let mut taken = self.taken.lock().unwrap();
        match self.limit {
            Some(limit) if *taken >= limit => Err(TryAppendError::Other(Error::Closed {
                code: None,
                reason: String::new(),
            })),
            Some(_) => {
                *taken += samples.len();
                self.log.lock().unwrap().push(Item::Chunk(samples.to_vec()));
                Ok(())
            }
            None => {
                *taken += samples.len();
                Ok(())
            }
        }
    }

    fn try_notify(&self, kind: &EventKind) -> Result<(), TryAppendError> {
        self.log.lock().unwrap().push(Item::Event(kind.clone()));
        Ok(())
    }
}

/// Waits (bounded) for the capture thread to end by itself, then joins it.
fn finish(capture: &mut Capture) {
    finish_or(capture, || {});
}

/// Like `finish`, calling `unblock` before failing (so that dropping the capture can join).
fn finish_or(capture: &mut Capture, unblock: impl FnOnce()) {
    for _ in 0..3000 {
        if !capture.is_running() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if capture.is_running() {
        unblock();
        panic!("the capture did not end by itself: {:?}", capture.stats());
    }
    capture.stop().unwrap();
}

fn read_raw(path: &Path) -> Vec<i16> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn rms(v: &[i16]) -> f64 {
    (v.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

fn zero_crossings(v: &[i16]) -> usize {
    v.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count()
}

/// Polls (bounded) until `capture_threads()` is `n`: a new thread names itself once it
/// runs, and an exited one may stay listed for a moment after the join.
fn capture_threads_become(n: usize) -> bool {
    (0..1000).any(|_| {
        if capture_threads() == n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
        false
    })
}

fn capture_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == "qwen-capture")
        .count()
}

// ---- tests ------------------------------------------------------------------------------

#[test]
fn samples_arrive_byte_for_byte_and_in_order() {
    let _lock = setup();
    let sink = Recorder::new(Some(SPEECH_16K_SAMPLES));
    let config = CaptureConfig::default().device("qwen_speech16k");
    let mut capture = Capture::start(config, sink.clone()).unwrap();
    let n = capture.negotiated().clone();
    assert_eq!(
        (n.rate, n.channels, n.format),
        (16_000, 1, SampleFormat::S16Le)
    );
    assert!(!n.converts(), "{n}");
    finish(&mut capture);
    let got = sink.samples();
    assert_eq!(got.len(), SPEECH_16K_SAMPLES, "20 chunks of 100 ms");
    let want = read_raw(&fixture_dir().join("speech16k.raw"));
    assert!(got == want, "captured audio differs from the file");
    assert!(sink.events().is_empty(), "{:?}", sink.events());
    let stats = capture.stats();
    assert_eq!(stats.chunks_sent, 20);
    assert_eq!(stats.dropped_ms, 0);
    assert_eq!(stats.overruns, 0);
}

/// Checks 1.2 s of 16 kHz output from the 48 kHz stereo tone file: it must equal the
/// resampler's own output for the file (so nothing was lost or reordered through ALSA), and
/// the 1 kHz tone must keep its frequency and level while 12 kHz is gone.
fn check_converted_tone(got: &[i16], out_rate: u32) {
    let source = read_raw(&fixture_dir().join("tone48k_stereo.raw"));
    let mut r = Resampler::new(48_000, 2, out_rate).unwrap();
    let mut want = Vec::new();
    r.process(&source, &mut want);
    assert!(got.len() <= want.len());
    assert!(
        got == &want[..got.len()],
        "differs from the offline conversion"
    );
    let rate = out_rate as usize;
    let one_second = &got[rate / 10..rate / 10 + rate];
    let zc = zero_crossings(one_second);
    assert!((1998..=2002).contains(&zc), "{zc} zero crossings");
    // The downmix of 10000 and 6000 is 8000; the 12 kHz part must be filtered out.
    let level_db = 20.0 * (rms(one_second) / (8000.0 / 2f64.sqrt())).log10();
    assert!(level_db.abs() < 0.5, "level off by {level_db:.2} dB");
}

#[test]
fn a_48k_stereo_only_device_is_downmixed_and_resampled_in_software() {
    let _lock = setup();
    let want_samples = 19_200; // 1.2 s at 16 kHz, 12 chunks
    let sink = Recorder::new(Some(want_samples));
    let config = CaptureConfig::default().device("qwen_usb48k");
    let mut capture = Capture::start(config, sink.clone()).unwrap();
    let n = capture.negotiated().clone();
    // The device refused 16 kHz mono, so it runs at 48 kHz stereo and we convert.
    assert_eq!((n.rate, n.channels), (48_000, 2), "{n}");
    assert!(n
        .to_string()
        .contains("downmixed to mono and resampled to 16000 Hz"));
    finish(&mut capture);
    let got = sink.samples();
    assert_eq!(got.len(), want_samples);
    check_converted_tone(&got, 16_000);
}

#[test]
fn an_8k_session_from_a_48k_stereo_device() {
    let _lock = setup();
    let want_samples = 9_600; // 1.2 s at 8 kHz
    let sink = Recorder::new(Some(want_samples));
    let config = CaptureConfig::default()
        .device("qwen_usb48k")
        .sample_rate(8_000);
    let mut capture = Capture::start(config, sink.clone()).unwrap();
    assert_eq!(capture.negotiated().output_rate, 8_000);
    finish(&mut capture);
    check_converted_tone(&sink.samples(), 8_000);
}

#[test]
fn a_forced_device_format_takes_the_software_path_on_any_device() {
    let _lock = setup();
    let want_samples = 19_200;
    let sink = Recorder::new(Some(want_samples));
    // The raw file PCM accepts any rate; asking for 48 kHz stereo is how a user avoids a
    // device's own poor 16 kHz mode.
    let config = CaptureConfig::default()
        .device("qwen_tone48k_raw")
        .device_format(48_000, 2);
    let mut capture = Capture::start(config, sink.clone()).unwrap();
    assert_eq!(
        (capture.negotiated().rate, capture.negotiated().channels),
        (48_000, 2)
    );
    finish(&mut capture);
    check_converted_tone(&sink.samples(), 16_000);
}

#[test]
fn alsa_conversion_lets_plug_give_16k_mono() {
    let _lock = setup();
    // Only the negotiation is checked: plug resampling a file PCM scrambles the samples.
    let config = CaptureConfig::default()
        .device("qwen_usb48k")
        .alsa_conversion(true);
    let mut capture = Capture::start(config, Recorder::new(Some(1))).unwrap();
    let n = capture.negotiated().clone();
    assert_eq!((n.rate, n.channels), (16_000, 1), "{n}");
    finish(&mut capture);
}

#[test]
fn an_unknown_device_is_an_error_naming_it_and_the_call() {
    let _lock = setup();
    let config = CaptureConfig::default().device("qwen_no_such_device");
    match Capture::start(config, Recorder::new(None)) {
        Err(e @ Error::Capture { .. }) => {
            let Error::Capture { device, call, .. } = &e else {
                unreachable!()
            };
            assert_eq!(device, "qwen_no_such_device");
            assert_eq!(*call, "snd_pcm_open");
            let text = e.to_string();
            assert!(text.contains("qwen_no_such_device") && text.contains("snd_pcm_open"));
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(c) => panic!("opened {}", c.negotiated()),
    }
}

#[test]
fn a_bad_config_is_refused_before_opening_anything() {
    let _lock = setup();
    let config = CaptureConfig::default()
        .device("qwen_speech16k")
        .chunk_ms(501);
    match Capture::start(config, Recorder::new(None)) {
        Err(Error::InvalidConfig { field, message }) => {
            assert_eq!(field, "capture.chunk_ms");
            assert!(message.contains("20..=500"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn stop_and_drop_join_the_capture_thread() {
    let _lock = setup();
    assert_eq!(capture_threads(), 0);
    // A sink that takes everything: the thread runs until told to stop.
    let config = CaptureConfig::default().device("qwen_speech16k");
    let mut capture = Capture::start(config.clone(), Recorder::new(None)).unwrap();
    assert!(capture.is_running());
    assert!(capture_threads_become(1), "no qwen-capture thread");
    assert!(capture.is_running());
    capture.stop().unwrap();
    assert!(!capture.is_running());
    assert!(
        capture_threads_become(0),
        "qwen-capture still there after stop()"
    );
    capture.stop().unwrap(); // again: nothing to do

    let capture = Capture::start(config, Recorder::new(None)).unwrap();
    assert!(capture_threads_become(1), "no qwen-capture thread");
    drop(capture);
    assert!(
        capture_threads_become(0),
        "qwen-capture still there after drop"
    );
}

#[test]
fn a_stalled_sink_keeps_the_queue_bounded_and_reports_the_loss() {
    let _lock = setup();
    // 20 ms chunks, at most 100 ms queued. The sink refuses 5 offers (the capture backs off
    // between them), then takes 40 chunks and closes: all within the 2 s file.
    let take = 40 * 320;
    let sink = Recorder::new(Some(take));
    *sink.refuse.lock().unwrap() = 5;
    let config = CaptureConfig::default()
        .device("qwen_ramp16k")
        .chunk_ms(20)
        .queue_ms(100);
    let mut capture = Capture::start(config, sink.clone()).unwrap();
    finish(&mut capture);
    let stats = capture.stats();
    assert!(
        stats.peak_queued_ms <= 100,
        "queue grew to {} ms",
        stats.peak_queued_ms
    );
    assert!(stats.dropped_ms > 0);

    let items = sink.items();
    let first_chunk = items
        .iter()
        .position(|i| matches!(i, Item::Chunk(_)))
        .expect("no audio arrived");
    let mut reported_ms = 0;
    for item in &items[..first_chunk] {
        match item {
            Item::Event(EventKind::AudioDropped { ms, .. }) => reported_ms += ms,
            other => panic!("unexpected before the audio: {other:?}"),
        }
    }
    // Everything after the gap arrived, in order, and the gap is exactly what was reported.
    let got = sink.samples();
    assert_eq!(got.len(), take);
    let first = got[0] as u64;
    assert_eq!(
        first,
        reported_ms * 16,
        "the audio resumes where the loss ends"
    );
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap after the first chunk"
    );
    assert!(items[first_chunk..]
        .iter()
        .all(|i| matches!(i, Item::Chunk(_))));
    assert_eq!(stats.dropped_ms, reported_ms);
}

/// A conversation's sender that closes after `left` samples (the file's length).
struct UpTo {
    sender: AudioSender,
    left: Mutex<usize>,
}

impl AudioSink for UpTo {
    fn try_append(&self, samples: &[i16]) -> Result<(), TryAppendError> {
        let mut left = self.left.lock().unwrap();
        if *left == 0 {
            return Err(TryAppendError::Other(Error::Closed {
                code: None,
                reason: String::new(),
            }));
        }
        let n = samples.len().min(*left);
        AudioSink::try_append(&self.sender, &samples[..n])?;
        *left -= n;
        Ok(())
    }

    fn try_notify(&self, kind: &EventKind) -> Result<(), TryAppendError> {
        AudioSink::try_notify(&self.sender, kind)
    }
}

#[test]
fn microphone_audio_reaches_the_server_byte_for_byte() {
    let _lock = setup();
    let emu = Emulator::start(EmulatorConfig::default()).unwrap();
    let mut params = ConnectParams::new().url(emu.url()).api_key("test-key");
    // A small outgoing queue, so that the capture meets Full and has to offer again.
    params.send_queue_frames = 3;
    let conv = Conversation::start(params, &SessionConfig::manual()).unwrap();
    let sink = UpTo {
        sender: conv.audio_sender(),
        left: Mutex::new(SPEECH_16K_SAMPLES),
    };
    // The file PCM is not paced: the capture races ahead, so its queue must hold all it
    // reads meanwhile (silence after the file) without dropping the file's audio.
    let config = CaptureConfig::default()
        .device("qwen_speech16k")
        .queue_ms(600_000);
    let mut capture = Capture::start(config, sink).unwrap();
    // Closing the conversation releases a capture thread stuck in its (waiting) notify.
    finish_or(&mut capture, || conv.close());
    assert_eq!(capture.stats().dropped_ms, 0);
    conv.end_session(Duration::from_secs(20)).unwrap();
    conv.close();
    assert!(emu.wait_for_sessions_closed(1, Duration::from_secs(20)));
    let file = std::fs::read(fixture_dir().join("speech16k.raw")).unwrap();
    assert_eq!(emu.sessions()[0].audio, AudioDigest::of(&file));
}

#[test]
fn stream_from_microphone_runs_at_the_session_rate_and_ends_with_the_conversation() {
    let _lock = setup();
    let emu = Emulator::start(EmulatorConfig::default()).unwrap();
    let params = ConnectParams::new().url(emu.url()).api_key("test-key");
    let mut session = SessionConfig::manual();
    session.sample_rate = 8_000;
    let conv = Conversation::start(params, &session).unwrap();
    // The config says 16 kHz; the session's 8 kHz wins.
    let config = CaptureConfig::default().device("qwen_usb48k");
    let mut mic = conv.stream_from_microphone(config).unwrap();
    assert_eq!(mic.negotiated().output_rate, 8_000);
    // The (unpaced) capture floods the conversation until it closes; then it ends quietly.
    conv.close();
    finish(&mut mic);
}
