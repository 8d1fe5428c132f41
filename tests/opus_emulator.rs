//! Ogg Opus sessions against the emulator on loopback: the client's `OpusStream` pages passed
//! through (`input_audio_format: opus`, `append_bytes`), decoded by the emulator, and the
//! decoded audio checked against the source speech; broken streams refused with `error`
//! events; and `opusdec` (opus-tools, the Xiph reference decoder) decoding the streams the
//! emulator recorded (what `--record` writes), of a plain session and of the two sessions of a
//! conversation in the client's encoding mode split by a reconnect.

mod common;

use std::path::Path;

use common::opus_tools::{opusdec_to_wav, Scratch};
use common::signal::{correlation, rms_envelope};
use common::*;
use qwen_asr_emulator::{record, transcript_for, AudioDigest, Fault, FaultAction, SessionRecord};
use qwen_asr_realtime::opus::{OpusConfig, OpusStream};
use qwen_asr_realtime::{AudioFormat, Conversation, Event, EventKind, SessionConfig};

const RATE: u32 = 16_000;
/// Silence after each spoken phrase: more than the VAD's default 800 ms, so each phrase is an
/// utterance of its own.
const PAUSE_MS: u32 = 1_200;
/// How far an utterance boundary of the decoded audio may lie from the source's: a lossy
/// codec moves the energy VAD's decision by a frame or two (10 ms each) at the edges.
const BOUNDARY_TOLERANCE_MS: u64 = 60;
/// The decode must follow the source this closely. Opus at 24 kbit/s keeps the waveform of
/// speech to a correlation near 0.97 (the client's own measurement on the shipped WAV); 0.9
/// leaves room for the three phrases here and for a different libopus in opusdec.
const MIN_WAVEFORM_CORRELATION: f64 = 0.9;
/// Correlation of the 10 ms RMS envelopes: what an ear (or a recogniser) would follow.
const MIN_ENVELOPE_CORRELATION: f64 = 0.98;

/// Three spoken phrases (the speech gate's fixtures), each followed by a pause.
fn speech() -> Vec<i16> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gate");
    let mut out = Vec::new();
    for name in ["lights.wav", "timer.wav", "weather.wav"] {
        out.extend(wav_samples(&dir.join(name), RATE));
        out.resize(out.len() + (RATE * PAUSE_MS / 1000) as usize, 0);
    }
    out
}

/// `pcm` as one Ogg Opus stream at the default settings, one page per element: the two
/// headers, then 100 ms pages, the last one flagged end of stream.
fn opus_pages(pcm: &[i16], serial: u32) -> Vec<Vec<u8>> {
    let mut stream = OpusStream::new(&OpusConfig::default(), RATE, serial).expect("stream");
    let mut pages: Vec<Vec<u8>> = stream
        .headers()
        .iter()
        .map(|p| p.bytes().to_vec())
        .collect();
    for chunk in pcm.chunks(1_600) {
        let out = stream.push_pcm(chunk).expect("encode");
        pages.extend(out.iter().map(|p| p.bytes().to_vec()));
    }
    let last = stream.finish().expect("finish");
    pages.extend(last.iter().map(|p| p.bytes().to_vec()));
    pages
}

fn opus_session(vad: bool) -> SessionConfig {
    let mut config = if vad {
        SessionConfig::vad()
    } else {
        SessionConfig::manual()
    };
    config.input_audio_format = AudioFormat::Opus;
    config
}

/// One session that sends each of `appends` as one `input_audio_buffer.append` (bytes passed
/// through untouched), then `session.finish`: the client's events and the emulator's record.
fn run(appends: &[Vec<u8>], config: &SessionConfig) -> (Vec<Event>, SessionRecord) {
    let emu = start_emulator(recording(Vec::new()));
    let conv = Conversation::start(params_for(&emu), config).expect("start");
    for a in appends {
        conv.append_bytes(a).expect("append");
    }
    conv.end_session(WAIT).expect("end session");
    let events = collect_until_closed(&conv);
    let mut sessions = emu.sessions();
    assert_eq!(sessions.len(), 1);
    (events, sessions.remove(0))
}

fn samples(le: &[u8]) -> Vec<i16> {
    le.chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn server_errors(events: &[Event]) -> Vec<qwen_asr_realtime::ServerError> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Error(err) => Some(err.clone()),
            _ => None,
        })
        .collect()
}

/// Samples either way within which the decode is aligned with the source before comparing
/// waveforms: opusdec decodes at 48 kHz and resamples to the rate asked for, which shifts the
/// waveform by a fraction of a millisecond (one sample at 16 kHz, measured), enough to cost a
/// tenth of the correlation of speech's high frequencies.
const MAX_LAG_SAMPLES: usize = 8;

/// Waveform correlation and SNR in dB at the best lag within [`MAX_LAG_SAMPLES`], that lag, and
/// the correlation of the 10 ms RMS envelopes, of `decoded` against `source` over the whole of
/// both (which must be equally long: pre-skip and end trim honoured).
fn compare(source: &[i16], decoded: &[i16]) -> Comparison {
    assert_eq!(decoded.len(), source.len(), "decoded length");
    let f = |s: &[i16]| s.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
    let (src, dec) = (f(source), f(decoded));
    let n = src.len() - 2 * MAX_LAG_SAMPLES;
    let a = &src[MAX_LAG_SAMPLES..MAX_LAG_SAMPLES + n];
    let mut best = (f64::MIN, 0isize, 0.0);
    for shift in 0..=2 * MAX_LAG_SAMPLES {
        let b = &dec[shift..shift + n];
        let wave = correlation(a, b);
        if wave > best.0 {
            let signal: f64 = a.iter().map(|v| v * v).sum();
            let noise: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
            best = (
                wave,
                shift as isize - MAX_LAG_SAMPLES as isize,
                10.0 * (signal / noise).log10(),
            );
        }
    }
    let env = |s: &[i16]| rms_envelope(s, RATE as usize / 100);
    Comparison {
        wave: best.0,
        lag: best.1,
        snr_db: best.2,
        envelope: correlation(&env(source), &env(decoded)),
    }
}

#[derive(Debug)]
struct Comparison {
    wave: f64,
    lag: isize,
    snr_db: f64,
    envelope: f64,
}

impl Comparison {
    fn check(&self, what: &str) {
        eprintln!(
            "{what}: waveform correlation {:.4} and SNR {:.1} dB at a lag of {} samples, \
             envelope correlation {:.4}",
            self.wave, self.snr_db, self.lag, self.envelope
        );
        assert!(self.wave >= MIN_WAVEFORM_CORRELATION, "{what}: {self:?}");
        assert!(
            self.envelope >= MIN_ENVELOPE_CORRELATION,
            "{what}: {self:?}"
        );
    }
}

/// Checks that the items tile the session's audio and that each transcript is the digest of
/// exactly its item's audio, as the client received it.
fn check_items(rec: &SessionRecord, events: &[Event]) {
    let mut offset = 0u64;
    for item in &rec.items {
        assert_eq!(item.start, offset, "items tile the audio");
        let (from, to) = (
            item.start as usize,
            (item.start + item.audio.bytes) as usize,
        );
        assert_eq!(AudioDigest::of(&rec.audio_data[from..to]), item.audio);
        assert_eq!(item.transcript, transcript_for(item.audio, RATE));
        offset += item.audio.bytes;
    }
    let want: Vec<String> = rec.items.iter().map(|i| i.transcript.clone()).collect();
    assert_eq!(transcripts(events), want);
}

#[test]
fn an_opus_session_is_decoded_and_cut_into_the_same_utterances_as_its_pcm() {
    let source = speech();
    // The same speech as PCM: the utterances the emulator finds in the source itself.
    let pcm_appends: Vec<Vec<u8>> = source.chunks(1_600).map(le_bytes).collect();
    let mut pcm_config = SessionConfig::vad();
    pcm_config.input_audio_format = AudioFormat::Pcm;
    let (_, pcm_rec) = run(&pcm_appends, &pcm_config);
    assert_eq!(
        pcm_rec.items.len(),
        3,
        "one utterance per phrase of the source"
    );

    let pages = opus_pages(&source, 11);
    let (events, rec) = run(&pages, &opus_session(true));
    assert!(
        server_errors(&events).is_empty(),
        "{:?}",
        server_errors(&events)
    );
    assert_eq!(rec.opus_error, None);
    // Every sample of the source came out, no padding: pre-skip and the end trim honoured.
    assert_eq!(rec.audio.bytes, 2 * source.len() as u64);
    assert_eq!(rec.opus_data, pages.concat(), "the stream as sent");
    assert_eq!(rec.audio, AudioDigest::of(&rec.audio_data));
    let c = compare(&source, &samples(&rec.audio_data));
    c.check("the emulator's decode against the source");
    assert_eq!(c.lag, 0, "the emulator's decode is aligned with the source");

    // The same utterances, in the same places (within a few VAD frames), with transcripts of
    // exactly the decoded audio.
    assert_eq!(rec.items.len(), pcm_rec.items.len());
    let tolerance = BOUNDARY_TOLERANCE_MS * u64::from(RATE) / 1000 * 2;
    for (opus, pcm) in rec.items.iter().zip(&pcm_rec.items) {
        for (a, b) in [
            (opus.start, pcm.start),
            (opus.start + opus.audio.bytes, pcm.start + pcm.audio.bytes),
        ] {
            assert!(
                a.abs_diff(b) <= tolerance,
                "boundary at byte {a}, source's at {b}"
            );
        }
    }
    check_items(&rec, &events);
    // The VAD events count session audio in milliseconds of the decoded audio.
    let starts: Vec<u64> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::SpeechStarted { audio_start_ms, .. } => audio_start_ms,
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 3);
    for (ms, item) in starts.iter().zip(&rec.items) {
        assert!(*ms * 32 >= item.start && *ms * 32 <= item.start + item.audio.bytes);
    }
}

#[test]
fn pages_split_across_appends_or_several_in_one_decode_the_same() {
    let source = speech();
    let pages = opus_pages(&source, 12);
    let (_, whole) = run(&pages, &opus_session(false));
    assert_eq!(whole.audio.bytes, 2 * source.len() as u64);
    let bytes = pages.concat();
    // Pieces that cut pages anywhere (a prime length), and three pages per append.
    let cut: Vec<Vec<u8>> = bytes.chunks(331).map(<[u8]>::to_vec).collect();
    let grouped: Vec<Vec<u8>> = pages.chunks(3).map(<[Vec<u8>]>::concat).collect();
    for (what, appends) in [("cut", cut), ("grouped", grouped)] {
        let (events, rec) = run(&appends, &opus_session(false));
        assert!(
            server_errors(&events).is_empty(),
            "{what}: {:?}",
            server_errors(&events)
        );
        assert_eq!(rec.audio, whole.audio, "{what}");
        // Manual mode: session.finish flushes everything as one item.
        assert_eq!(rec.items.len(), 1, "{what}");
        check_items(&rec, &events);
    }
}

#[test]
fn a_broken_stream_gets_an_error_and_is_refused_for_the_rest_of_the_session() {
    let source = speech();
    let pages = opus_pages(&source[..RATE as usize * 2], 13);
    let n = pages.len();
    let mut bad_crc = pages.clone();
    let last = bad_crc[4].len() - 1;
    bad_crc[4][last] ^= 0x10;
    let other = opus_pages(&source[..RATE as usize], 14);
    let mut second_stream = pages[..4].to_vec();
    second_stream.extend(other.iter().cloned());
    let mut after_eos = pages.clone();
    after_eos.push(pages[3].clone());
    after_eos.push(pages[4].clone());
    let mut at_8k = OpusStream::new(&OpusConfig::default(), 8_000, 15).expect("8 kHz stream");
    let mut wrong_rate: Vec<Vec<u8>> = at_8k.headers().iter().map(|p| p.bytes().to_vec()).collect();
    wrong_rate.extend(
        at_8k
            .finish()
            .expect("finish")
            .iter()
            .map(|p| p.bytes().to_vec()),
    );

    let cases: [(&str, Vec<Vec<u8>>, &str, usize); 6] = [
        ("bad CRC", bad_crc, "CRC", 4),
        (
            "audio before the headers",
            pages[2..].to_vec(),
            "beginning-of-stream",
            0,
        ),
        ("a second stream (another BOS)", second_stream, "stream", 4),
        (
            "PCM in an Opus session",
            vec![le_bytes(&source[..1_600]); 3],
            "no Ogg page",
            0,
        ),
        (
            "a page after the end of stream",
            after_eos,
            "after the end of stream",
            n,
        ),
        (
            "OpusHead at 8 kHz in a 16 kHz session",
            wrong_rate,
            "input sample rate",
            0,
        ),
    ];
    for (what, appends, reason, bad_append) in cases {
        let (events, rec) = run(&appends, &opus_session(false));
        let errors = server_errors(&events);
        // One error for the append that broke the stream, one for every append after it.
        assert_eq!(
            errors.len(),
            appends.len() - bad_append,
            "{what}: {errors:?}"
        );
        let first = &errors[0];
        assert_eq!(
            first.error_type.as_deref(),
            Some("invalid_request_error"),
            "{what}"
        );
        assert_eq!(first.code.as_deref(), Some("invalid_value"), "{what}");
        assert_eq!(first.param.as_deref(), Some("audio"), "{what}");
        let message = first.message.as_deref().unwrap_or("");
        assert!(message.contains(reason), "{what}: {message}");
        for later in &errors[1..] {
            assert!(
                later
                    .message
                    .as_deref()
                    .unwrap_or("")
                    .contains("refused earlier"),
                "{what}: {later:?}"
            );
        }
        assert!(
            rec.opus_error.as_deref().unwrap_or("").contains(reason),
            "{what}"
        );
        // The session itself goes on, and ends as usual.
        assert!(rec.finished, "{what}");
        assert!(
            matches!(
                events.last().map(|e| &e.kind),
                Some(EventKind::Closed { code: 1000, .. })
            ),
            "{what}"
        );
        // What the good pages before the break held was decoded and kept.
        if what == "a page after the end of stream" {
            assert_eq!(rec.audio.bytes, 2 * 2 * u64::from(RATE), "{what}");
        }
    }
}

/// `opusdec --rate 16000 ogg wav`, and the decoded samples.
fn opusdec(ogg: &Path, wav_out: &Path) -> Vec<i16> {
    opusdec_to_wav(ogg, RATE, wav_out);
    wav_samples(wav_out, RATE)
}

#[test]
fn opusdec_decodes_the_stream_the_emulator_recorded_back_to_the_source() {
    let source = speech();
    let pages = opus_pages(&source, 16);
    let (_, rec) = run(&pages, &opus_session(true));
    // What `--record DIR` writes.
    let scratch = Scratch::new("record");
    record::write_sessions(scratch.dir(), std::slice::from_ref(&rec)).expect("write record");
    let recorded = scratch.path("session-1.opus");
    assert_eq!(
        std::fs::read(&recorded).expect("session-1.opus"),
        pages.concat()
    );
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(scratch.path("sessions.json")).expect("sessions.json"),
    )
    .expect("JSON");
    assert_eq!(summary[0]["opus"], "session-1.opus");

    let decoded = opusdec(&recorded, &scratch.path("decoded.wav"));
    compare(&source, &decoded).check("opusdec's decode against the source");
    // Two decoders of the same packets: libopus here, opus-tools' (its own libopus, and a
    // resampler) there.
    compare(&samples(&rec.audio_data), &decoded).check("opusdec's decode against the emulator's");
}

/// The client encoding (`SessionConfig::opus`) through a dropped connection: the session after
/// the reconnect is a stream of its own, which the emulator decodes and opusdec reads back, as
/// `--record` wrote it, to the whole source (manual mode, nothing had a result: all of it is
/// replayed, re-encoded into the new stream); the cut-off first stream still decodes to the
/// start of the source.
#[test]
fn opusdec_decodes_both_recorded_streams_of_a_session_split_by_a_reconnect() {
    let emu = start_emulator(recording(vec![Fault::AfterAppends {
        n: 12,
        action: FaultAction::Drop,
    }]));
    let conv = Conversation::start(
        params_for(&emu).reconnect(fast_reconnect()),
        &SessionConfig::manual().opus(OpusConfig::default()),
    )
    .expect("start");
    let source = speech();
    let (before, after) = source.split_at(source.len() / 2);
    for chunk in before.chunks(1_600) {
        conv.append_pcm(chunk).expect("append");
    }
    // Bounded: the drop comes after the twelfth append, the reconnect right after it.
    let deadline = std::time::Instant::now() + WAIT;
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e: &Event| matches!(e.kind, EventKind::Reconnected { .. }))
    {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .unwrap_or_else(|| panic!("no reconnect within {WAIT:?}: {:?}", types(&events)));
        events.push(conv.recv_timeout(left).expect("an event"));
    }
    for chunk in after.chunks(1_600) {
        conv.append_pcm(chunk).expect("append");
    }
    conv.end_session(WAIT).expect("end session");
    events.extend(collect_until_closed(&conv));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::AudioDropped { .. })),
        "{:?}",
        types(&events)
    );
    let sessions = emu.sessions();
    assert_eq!(sessions.len(), 2);
    for s in &sessions {
        assert_eq!(s.opus_error, None, "the emulator accepted both streams");
    }
    // The emulator decoded the second stream to exactly the source's length.
    assert_eq!(sessions[1].audio.bytes, 2 * source.len() as u64);

    let scratch = Scratch::new("reconnect");
    record::write_sessions(scratch.dir(), &sessions).expect("write record");
    let second = opusdec(
        &scratch.path("session-2.opus"),
        &scratch.path("session-2.wav"),
    );
    compare(&source, &second).check("opusdec's decode of the stream after the reconnect");
    compare(&samples(&sessions[1].audio_data), &second)
        .check("opusdec's decode after the reconnect against the emulator's");
    // The first stream ends without an end-of-stream page (the link died): opusdec still
    // decodes what it holds, the start of the source.
    let first = opusdec(
        &scratch.path("session-1.opus"),
        &scratch.path("session-1.wav"),
    );
    assert!(
        first.len() > 1_600 * 5 && first.len() <= before.len(),
        "{} samples from the cut-off stream",
        first.len()
    );
    compare(&source[..first.len()], &first).check("opusdec's decode of the cut-off stream");
}
