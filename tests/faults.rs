//! Fault injection on loopback: the link dies in every way we know of, and every utterance is
//! either transcribed exactly once (in the session whose transcript reached the caller) or
//! reported lost. The emulator records each session's audio and each item's place in it, so
//! the accounting is checked byte for byte against the audio that was sent.

mod common;

use std::time::Duration;

use common::forwarder::Forwarder;
use common::*;
use qwen_asr_emulator::{EmulatorConfig, Fault, FaultAction, SessionRecord};
use qwen_asr_realtime::{Conversation, Error, Event, EventKind, Keepalive, Phase, SessionConfig};

const RATE: u32 = 16000;
const CHUNK: usize = 1600; // 100 ms

/// `n` utterances, each a 1 s tone of its own pitch then 1.2 s of silence, and the byte
/// range of each tone. Distinct pitches make every item's audio unique.
fn distinct_utterances(n: usize) -> (Vec<i16>, Vec<(usize, usize)>) {
    let mut samples = Vec::new();
    let mut tones = Vec::new();
    for k in 0..n {
        let start = samples.len() * 2;
        let f = 300.0 + 150.0 * k as f64;
        samples.extend((0..RATE as usize).map(|i| {
            (8000.0 * (2.0 * std::f64::consts::PI * f * i as f64 / f64::from(RATE)).sin()) as i16
        }));
        tones.push((start, samples.len() * 2));
        samples.resize(samples.len() + RATE as usize * 12 / 10, 0);
    }
    (samples, tones)
}

/// Streams `samples` at full speed, ends the session, and returns every event.
fn stream_and_finish(conv: &Conversation, samples: &[i16]) -> Vec<Event> {
    for c in samples.chunks(CHUNK) {
        conv.append_pcm(c).expect("append");
    }
    let ended = conv.end_session(WAIT);
    let events = collect_until_closed(conv);
    ended.unwrap_or_else(|e| panic!("end_session: {e}; events {:?}", types(&events)));
    events
}

/// Where each session's audio sits in what was sent: the first session's is a prefix, and
/// after one reconnect the second's is a suffix (it runs to the end).
fn session_offsets(sent: &[u8], sessions: &[SessionRecord]) -> Vec<usize> {
    assert!(
        !sessions.is_empty() && sessions.len() <= 2,
        "{} sessions",
        sessions.len()
    );
    let first = &sessions[0].audio_data;
    assert_eq!(
        &sent[..first.len()],
        &first[..],
        "session 1 got a prefix of the audio, in order"
    );
    let mut offsets = vec![0];
    if let Some(second) = sessions.get(1) {
        let data = &second.audio_data;
        let start = sent.len() - data.len();
        assert_eq!(
            &sent[start..],
            &data[..],
            "session 2 got the rest of the audio, in order"
        );
        assert!(
            start <= first.len(),
            "no gap between what session 1 got and the replay"
        );
        offsets.push(start);
    }
    offsets
}

/// Every tone is inside exactly one transcript that the caller received, and no received
/// transcript covers part of a tone only. A session whose transcript was lost in transit
/// (the replay then has a second session transcribe the same audio) does not count; the
/// emulator's transcript names the audio's length and CRC, so identical transcripts stand for
/// identical audio.
fn assert_each_utterance_once(
    sent: &[u8],
    tones: &[(usize, usize)],
    sessions: &[SessionRecord],
    events: &[Event],
) {
    let offsets = session_offsets(sent, sessions);
    let mut range_of = std::collections::HashMap::new();
    for (s, base) in sessions.iter().zip(&offsets) {
        for item in &s.items {
            let start = base + item.start as usize;
            let range = (start, start + item.audio.bytes as usize);
            let known = range_of.insert(item.transcript.clone(), range);
            assert!(
                known.is_none_or(|r| r == range),
                "one transcript, two places in the audio"
            );
        }
    }
    let received: Vec<(usize, usize)> = transcripts(events)
        .iter()
        .map(|t| {
            *range_of
                .get(t)
                .unwrap_or_else(|| panic!("received {t}, which no session sent"))
        })
        .collect();
    for (k, &(t0, t1)) in tones.iter().enumerate() {
        let covering = received
            .iter()
            .filter(|(a, b)| *a <= t0 && t1 <= *b)
            .count();
        assert_eq!(
            covering, 1,
            "tone {k}: {covering} received transcripts cover it; {received:?}"
        );
        for (a, b) in &received {
            let overlaps = *a < t1 && t0 < *b;
            assert!(
                !overlaps || (*a <= t0 && t1 <= *b),
                "tone {k} split across transcripts"
            );
        }
    }
    assert_eq!(
        received.len(),
        tones.len(),
        "one transcript per utterance, no duplicates"
    );
}

fn reconnected(events: &[Event]) -> Vec<(u32, u64)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Reconnected {
                attempt,
                replayed_ms,
                old_session_id,
                new_session_id,
                code,
                reason,
            } => {
                assert_ne!(old_session_id, new_session_id);
                // It says why the previous connection ended.
                assert!(*code >= 1000 && !reason.is_empty(), "{code} {reason:?}");
                Some((*attempt, *replayed_ms))
            }
            _ => None,
        })
        .collect()
}

fn reconnecting_params(url: String) -> qwen_asr_realtime::ConnectParams {
    let mut p = qwen_asr_realtime::ConnectParams::new()
        .url(url)
        .api_key("test-key")
        .reconnect(fast_reconnect());
    p.timeouts.connect = Duration::from_secs(5);
    p.timeouts.handshake = Duration::from_secs(5);
    p
}

fn mid_utterance_fault(action: FaultAction) {
    // Append 28 ends at 2.8 s: inside the second tone (2.2 s to 3.2 s).
    let emu = start_emulator(recording(vec![Fault::AfterAppends { n: 28, action }]));
    let conv = Conversation::start(reconnecting_params(emu.url()), &SessionConfig::vad()).unwrap();
    let first_session = conv.session_id();
    let (audio, tones) = distinct_utterances(4);
    let events = stream_and_finish(&conv, &audio);
    let r = reconnected(&events);
    assert_eq!(r.len(), 1, "{:?}", types(&events));
    assert!(r[0].1 > 0, "audio was replayed");
    assert_ne!(
        conv.session_id(),
        first_session,
        "session_id() follows the new session"
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e.kind, EventKind::AudioDropped { .. })));
    assert_each_utterance_once(&le_bytes(&audio), &tones, &emu.sessions(), &events);
}

#[test]
fn server_close_1011_mid_utterance_reconnects_and_replays() {
    mid_utterance_fault(FaultAction::Close {
        code: 1011,
        reason: "model unavailable".into(),
    });
}

#[test]
fn tcp_reset_mid_utterance_reconnects_and_replays() {
    mid_utterance_fault(FaultAction::Reset);
}

#[test]
fn server_gone_then_back_reconnects() {
    let emu = start_emulator(recording(Vec::new()));
    let fwd = Forwarder::start(emu.local_addr());
    let conv = Conversation::start(reconnecting_params(fwd.url()), &SessionConfig::vad()).unwrap();
    let (audio, tones) = distinct_utterances(4);
    let (before, after) = audio.split_at(27 * CHUNK);
    for c in before.chunks(CHUNK) {
        conv.append_pcm(c).unwrap();
    }
    // The server process goes away: its connections end and nothing listens any more. It is
    // back a while later; meanwhile the client retries and the audio queues up (appends wait
    // when the queue is full, so the restart comes from another thread).
    fwd.stop_listening();
    fwd.cut();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            fwd.listen();
        });
        for c in after.chunks(CHUNK) {
            conv.append_pcm(c).unwrap();
        }
    });
    let ended = conv.end_session(WAIT);
    let events = collect_until_closed(&conv);
    ended.unwrap_or_else(|e| panic!("{e}: {:?}", types(&events)));
    assert_eq!(reconnected(&events).len(), 1);
    assert_each_utterance_once(&le_bytes(&audio), &tones, &emu.sessions(), &events);
}

#[test]
fn refused_connections_are_retried_until_one_is_accepted() {
    let emu = start_emulator(recording(Vec::new()));
    let fwd = Forwarder::start(emu.local_addr());
    let conv = Conversation::start(reconnecting_params(fwd.url()), &SessionConfig::vad()).unwrap();
    let (audio, tones) = distinct_utterances(3);
    let (before, after) = audio.split_at(25 * CHUNK);
    for c in before.chunks(CHUNK) {
        conv.append_pcm(c).unwrap();
    }
    fwd.refuse_next(3);
    fwd.cut();
    for c in after.chunks(CHUNK) {
        conv.append_pcm(c).unwrap();
    }
    let ended = conv.end_session(WAIT);
    let events = collect_until_closed(&conv);
    ended.unwrap_or_else(|e| panic!("{e}: {:?}", types(&events)));
    let r = reconnected(&events);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 4, "three refused attempts, the fourth accepted");
    assert_eq!(fwd.accepted(), 1 + 4);
    assert_each_utterance_once(&le_bytes(&audio), &tones, &emu.sessions(), &events);
}

#[test]
fn a_stalled_server_is_detected_as_dead_and_replaced() {
    let emu = start_emulator(recording(vec![Fault::AfterAppends {
        n: 28,
        action: FaultAction::Stall,
    }]));
    let mut params = reconnecting_params(emu.url());
    let mut ka = Keepalive::default();
    ka.ping_interval = Some(Duration::from_millis(100));
    ka.dead_peer_timeout = Duration::from_millis(500);
    params.keepalive = ka;
    let conv = Conversation::start(params, &SessionConfig::vad()).unwrap();
    let (audio, tones) = distinct_utterances(4);
    let events = stream_and_finish(&conv, &audio);
    assert_eq!(reconnected(&events).len(), 1, "{:?}", types(&events));
    // The stalled session keeps its socket open: the emulator counts it, the client does not.
    let sessions = emu.sessions();
    assert_each_utterance_once(&le_bytes(&audio), &tones, &sessions, &events);
}

#[test]
fn a_stalled_server_without_reconnect_ends_the_conversation_with_1006() {
    let emu = start_emulator(EmulatorConfig {
        faults: vec![Fault::AfterAppends {
            n: 1,
            action: FaultAction::Stall,
        }],
        ..Default::default()
    });
    let mut params = params_for(&emu);
    params.keepalive.ping_interval = Some(Duration::from_millis(100));
    params.keepalive.dead_peer_timeout = Duration::from_millis(400);
    let conv = Conversation::start(params, &SessionConfig::vad()).unwrap();
    conv.append_pcm(&burst(RATE, 100, 0)).unwrap();
    let events = collect_until_closed(&conv);
    match &events.last().unwrap().kind {
        EventKind::Closed { code: 1006, reason } => {
            assert!(reason.contains("dead_peer_timeout"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_401_at_reconnect_stops_without_a_retry_loop() {
    let open = start_emulator(EmulatorConfig::default());
    let locked = start_emulator(EmulatorConfig {
        api_key: Some("a-different-key".into()),
        ..Default::default()
    });
    let fwd = Forwarder::start(open.local_addr());
    let conv = Conversation::start(reconnecting_params(fwd.url()), &SessionConfig::vad()).unwrap();
    for c in utterances(RATE, 1).chunks(CHUNK) {
        conv.append_pcm(c).unwrap();
    }
    fwd.set_upstream(locked.local_addr());
    fwd.cut();
    let events = collect_until_closed(&conv);
    let failed = events.iter().find_map(|e| match &e.kind {
        EventKind::ReconnectFailed { attempts, error } => Some((*attempts, error.clone())),
        _ => None,
    });
    let (attempts, error) = failed.unwrap_or_else(|| panic!("{:?}", types(&events)));
    assert_eq!(attempts, 1);
    assert!(error.contains("401"), "{error}");
    assert_eq!(
        locked.rejected_handshakes(),
        1,
        "no retry loop against a rejected key"
    );
    assert!(matches!(
        events.last().unwrap().kind,
        EventKind::Closed { .. }
    ));
    assert!(matches!(
        conv.append_pcm(&[0; 160]),
        Err(Error::Closed { .. })
    ));
}

#[test]
fn no_session_finished_times_out_on_time_and_joins() {
    let emu = start_emulator(EmulatorConfig {
        faults: vec![Fault::InsteadOf {
            event_type: "session.finish".into(),
            action: FaultAction::Stall,
        }],
        ..Default::default()
    });
    let conv = Conversation::start(params_for(&emu), &SessionConfig::vad()).unwrap();
    conv.append_pcm(&utterances(RATE, 1)).unwrap();
    let limit = Duration::from_millis(300);
    match conv.end_session(limit) {
        Err(Error::Timeout {
            phase: Phase::EndSession,
            after,
        }) => assert_eq!(after, limit),
        other => panic!("{other:?}"),
    }
    assert!(conv.is_closed(), "closed and joined on return");
    let events = collect_until_closed(&conv);
    assert_eq!(
        transcripts(&events).len(),
        1,
        "what arrived before the stall was delivered"
    );
}

#[test]
fn replay_is_bounded_by_its_window_and_the_excess_is_reported() {
    // The server stops reading after 1 append and then drops the link; meanwhile 5 s are
    // sent, with a replay window of 2 s: about 3 s cannot be replayed and are reported.
    let emu = start_emulator(recording(vec![
        Fault::AfterAppends {
            n: 1,
            action: FaultAction::PauseReading(Duration::from_millis(400)),
        },
        Fault::AfterAppends {
            n: 2,
            action: FaultAction::Drop,
        },
    ]));
    let mut params = reconnecting_params(emu.url());
    let mut policy = fast_reconnect();
    policy.replay_window = Duration::from_secs(2);
    params.reconnect = Some(policy);
    let conv = Conversation::start(params, &SessionConfig::manual()).unwrap();
    let audio: Vec<i16> = burst(RATE, 5000, 0);
    for c in audio.chunks(CHUNK) {
        conv.append_pcm(c).unwrap();
    }
    conv.commit().unwrap();
    let ended = conv.end_session(WAIT);
    let events = collect_until_closed(&conv);
    ended.unwrap_or_else(|e| panic!("{e}: {:?}", types(&events)));
    let dropped = dropped_ms(&events);
    let (_, replayed) = reconnected(&events)[0];
    assert!(replayed <= 2000, "replayed {replayed} ms");
    let sessions = emu.sessions();
    let last = sessions.last().unwrap();
    // The new session got the replay, then whatever was still queued when the link died
    // (with the send buffer capped, appends wait for the link, so not all 5 s had left).
    let got = last.audio.bytes / 32;
    assert!(
        got >= replayed,
        "the new session got {got} ms, {replayed} replayed"
    );
    let sent = le_bytes(&audio);
    assert_eq!(
        &sent[sent.len() - last.audio_data.len()..],
        &last.audio_data[..],
        "the newest audio"
    );
    // Every millisecond is accounted for: in the session that transcribed it, or reported
    // lost (including what the old session got but never transcribed).
    assert_eq!(dropped + got, 5000, "lost {dropped} + transcribed {got}");
    assert_eq!(transcripts(&events).len(), 1);
}

#[test]
fn a_slow_reader_gets_every_final_transcript_with_bounded_buffering() {
    // Ten minutes of utterances streamed at full speed to a reader that is behind:
    // partials are coalesced, finals never dropped, and the queue stays near its bound.
    let emu = start_emulator(EmulatorConfig {
        partial_interval_ms: 100,
        ..Default::default()
    });
    let mut params = params_for(&emu);
    params.event_capacity = 32;
    let conv = Conversation::start(params, &SessionConfig::vad()).unwrap();
    let one = utterances(RATE, 1); // 2.2 s
    let count = 600 * 10 / 22; // ten minutes
                               // The reader reads nothing until the session is over: as far behind as a reader can be.
    for _ in 0..count {
        for c in one.chunks(CHUNK * 5) {
            conv.append_pcm(c).unwrap();
        }
    }
    conv.end_session(Duration::from_secs(60)).unwrap();
    let max_len = conv.pending_events();
    let (mut finals, mut partials) = (0usize, 0usize);
    for e in conv.iter() {
        match e.kind {
            EventKind::Completed(_) => finals += 1,
            EventKind::Partial(_) => partials += 1,
            _ => {}
        }
    }
    let s = &emu.sessions()[0];
    assert_eq!(finals, s.items.len(), "no final transcript lost");
    assert_eq!(finals, count);
    // Behind, each utterance's partials collapse to one (the newest before speech_stopped;
    // the last one is superseded by its completed), instead of about eleven.
    assert!(
        partials <= count + 32,
        "partials were not coalesced: {partials} for {count} utterances"
    );
    // The queue holds the bound plus the events that are never dropped (started, stopped,
    // committed, created, completed) and one partial per utterance, and the closing events.
    assert!(max_len <= 32 + 6 * count + 4, "queue peaked at {max_len}");
}

/// The server stops reading for a while, so the socket fills and blocking appends must wait
/// for room (in the caller's thread, see `Shared::write_direct`). Nothing may be lost,
/// doubled or reordered, over ws:// and over wss://.
#[test]
fn appends_wait_out_a_server_that_stops_reading_and_lose_nothing() {
    for tls in [false, true] {
        let cert = tls.then(self_signed_cert);
        let emu = start_emulator(EmulatorConfig {
            tls: cert
                .clone()
                .map(|(cert_pem, key_pem)| qwen_asr_emulator::TlsIdentity { cert_pem, key_pem }),
            ..recording(vec![Fault::AfterAppends {
                n: 1,
                action: FaultAction::PauseReading(Duration::from_millis(300)),
            }])
        });
        let mut params = params_for(&emu);
        if let Some((cert_pem, _)) = cert {
            params = params.root_certificate(cert_pem);
        }
        let conv = Conversation::start(params, &SessionConfig::manual()).unwrap();
        // 240 s of audio, 10.5 MB on the wire: more than loopback's socket buffers take (up
        // to 4 MB on the sending side, plus the receiver's window) while the server is not
        // reading, so the sender runs into a full socket; on the development machine it
        // waited for room three times in the two runs.
        let audio: Vec<i16> = (0..RATE as i64 * 240)
            .map(|i| ((i * 7919) % 65536 - 32768) as i16)
            .collect();
        for c in audio.chunks(CHUNK) {
            conv.append_pcm(c).expect("append");
        }
        conv.commit().unwrap();
        conv.end_session(WAIT)
            .unwrap_or_else(|e| panic!("tls {tls}: {e}"));
        let s = &emu.sessions()[0];
        assert_eq!(s.audio, digest(&audio), "tls {tls}: the audio as sent");
        assert_eq!(s.audio_data, le_bytes(&audio), "tls {tls}");
    }
}

#[test]
fn the_replay_starts_at_the_acknowledged_point_not_at_its_frame() {
    // Chunks of 93.75 ms: the first tone's end (1000 ms, byte 32,000) falls 2,000 bytes into
    // a chunk. The link dies inside the second tone; the new session must start at the first
    // tone's end (rounded down to 6 bytes within its chunk), not at the chunk holding it.
    const ODD_CHUNK: usize = 1500;
    let emu = start_emulator(recording(vec![Fault::AfterAppends {
        n: 28, // 2.625 s: inside the second tone (2.2 s to 3.2 s)
        action: FaultAction::Close {
            code: 1011,
            reason: "model unavailable".into(),
        },
    }]));
    let conv = Conversation::start(reconnecting_params(emu.url()), &SessionConfig::vad()).unwrap();
    let (audio, tones) = distinct_utterances(4);
    for c in audio.chunks(ODD_CHUNK) {
        conv.append_pcm(c).expect("append");
    }
    let ended = conv.end_session(WAIT);
    let events = collect_until_closed(&conv);
    ended.unwrap_or_else(|e| panic!("end_session: {e}; events {:?}", types(&events)));
    assert_eq!(reconnected(&events).len(), 1, "{:?}", types(&events));
    // The acknowledged point: where the last utterance completed before the reconnect ended.
    let before: Vec<&Event> = events
        .iter()
        .take_while(|e| !matches!(e.kind, EventKind::Reconnected { .. }))
        .collect();
    let done = before.iter().rev().find_map(|e| match &e.kind {
        EventKind::Completed(c) => c.item_id.clone(),
        _ => None,
    });
    let done = done.expect("the first tone was transcribed before the link died");
    let acked_ms = before
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::SpeechStopped {
                item_id: Some(id),
                audio_end_ms,
            } if *id == done => *audio_end_ms,
            _ => None,
        })
        .expect("its speech_stopped");
    let acked = acked_ms as usize * 32;
    let chunk_bytes = ODD_CHUNK * 2;
    let frame_start = acked / chunk_bytes * chunk_bytes;
    assert!(
        acked > frame_start,
        "the acknowledged point is inside a chunk"
    );
    let expected = frame_start + (acked - frame_start) / 6 * 6;
    let sent = le_bytes(&audio);
    let sessions = emu.sessions();
    assert_eq!(sessions.len(), 2);
    let replayed = &sessions[1].audio_data;
    let start = sent.len() - replayed.len();
    assert_eq!(
        start, expected,
        "the new session starts at the acknowledged byte {acked} (rounded to 6), \
         not at its chunk's start {frame_start}"
    );
    assert_eq!(&sent[start..], &replayed[..]);
    // The cut may resend up to 2 acknowledged samples (here the first tone's last one, close
    // to silence): the tones' last 6 bytes are left out of the overlap check.
    let trimmed: Vec<(usize, usize)> = tones.iter().map(|&(a, b)| (a, b - 6)).collect();
    assert_each_utterance_once(&sent, &trimmed, &sessions, &events);
}
