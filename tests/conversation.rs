//! Whole conversations against the emulator, a real WebSocket server on loopback: both modes,
//! ws:// and wss://, and every error path the foundation promises.

mod common;

use std::time::Duration;

use common::*;
use qwen_asr_emulator::{transcript_for, AudioDigest, EmulatorConfig, Fault, FaultAction};
use qwen_asr_realtime::{
    Callback, ConnectParams, Conversation, Error, Event, EventKind, Phase, SessionConfig,
};

fn send_in_chunks(conv: &Conversation, samples: &[i16], chunk: usize) {
    for c in samples.chunks(chunk) {
        conv.append_pcm(c).expect("append");
    }
}

/// The item id an event belongs to, for the per-utterance order check.
fn item_of(e: &Event) -> Option<String> {
    match &e.kind {
        EventKind::SpeechStarted { item_id, .. }
        | EventKind::SpeechStopped { item_id, .. }
        | EventKind::Committed { item_id, .. }
        | EventKind::ItemCreated { item_id, .. } => item_id.clone(),
        EventKind::Partial(p) => p.item_id.clone(),
        EventKind::Completed(c) => c.item_id.clone(),
        _ => None,
    }
}

#[test]
fn vad_session_delivers_every_byte_once_and_in_order() {
    let emu = start_emulator(EmulatorConfig::default());
    let conv = Conversation::start(params_for(&emu), &SessionConfig::vad()).unwrap();
    let audio = utterances(16000, 3);
    send_in_chunks(&conv, &audio, 1600);
    conv.end_session(WAIT).unwrap();
    let events = collect_until_closed(&conv);

    let sessions = emu.sessions();
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    assert_eq!(
        s.audio,
        digest(&audio),
        "the server got every byte once, in order"
    );
    assert_eq!(s.items.len(), 3);
    assert_eq!(conv.session_id().as_deref(), Some(s.id.as_str()));
    assert!(s.id.starts_with("sess_"));
    assert_eq!(conv.response_id(), None);

    // Each item's transcript is the emulator's digest of exactly that item's audio, and the
    // items tile the session's audio from its start.
    let mut offset = 0usize;
    let bytes = le_bytes(&audio);
    for item in &s.items {
        let len = item.audio.bytes as usize;
        assert_eq!(AudioDigest::of(&bytes[offset..offset + len]), item.audio);
        assert_eq!(item.transcript, transcript_for(item.audio, 16000));
        offset += len;
    }
    let want: Vec<String> = s.items.iter().map(|i| i.transcript.clone()).collect();
    assert_eq!(transcripts(&events), want);

    // Per utterance: started, stopped, committed, created, partial(s), completed, one id.
    for item in &s.items {
        let seq: Vec<&str> = events
            .iter()
            .filter(|e| item_of(e).as_deref() == Some(item.item_id.as_str()))
            .map(|e| e.type_name())
            .collect();
        let mut dedup = seq.clone();
        dedup.dedup();
        assert_eq!(
            dedup,
            [
                "input_audio_buffer.speech_started",
                "conversation.item.input_audio_transcription.text",
                "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed",
                "conversation.item.created",
                "conversation.item.input_audio_transcription.text",
                "conversation.item.input_audio_transcription.completed",
            ][..],
            "{seq:?}"
        );
    }
    let t = types(&events);
    assert_eq!(t.first().map(String::as_str), Some("session.created"));
    assert_eq!(t[1], "session.updated");
    assert_eq!(t[t.len() - 2], "session.finished");
    assert!(matches!(
        events.last().unwrap().kind,
        EventKind::Closed { code: 1000, .. }
    ));
    assert!(conv.is_closed());
}

#[test]
fn manual_session_commits_each_utterance() {
    let emu = start_emulator(EmulatorConfig::default());
    let conv = Conversation::start(params_for(&emu), &SessionConfig::manual()).unwrap();
    let first = burst(16000, 700, 100);
    let second = burst(16000, 300, 0);
    send_in_chunks(&conv, &first, 1600);
    conv.commit().unwrap();
    send_in_chunks(&conv, &second, 3200);
    conv.commit().unwrap();
    conv.end_session(WAIT).unwrap();
    let events = collect_until_closed(&conv);
    let s = &emu.sessions()[0];
    let items: Vec<AudioDigest> = s.items.iter().map(|i| i.audio).collect();
    assert_eq!(items, [digest(&first), digest(&second)]);
    assert_eq!(transcripts(&events).len(), 2);
    assert!(!types(&events).iter().any(|t| t.contains("speech_")));
    assert_eq!(s.config["turn_detection"], serde_json::Value::Null);
}

#[test]
fn the_wire_carries_the_sdk_client_events() {
    let emu = start_emulator(EmulatorConfig::default());
    let cfg = SessionConfig::manual()
        .language("en")
        .context("Raspberry Pi");
    let conv = Conversation::start(params_for(&emu), &cfg).unwrap();
    conv.append_pcm(&burst(16000, 200, 0)).unwrap();
    conv.commit().unwrap();
    conv.end_session(WAIT).unwrap();
    let s = &emu.sessions()[0];
    let ev = &s.client_events;
    let kinds: Vec<&str> = ev.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "session.update",
            "input_audio_buffer.commit",
            "session.finish"
        ]
    );
    for e in ev {
        let id = e["event_id"].as_str().unwrap();
        assert_eq!(id.len(), 38, "{id}");
        assert!(id.starts_with("event_"));
        assert!(id[6..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
    let session = &ev[0]["session"];
    assert_eq!(session["input_audio_transcription"]["language"], "en");
    assert_eq!(
        session["input_audio_transcription"]["corpus"]["text"],
        "Raspberry Pi"
    );
    assert_eq!(session["modalities"], serde_json::json!(["text"]));
    assert_eq!(s.appends, 1);
    let auth = s
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.as_str());
    assert_eq!(auth, Some("Bearer test-key"));
    assert!(s.query.contains("model=qwen3-asr-flash-realtime"));
}

#[test]
fn wss_with_a_self_signed_certificate_made_here() {
    let (cert, key) = self_signed_cert();
    let config = EmulatorConfig {
        tls: Some(qwen_asr_emulator::TlsIdentity {
            cert_pem: cert.clone(),
            key_pem: key,
        }),
        ..Default::default()
    };
    let emu = start_emulator(config);
    assert!(emu.url().starts_with("wss://"));

    // Not trusted: the certificate is verified and refused.
    match Conversation::connect(params_for(&emu)) {
        Err(Error::Tls(_)) | Err(Error::Handshake(_)) => {}
        other => panic!("an unknown certificate must be refused, got {other:?}"),
    }

    let conv = Conversation::start(
        params_for(&emu).root_certificate(cert),
        &SessionConfig::vad(),
    )
    .unwrap();
    let audio = utterances(16000, 2);
    send_in_chunks(&conv, &audio, 1600);
    conv.end_session(WAIT).unwrap();
    let events = collect_until_closed(&conv);
    assert_eq!(transcripts(&events).len(), 2);
    let sessions = emu.sessions();
    assert_eq!(sessions.last().unwrap().audio, digest(&audio));
}

#[test]
fn a_large_append_is_split_under_the_frame_cap_and_arrives_whole() {
    let emu = start_emulator(EmulatorConfig::default());
    let conv = Conversation::start(params_for(&emu), &SessionConfig::manual()).unwrap();
    // 20 s at once: 640 kB of PCM, about 853 kB of base64, over three times the 256 KiB cap.
    let audio: Vec<i16> = (0..320_000i64)
        .map(|i| ((i * 7919) % 65536 - 32768) as i16)
        .collect();
    conv.append_pcm(&audio).unwrap();
    conv.commit().unwrap();
    conv.end_session(WAIT).unwrap();
    let s = &emu.sessions()[0];
    assert_eq!(s.audio, digest(&audio));
    assert!(s.appends >= 4, "{} frames", s.appends);
    assert_ne!(s.close_code, Some(1009));

    // A small configured cap splits finer, still losslessly, also for base64 input.
    let mut params = params_for(&emu);
    params.max_frame_bytes = 4096;
    let conv = Conversation::start(params, &SessionConfig::manual()).unwrap();
    let b64 = base64_of(&le_bytes(&audio[..48_000]));
    conv.append_base64(&b64).unwrap();
    conv.append_bytes(&le_bytes(&audio[48_000..64_000]))
        .unwrap();
    conv.commit().unwrap();
    conv.end_session(WAIT).unwrap();
    let s = &emu.sessions()[1];
    assert_eq!(s.audio, digest(&audio[..64_000]));
    assert!(s.appends >= 128000 / 3000, "{} frames", s.appends);
}

/// Two threads append at once: one in appends split over several frames, the other in
/// single frames, which may go straight to the socket. Each append must reach the server in
/// one piece and each thread's appends in their order.
#[test]
fn appends_from_two_threads_never_interleave_and_keep_their_order() {
    let emu = start_emulator(EmulatorConfig {
        record_audio: true,
        ..Default::default()
    });
    let mut params = params_for(&emu);
    params.max_frame_bytes = 4096; // 6000 samples = 12 kB: four frames per large append
    let conv = Conversation::start(params, &SessionConfig::manual()).unwrap();
    const LARGE: (usize, usize) = (40, 6000); // appends, samples each
    const SMALL: (usize, usize) = (600, 160);
    let sender = conv.audio_sender();
    let small = std::thread::spawn(move || {
        for j in 0..SMALL.0 {
            sender
                .append_pcm(&[-1 - j as i16; SMALL.1])
                .expect("small append");
        }
    });
    for i in 0..LARGE.0 {
        conv.append_pcm(&vec![1 + i as i16; LARGE.1])
            .expect("large append");
    }
    small.join().unwrap();
    conv.commit().unwrap();
    conv.end_session(WAIT).unwrap();

    let s = &emu.sessions()[0];
    let samples: Vec<i16> = s
        .audio_data
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_eq!(samples.len(), LARGE.0 * LARGE.1 + SMALL.0 * SMALL.1);
    // Runs of one value: each append is exactly one run, and the runs of each thread come in
    // the order they were appended.
    let mut runs: Vec<(i16, usize)> = Vec::new();
    for &v in &samples {
        match runs.last_mut() {
            Some((last, n)) if *last == v => *n += 1,
            _ => runs.push((v, 1)),
        }
    }
    let large: Vec<(i16, usize)> = runs.iter().copied().filter(|r| r.0 > 0).collect();
    let small: Vec<(i16, usize)> = runs.iter().copied().filter(|r| r.0 < 0).collect();
    let expect_large: Vec<(i16, usize)> = (0..LARGE.0).map(|i| (1 + i as i16, LARGE.1)).collect();
    let expect_small: Vec<(i16, usize)> = (0..SMALL.0).map(|j| (-1 - j as i16, SMALL.1)).collect();
    assert_eq!(large, expect_large, "a large append was split or reordered");
    assert_eq!(small, expect_small, "a small append was split or reordered");
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn bad_audio_is_refused_and_nothing_accepted_is_lost() {
    let emu = start_emulator(EmulatorConfig::default());
    let conv = Conversation::start(params_for(&emu), &SessionConfig::manual()).unwrap();
    let good = burst(16000, 100, 0);
    conv.append_pcm(&good).unwrap();
    assert!(matches!(
        conv.append_bytes(&[1, 2, 3]),
        Err(Error::InvalidAudio(_))
    ));
    assert!(matches!(
        conv.append_base64("AAA"),
        Err(Error::InvalidAudio(_))
    ));
    assert!(matches!(
        conv.append_base64("AA*A"),
        Err(Error::InvalidAudio(_))
    ));
    assert!(
        matches!(conv.append_base64("AA=="), Err(Error::InvalidAudio(_))),
        "one byte is half a sample"
    );
    conv.commit().unwrap();
    conv.end_session(WAIT).unwrap();
    assert_eq!(emu.sessions()[0].audio, digest(&good));
}

#[test]
fn commit_errors_are_local_and_typed() {
    let emu = start_emulator(EmulatorConfig::default());
    let conv = Conversation::start(params_for(&emu), &SessionConfig::vad()).unwrap();
    assert!(matches!(conv.commit(), Err(Error::CommitInVadMode)));
    conv.update_session(&SessionConfig::manual()).unwrap();
    assert!(matches!(conv.commit(), Err(Error::EmptyCommit)));
    conv.append_pcm(&burst(16000, 100, 0)).unwrap();
    conv.commit().unwrap();
    assert!(
        matches!(conv.commit(), Err(Error::EmptyCommit)),
        "nothing appended since the last commit"
    );
    conv.end_session(WAIT).unwrap();
    let kinds: Vec<String> = emu.sessions()[0]
        .client_events
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "input_audio_buffer.commit")
            .count(),
        1,
        "{kinds:?}"
    );
}

#[test]
fn out_of_range_settings_are_refused_before_anything_is_sent() {
    let emu = start_emulator(EmulatorConfig::default());
    match Conversation::start(
        params_for(&emu),
        &SessionConfig::vad().silence_duration_ms(100),
    ) {
        Err(Error::InvalidConfig { field, message }) => {
            assert_eq!(field, "turn_detection.silence_duration_ms");
            assert!(message.contains("[200, 6000]"));
        }
        other => panic!("{other:?}"),
    }
    assert!(emu.sessions().is_empty(), "no connection was made");
    let conv = Conversation::connect(params_for(&emu)).unwrap();
    let err = conv
        .update_session(&SessionConfig::vad().threshold(-1.5))
        .unwrap_err();
    assert!(
        err.to_string().contains("turn_detection.threshold"),
        "{err}"
    );
    conv.close();
    assert!(emu.sessions()[0].client_events.is_empty());
}

#[test]
fn a_wrong_key_is_an_authentication_error_with_the_status() {
    let config = EmulatorConfig {
        api_key: Some("the-right-key".into()),
        ..Default::default()
    };
    let emu = start_emulator(config);
    match Conversation::connect(params_for(&emu)) {
        Err(Error::Authentication { status, body }) => {
            assert_eq!(status, 401);
            assert!(!body.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(emu.rejected_handshakes(), 1);
    let ok = Conversation::connect(params_for(&emu).api_key("the-right-key")).unwrap();
    ok.close();
}

#[test]
fn a_different_model_served_is_an_error() {
    let config = EmulatorConfig {
        served_model: Some("qwen-omni-turbo-realtime".into()),
        ..Default::default()
    };
    let emu = start_emulator(config);
    match Conversation::connect(params_for(&emu).model("qwen3-asr-flash-realtme")) {
        Err(Error::ModelMismatch { requested, served }) => {
            assert_eq!(requested, "qwen3-asr-flash-realtme");
            assert_eq!(served, "qwen-omni-turbo-realtime");
        }
        other => panic!("{other:?}"),
    }
    let config = EmulatorConfig {
        served_model: Some("qwen3-asr-flash-realtime-2025-10-27".into()),
        ..Default::default()
    };
    let emu = start_emulator(config);
    Conversation::connect(params_for(&emu))
        .expect("a dated snapshot is the same model")
        .close();
}

#[test]
fn odd_frames_and_error_events_mid_stream_are_surfaced_and_the_session_goes_on() {
    let config = EmulatorConfig {
        faults: vec![
            Fault::AfterAppends {
                n: 2,
                action: FaultAction::SendText("{not json".into()),
            },
            Fault::AfterAppends {
                n: 3,
                action: FaultAction::SendBinary(vec![1, 2, 3]),
            },
            Fault::AfterAppends {
                n: 4,
                action: FaultAction::SendText(r#"{"type":"response.done","x":1}"#.into()),
            },
            Fault::AfterAppends {
                n: 5,
                action: FaultAction::SendError {
                    code: "InternalError".into(),
                    message: "Internal service error: null".into(),
                },
            },
            Fault::AfterAppends {
                n: 6,
                action: FaultAction::SendText(
                    r#"{"type":"input_audio_buffer.speech_started","audio_start_ms":"soon"}"#
                        .into(),
                ),
            },
        ],
        ..Default::default()
    };
    let emu = start_emulator(config);
    let conv = Conversation::start(params_for(&emu), &SessionConfig::vad()).unwrap();
    let audio = utterances(16000, 2);
    send_in_chunks(&conv, &audio, 1600);
    // The error event names no request: had it arrived while end_session waited, it would
    // have been taken as the answer (as the Python SDK does). Read up to it first.
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e: &Event| matches!(e.kind, EventKind::Error(_)))
    {
        events.push(conv.recv_timeout(WAIT).expect("the error event"));
    }
    conv.end_session(WAIT).unwrap();
    events.extend(collect_until_closed(&conv));

    let malformed: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Malformed { .. }))
        .collect();
    assert_eq!(malformed.len(), 2, "{:?}", types(&events));
    assert_eq!(malformed[0].raw(), Some("{not json"));
    assert!(malformed[0].to_json_line().contains("client.malformed"));
    assert!(
        malformed[1].raw().unwrap().contains("soon"),
        "a wrong field type is malformed, kept whole"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e.kind, EventKind::Binary { len: 3 })));
    let unknown = events
        .iter()
        .find(|e| matches!(&e.kind, EventKind::Unknown { event_type } if event_type == "response.done"))
        .expect("unknown events are forwarded");
    assert_eq!(unknown.to_json_line(), r#"{"type":"response.done","x":1}"#);
    let error = events.iter().find_map(|e| match &e.kind {
        EventKind::Error(err) => Some(err.clone()),
        _ => None,
    });
    assert_eq!(error.and_then(|e| e.code).as_deref(), Some("InternalError"));
    assert_eq!(transcripts(&events).len(), 2, "the session went on");
    assert_eq!(emu.sessions()[0].audio, digest(&audio));
}

#[test]
fn the_server_closing_mid_utterance_ends_the_stream_with_its_code() {
    let config = EmulatorConfig {
        faults: vec![Fault::AfterAppends {
            n: 5,
            action: FaultAction::Close {
                code: 1011,
                reason: "model unavailable".into(),
            },
        }],
        ..Default::default()
    };
    let emu = start_emulator(config);
    let conv = Conversation::start(params_for(&emu), &SessionConfig::vad()).unwrap();
    let audio = burst(16000, 1000, 0);
    for c in audio.chunks(1600).take(5) {
        conv.append_pcm(c).unwrap();
    }
    let events = collect_until_closed(&conv);
    match &events.last().unwrap().kind {
        EventKind::Closed { code, reason } => {
            assert_eq!(*code, 1011);
            assert_eq!(reason, "model unavailable");
        }
        other => panic!("{other:?}"),
    }
    assert!(conv.is_closed());
    assert!(matches!(
        conv.append_pcm(&audio[..1600]),
        Err(Error::Closed { .. })
    ));
    assert!(matches!(
        conv.end_session(Duration::from_secs(1)),
        Err(Error::Closed { .. })
    ));
}

#[test]
fn an_error_event_while_ending_ends_end_session_with_that_error() {
    let config = EmulatorConfig {
        faults: vec![Fault::InsteadOf {
            event_type: "session.finish".into(),
            action: FaultAction::SendError {
                code: "Arrearage".into(),
                message: "Access denied".into(),
            },
        }],
        ..Default::default()
    };
    let emu = start_emulator(config);
    let conv = Conversation::start(params_for(&emu), &SessionConfig::manual()).unwrap();
    conv.append_pcm(&burst(16000, 100, 0)).unwrap();
    match conv.end_session(WAIT) {
        Err(Error::Server(e)) => assert_eq!(e.code.as_deref(), Some("Arrearage")),
        other => panic!("{other:?}"),
    }
    assert!(conv.is_closed());
    let events = collect_until_closed(&conv);
    assert!(matches!(
        events.last().unwrap().kind,
        EventKind::Closed { code: 1000, .. }
    ));
}

#[test]
fn eight_khz_sessions_work() {
    let emu = start_emulator(EmulatorConfig::default());
    let conv =
        Conversation::start(params_for(&emu), &SessionConfig::vad().sample_rate(8000)).unwrap();
    let audio = utterances(8000, 1);
    send_in_chunks(&conv, &audio, 800);
    conv.end_session(WAIT).unwrap();
    let events = collect_until_closed(&conv);
    let s = &emu.sessions()[0];
    assert_eq!(s.config["sample_rate"], 8000);
    assert_eq!(
        transcripts(&events),
        [transcript_for(s.items[0].audio, 8000)]
    );
}

#[derive(Default)]
struct Recorder {
    calls: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Callback for Recorder {
    fn on_open(&mut self) {
        self.calls.lock().unwrap().push("open".into());
    }
    fn on_event(&mut self, event: &Event) {
        self.calls
            .lock()
            .unwrap()
            .push(event.type_name().to_owned());
    }
    fn on_error(&mut self, error: &Error) {
        self.calls.lock().unwrap().push(format!("error {error}"));
    }
    fn on_close(&mut self, code: u16, _reason: &str) {
        self.calls.lock().unwrap().push(format!("close {code}"));
    }
}

#[test]
fn the_callback_adapter_calls_open_events_and_close_in_order() {
    let emu = start_emulator(EmulatorConfig::default());
    let conv = Conversation::start(params_for(&emu), &SessionConfig::manual()).unwrap();
    let recorder = Recorder::default();
    let calls = recorder.calls.clone();
    let thread = conv.spawn_callback(recorder).unwrap();
    conv.append_pcm(&burst(16000, 200, 0)).unwrap();
    conv.commit().unwrap();
    conv.end_session(WAIT).unwrap();
    thread.join();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.first().map(String::as_str), Some("open"));
    assert_eq!(calls[1], "session.created");
    assert!(calls.contains(&"conversation.item.input_audio_transcription.completed".to_owned()));
    assert_eq!(calls.last().map(String::as_str), Some("close 1000"));
    assert!(!calls.iter().any(|c| c.starts_with("error")));
}

#[test]
fn connecting_to_a_closed_port_is_a_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let params = ConnectParams::new()
        .url(format!("ws://127.0.0.1:{port}/api-ws/v1/realtime"))
        .api_key("k");
    match Conversation::connect(params) {
        Err(Error::Io {
            phase: Phase::Connect,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_utf8_and_deep_nesting_become_client_events_and_the_session_goes_on() {
    let config = EmulatorConfig {
        faults: vec![
            Fault::AfterAppends {
                n: 1,
                action: FaultAction::SendRawText(vec![b'{', 0xff, 0xfe, b'}']),
            },
            Fault::AfterAppends {
                n: 2,
                action: FaultAction::SendText("[".repeat(5000)),
            },
            Fault::AfterAppends {
                n: 3,
                action: FaultAction::SendText(
                    r#"{"type":"input_audio_buffer.speech_stopped","audio_end_ms":1e999}"#.into(),
                ),
            },
        ],
        ..Default::default()
    };
    let emu = start_emulator(config);
    let conv = Conversation::start(params_for(&emu), &SessionConfig::manual()).unwrap();
    let audio = burst(16000, 500, 0);
    send_in_chunks(&conv, &audio, 1600);
    conv.commit().unwrap();
    conv.end_session(WAIT).unwrap();
    let events = collect_until_closed(&conv);
    let reasons: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Malformed { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("UTF-8"), "{reasons:?}");
    assert_eq!(transcripts(&events).len(), 1);
}

#[test]
fn an_oversized_server_message_closes_with_1009() {
    let config = EmulatorConfig {
        faults: vec![Fault::AfterAppends {
            n: 1,
            action: FaultAction::SendText(format!(
                r#"{{"type":"x","pad":"{}"}}"#,
                "a".repeat(2 << 20)
            )),
        }],
        ..Default::default()
    };
    let emu = start_emulator(config);
    let conv = Conversation::start(params_for(&emu), &SessionConfig::vad()).unwrap();
    conv.append_pcm(&burst(16000, 100, 0)).unwrap();
    let events = collect_until_closed(&conv);
    assert!(
        matches!(
            events.last().unwrap().kind,
            EventKind::Closed { code: 1009, .. }
        ),
        "{:?}",
        types(&events)
    );
}

/// The client's language list against the emulator's own copy of the service's: every code the
/// client lets through is one the service accepts (a code the client knows and the service does
/// not would fail `start` with the server's error instead of a local one).
#[test]
fn every_language_the_client_accepts_the_emulator_accepts_too() {
    let emu = start_emulator(EmulatorConfig::default());
    for code in qwen_asr_realtime::config::LANGUAGES {
        let conv = Conversation::start(params_for(&emu), &SessionConfig::vad().language(code))
            .unwrap_or_else(|e| panic!("language {code}: {e}"));
        conv.end_session(WAIT)
            .unwrap_or_else(|e| panic!("language {code}: {e}"));
    }
    let sessions = emu.sessions();
    assert_eq!(sessions.len(), qwen_asr_realtime::config::LANGUAGES.len());
    for (s, code) in sessions.iter().zip(qwen_asr_realtime::config::LANGUAGES) {
        assert_eq!(s.config["input_audio_transcription"]["language"], code);
    }
}
