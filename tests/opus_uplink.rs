//! The Opus uplink end to end, against the emulator on loopback: PCM handed to `append_pcm`
//! leaves as one Ogg Opus stream per session, and the emulator's record of the appended
//! bytes is read back with the emulator's strict Ogg Opus reader and decoded, then compared with the
//! source (through a lossy codec: envelopes and waveform correlation, not bytes); a plain
//! session's stream and the stream after a reconnect are also decoded by the Xiph reference
//! decoder (`opusdec`, opus-tools, required on PATH as for the other Opus tests).

mod common;

use std::time::Duration;

use common::opus_tools::{opusdec_to_wav, opusinfo_is_clean, Scratch};
use common::signal::assert_matches_source;
use common::*;
use qwen_asr_emulator::ogg_opus::OggOpusReader;
use qwen_asr_emulator::{Fault, FaultAction, SessionRecord};
use qwen_asr_realtime::opus::OpusConfig;
use qwen_asr_realtime::{
    AudioFormat, Conversation, Event, EventKind, SessionConfig, TryAppendError,
};

const RATE: u32 = 16_000;
/// 100 ms of audio per append.
const CHUNK: usize = 1_600;

/// The speech fixture's samples.
fn speech() -> Vec<i16> {
    shipped_wav_samples()
}

fn opus_session() -> SessionConfig {
    SessionConfig::manual().opus(OpusConfig::default())
}

/// Reads one session's appended bytes as an Ogg Opus stream, decoding at the source's rate,
/// with a log of its pages.
fn read_stream(session: &SessionRecord) -> OggOpusReader {
    let mut reader = OggOpusReader::new(RATE).keep_page_log();
    reader
        .push(&session.opus_data)
        .unwrap_or_else(|e| panic!("session {}: not a valid Ogg Opus stream: {e}", session.id));
    reader
}

/// What the Xiph reference decoder (`opusdec` from opus-tools, which the Opus tests require
/// on PATH) makes of a recorded session, after `opusinfo` found nothing to warn about: an
/// independent check of the stream the client wrote.
fn opusdec(session: &SessionRecord, name: &str) -> Vec<i16> {
    let scratch = Scratch::new(&format!("uplink-{name}"));
    let ogg = scratch.path("session.opus");
    let wav = scratch.path("decoded.wav");
    std::fs::write(&ogg, &session.opus_data).unwrap();
    opusinfo_is_clean(&ogg);
    opusdec_to_wav(&ogg, RATE, &wav);
    wav_samples(&wav, RATE)
}

fn append_all(conv: &Conversation, samples: &[i16]) {
    for c in samples.chunks(CHUNK) {
        conv.append_pcm(c).expect("append");
    }
}

fn end(conv: &Conversation) -> Vec<Event> {
    let ended = conv.end_session(WAIT);
    let events = collect_until_closed(conv);
    ended.unwrap_or_else(|e| panic!("end_session: {e}; events {:?}", types(&events)));
    events
}

/// Before: `SessionConfig` had no encoder, and PCM into an Opus session was refused.
#[test]
fn pcm_appends_leave_as_one_ogg_opus_stream_headers_first_one_page_per_append() {
    let emu = start_emulator(recording(Vec::new()));
    let conv = Conversation::start(params_for(&emu), &opus_session()).unwrap();
    let source = speech();
    append_all(&conv, &source);
    // Bytes encoded elsewhere would break the stream this session writes.
    assert!(conv.append_bytes(&[1, 2, 3, 4]).is_err());
    assert!(conv.append_base64("AAAA").is_err());
    let events = end(&conv);

    let sessions = emu.sessions();
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    assert_eq!(s.config["input_audio_format"], "opus", "{}", s.config);
    let reader = read_stream(s);
    reader
        .finish()
        .expect("the stream ends with an end-of-stream page");
    let head = reader.head().expect("OpusHead");
    assert_eq!((head.channels, head.input_sample_rate), (1, RATE));
    // The reader has checked that OpusHead and OpusTags come first, each alone on its page;
    // as many pages as appends means every append carried exactly one whole page.
    assert_eq!(
        reader.page_log().len() as u64,
        s.appends,
        "one page per append"
    );
    assert!(s.appends > 2, "audio pages after the headers");
    assert_matches_source(reader.pcm(), &source, RATE);
    assert_matches_source(&opusdec(s, "plain"), &source, RATE);
    // The end-of-stream page came before session.finish: the emulator's last item (the
    // buffer taken at session.finish) runs to the end of what was appended.
    let last = s.items.last().expect("an item at session.finish");
    assert_eq!(last.start + last.audio.bytes, s.audio_data.len() as u64);

    let stats = conv.stats();
    let source_ms = source.len() as u64 * 1000 / u64::from(RATE);
    assert_eq!(stats.appended_ms, source_ms, "appended_ms counts the PCM");
    assert_eq!(stats.dropped_ms, 0);
    assert_eq!(dropped_ms(&events), 0, "{:?}", types(&events));
    // What the WebSocket carried: per page its base64 in a 99-byte append event, in a
    // client frame with an 8-byte header (2, the 16-bit length, the 4-byte mask).
    let secs = source_ms as f64 / 1000.0;
    let pages_per_s = s.opus_data.len() as f64 / secs;
    let wire: usize = reader
        .page_log()
        .iter()
        .map(|p| 8 + 99 + p.bytes.div_ceil(3) * 4)
        .sum();
    eprintln!(
        "Ogg Opus: {pages_per_s:.0} bytes of pages, {:.0} bytes on the wire, per audio second",
        wire as f64 / secs
    );
}

/// Before: the replay window sent the first stream's frames again, so the new session got
/// pages of a stream it had never seen the headers of.
#[test]
fn a_reconnect_starts_a_new_stream_with_fresh_headers_and_re_encodes_the_replay() {
    let emu = start_emulator(recording(vec![Fault::AfterAppends {
        n: 8,
        action: FaultAction::Drop,
    }]));
    let params = params_for(&emu).reconnect(fast_reconnect());
    let conv = Conversation::start(params, &opus_session()).unwrap();
    let source = speech();
    // The link dies in the middle of the stream, and audio follows the reconnect: the new
    // stream must not be the old one continued (nor one begun by session.finish's end).
    let (before, after) = source.split_at(30 * CHUNK);
    append_all(&conv, before);
    let mut events = Vec::new();
    wait_for(&conv, &mut events, |k| {
        matches!(k, EventKind::Reconnected { .. })
    });
    append_all(&conv, after);
    events.extend(end(&conv));

    let replays: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Reconnected { replayed_ms, .. } => Some(*replayed_ms),
            _ => None,
        })
        .collect();
    assert_eq!(replays.len(), 1, "{:?}", types(&events));
    let sessions = emu.sessions();
    assert_eq!(sessions.len(), 2);
    let first = read_stream(&sessions[0]);
    assert!(!first.is_ended(), "the first stream was cut off");
    assert!(first.head().is_some() && first.page_log().len() == 8);
    let second = read_stream(&sessions[1]);
    second.finish().expect("the second stream is whole");
    assert_ne!(first.serial(), second.serial(), "a new logical stream");
    assert_eq!(second.page_log()[0].granule, 0);
    // Nothing had its result when the link died (manual mode, no commit): all that had been
    // sent by then was replayed (what was still queued went after it), and the new stream
    // decodes to the whole source.
    assert!(
        replays[0] > 0 && replays[0] <= (before.len() as u64 * 1000).div_ceil(u64::from(RATE)),
        "replayed {} ms",
        replays[0]
    );
    assert_matches_source(second.pcm(), &source, RATE);
    assert_matches_source(&opusdec(&sessions[1], "reconnect"), &source, RATE);
    let stats = conv.stats();
    assert_eq!(
        stats.appended_ms,
        source.len() as u64 * 1000 / u64::from(RATE)
    );
    assert_eq!(dropped_ms(&events), 0, "{:?}", types(&events));
}

/// Waits (bounded) for an event of the kind `want` says, keeping the events read on the way.
fn wait_for(conv: &Conversation, events: &mut Vec<Event>, want: impl Fn(&EventKind) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !events.iter().any(|e| want(&e.kind)) {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .unwrap_or_else(|| panic!("not within {WAIT:?}: {:?}", types(events)));
        events.push(conv.recv_timeout(left).expect("an event"));
    }
}

/// After a reconnect only the audio without a result goes into the new stream: the
/// committed and transcribed first two seconds are not sent again, the rest is re-encoded
/// from its PCM, starting a stream of its own at granule 0.
#[test]
fn after_a_reconnect_the_new_stream_starts_where_the_results_end() {
    // Session 1: the two headers, 20 pages (2 s, committed), then 5 pages of what follows.
    let emu = start_emulator(recording(vec![Fault::AfterAppends {
        n: 27,
        action: FaultAction::Drop,
    }]));
    let conv = Conversation::start(
        params_for(&emu).reconnect(fast_reconnect()),
        &opus_session(),
    )
    .unwrap();
    let source = speech();
    let (done, rest) = source.split_at(20 * CHUNK);
    let (before, after) = rest.split_at(10 * CHUNK);
    append_all(&conv, done);
    conv.commit().unwrap();
    // Its result has come before the link dies (the drop may reset the connection, which can
    // take unread events with it).
    let mut events = Vec::new();
    wait_for(&conv, &mut events, |k| matches!(k, EventKind::Completed(_)));
    append_all(&conv, before);
    wait_for(&conv, &mut events, |k| {
        matches!(k, EventKind::Reconnected { .. })
    });
    append_all(&conv, after);
    events.extend(end(&conv));

    assert_eq!(transcripts(&events).len(), 2, "{:?}", types(&events));
    let sessions = emu.sessions();
    assert_eq!(sessions.len(), 2);
    let second = read_stream(&sessions[1]);
    second.finish().expect("the second stream is whole");
    assert_eq!(second.page_log()[0].granule, 0);
    assert_matches_source(second.pcm(), rest, RATE);
    assert_eq!(dropped_ms(&events), 0, "{:?}", types(&events));
    assert_eq!(
        conv.stats().appended_ms,
        source.len() as u64 * 1000 / u64::from(RATE)
    );
}

/// Before: a commit went out while the audio before it still sat in the encoder's page.
#[test]
fn a_commit_sends_the_page_being_filled_first() {
    let emu = start_emulator(recording(Vec::new()));
    let conv = Conversation::start(params_for(&emu), &opus_session()).unwrap();
    // 1,030 ms: 51 whole 20 ms frames (five full 100 ms pages, and one frame that fills no
    // page) and 10 ms that is less than a frame.
    let utterance = burst(RATE, 1_030, 0);
    append_all(&conv, &utterance);
    conv.commit().unwrap();
    let second = burst(RATE, 500, 0);
    append_all(&conv, &second);
    let events = end(&conv);
    assert_eq!(transcripts(&events).len(), 2, "{:?}", types(&events));

    let sessions = emu.sessions();
    let s = &sessions[0];
    assert_eq!(s.items.len(), 2, "the commit's item and the finish's");
    let committed = &s.items[0];
    assert_eq!(committed.start, 0);
    // The emulator decodes what arrived before the commit: every whole frame of the
    // utterance, less the pre-skip (the encoder's delay, dropped at the start).
    let all = read_stream(s);
    let pre_skip = u64::from(all.head().unwrap().pre_skip) * u64::from(RATE) / 48_000;
    assert_eq!(
        committed.audio.bytes,
        2 * (51 * 320 - pre_skip),
        "every whole frame of the utterance was on the wire before its commit"
    );
    // The 10 ms remainder went out with the next audio: nothing lost.
    all.finish().unwrap();
    assert_eq!(all.pcm().len(), utterance.len() + second.len());
    assert_eq!(conv.stats().appended_ms, 1_530);
}

/// Before: audio in an Opus session counted 0 ms (its size says nothing of its length), so
/// appended_ms stayed 0 and audio still queued when the conversation closed was reported as
/// 0 ms dropped.
#[test]
fn closing_with_audio_in_flight_reports_every_ms_of_the_pcm() {
    let emu = start_emulator(recording(vec![Fault::AfterAppends {
        n: 3,
        action: FaultAction::Stall,
    }]));
    let conv = Conversation::start(params_for(&emu), &opus_session()).unwrap();
    let chunks = 50;
    let audio = burst(RATE, 100 * chunks, 0);
    append_all(&conv, &audio);
    let appended = conv.stats().appended_ms;
    assert_eq!(appended, 100 * u64::from(chunks));
    conv.close();
    let events = collect_until_closed(&conv);
    assert!(matches!(
        events.last().map(|e| &e.kind),
        Some(EventKind::Closed { .. })
    ));
    assert!(transcripts(&events).is_empty());
    assert_eq!(
        dropped_ms(&events),
        appended,
        "nothing was transcribed, so all of it is reported: {:?}",
        events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::AudioDropped { .. }))
            .map(|e| format!("{:?}", e.kind))
            .collect::<Vec<_>>()
    );
    assert_eq!(conv.stats().dropped_ms, appended);
}

/// Opus at 8 kHz, with 8 kHz in `session.update` and as the OpusHead input rate, through
/// `try_append_pcm`; a rate or setting the encoder cannot take is refused before anything is
/// sent.
#[test]
fn an_8khz_session_is_encoded_at_8khz() {
    let emu = start_emulator(recording(Vec::new()));
    let config = opus_session().sample_rate(8_000);
    let conv = Conversation::start(params_for(&emu), &config).unwrap();
    let tone = burst(8_000, 1_000, 200);
    // The non-blocking append (what capture uses) takes the same path.
    for c in tone.chunks(800) {
        let mut tries = 0;
        while let Err(e) = conv.try_append_pcm(c) {
            assert!(matches!(e, TryAppendError::Full), "{e}");
            tries += 1;
            assert!(tries < 2_000, "the queue stayed full");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    end(&conv);
    let s = &emu.sessions()[0];
    assert_eq!(s.config["sample_rate"], 8_000);
    let mut reader = OggOpusReader::new(8_000);
    reader.push(&s.opus_data).unwrap();
    reader.finish().unwrap();
    assert_eq!(reader.head().unwrap().input_sample_rate, 8_000);
    assert_eq!(reader.pcm().len(), tone.len());
    assert_eq!(conv.stats().appended_ms, 1_200);

    assert!(opus_session().sample_rate(44_100).validate().is_err());
    assert!(SessionConfig::manual()
        .opus(OpusConfig::default().bitrate_bps(1))
        .validate()
        .is_err());
    let mut mismatched = opus_session();
    mismatched.input_audio_format = AudioFormat::Pcm;
    assert!(
        mismatched.validate().is_err(),
        "Opus encoding announced as PCM"
    );
}

/// Capture (real alsa-lib, a `file` PCM over `null` reading a raw file, so no sound card)
/// feeds an encoding session through `try_append_pcm`: what the microphone gave is what the
/// stream decodes to. One second: ten chunks, which the queue holds whatever the I/O thread's
/// pace, so none is dropped and the decode can be compared with the file.
#[cfg(feature = "alsa")]
#[test]
fn capture_feeds_the_encoder() {
    use qwen_asr_realtime::CaptureConfig;
    let dir = std::env::temp_dir().join(format!("qwen-opus-capture-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("alsa")).unwrap();
    let raw = dir.join("speech.raw");
    let source = speech();
    std::fs::write(&raw, le_bytes(&source)).unwrap();
    std::fs::write(
        dir.join("alsa/asoundrc"),
        format!(
            "pcm.qwen_opus_speech {{\n  type file\n  slave.pcm \"null\"\n  file \"/dev/null\"\n  \
             infile \"{}\"\n  format \"raw\"\n}}\n",
            raw.display()
        ),
    )
    .unwrap();
    // Read by alsa.conf before the first ALSA call; no other test here uses ALSA.
    std::env::set_var("XDG_CONFIG_HOME", &dir);

    let emu = start_emulator(recording(Vec::new()));
    let conv = Conversation::start(params_for(&emu), &opus_session()).unwrap();
    let config = CaptureConfig::default()
        .device("qwen_opus_speech")
        .limit_ms(1_000);
    let mut mic = conv.stream_from_microphone(config).unwrap();
    for _ in 0..3_000 {
        if !mic.is_running() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!mic.is_running(), "the capture ends at its limit");
    mic.stop().unwrap();
    conv.commit().unwrap();
    let events = end(&conv);
    std::fs::remove_dir_all(&dir).ok();

    assert_eq!(dropped_ms(&events), 0, "{:?}", types(&events));
    assert_eq!(conv.stats().appended_ms, 1_000);
    let s = &emu.sessions()[0];
    let reader = read_stream(s);
    reader.finish().unwrap();
    assert_matches_source(reader.pcm(), &source[..RATE as usize], RATE);
}
