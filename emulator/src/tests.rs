//! The emulator driven by a raw tungstenite client over loopback, as a client library would
//! see it. Every wait is bounded (socket read timeouts, bounded loops).

use std::io;
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::error::ProtocolError;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Error as WsError, HandshakeError, Message, WebSocket};

use super::*;

type Client = WebSocket<TcpStream>;

const READ_TIMEOUT: Duration = Duration::from_secs(10);
const RATE: u32 = 16000;

fn start(config: EmulatorConfig) -> Emulator {
    Emulator::start(config).expect("emulator starts")
}

fn with_faults(faults: Vec<Fault>) -> Emulator {
    start(EmulatorConfig {
        faults,
        ..EmulatorConfig::default()
    })
}

fn connect_with(emu: &Emulator, url_tail: &str, auth: Option<&str>) -> Result<Client, WsError> {
    let mut req = format!("{}{url_tail}", emu.url()).into_client_request()?;
    if let Some(a) = auth {
        req.headers_mut()
            .insert("Authorization", a.parse().expect("header value"));
    }
    req.headers_mut().insert(
        "X-DashScope-WorkSpace",
        "ws-test".parse().expect("header value"),
    );
    let tcp = TcpStream::connect(emu.local_addr()).expect("connect");
    tcp.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    match tungstenite::client::client(req, tcp) {
        Ok((ws, _)) => Ok(ws),
        Err(HandshakeError::Failure(e)) => Err(e),
        Err(HandshakeError::Interrupted(_)) => panic!("blocking handshake interrupted"),
    }
}

/// Connects and reads `session.created`.
fn connect(emu: &Emulator) -> (Client, Value) {
    let mut ws = connect_with(emu, "?model=qwen3-asr-flash-realtime", None).expect("handshake");
    let created = recv(&mut ws);
    assert_eq!(created["type"], "session.created");
    (ws, created)
}

fn recv(ws: &mut Client) -> Value {
    for _ in 0..100 {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON event"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
    panic!("no text frame");
}

/// Events up to and including the first of type `until`.
fn events_until(ws: &mut Client, until: &str) -> Vec<Value> {
    let mut events = Vec::new();
    for _ in 0..10_000 {
        let e = recv(ws);
        let done = e["type"] == until;
        events.push(e);
        if done {
            return events;
        }
    }
    panic!("no {until}");
}

/// Reads up to the server's close frame, answers it, and returns its code.
fn expect_close(ws: &mut Client) -> (u16, String) {
    for _ in 0..10_000 {
        match ws.read() {
            Ok(Message::Close(Some(f))) => {
                let _ = ws.flush();
                return (u16::from(f.code), f.reason.as_str().to_owned());
            }
            Ok(Message::Close(None)) => panic!("close frame without a code"),
            Ok(_) => {}
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
    panic!("no close frame");
}

fn send(ws: &mut Client, v: Value) {
    ws.send(Message::text(v.to_string())).expect("send");
}

fn append(ws: &mut Client, pcm: &[u8]) {
    let audio = base64::engine::general_purpose::STANDARD.encode(pcm);
    send(
        ws,
        json!({"event_id": "event_append", "type": "input_audio_buffer.append", "audio": audio}),
    );
}

fn update(ws: &mut Client, event_id: &str, session: Value) -> Value {
    send(
        ws,
        json!({"event_id": event_id, "type": "session.update", "session": session}),
    );
    recv(ws)
}

fn finish(ws: &mut Client) -> Vec<Value> {
    send(
        ws,
        json!({"event_id": "event_finish", "type": "session.finish"}),
    );
    let events = events_until(ws, "session.finished");
    assert_eq!(expect_close(ws).0, 1000);
    events
}

/// A 440 Hz sine of amplitude 8000 (-15 dBFS RMS): speech at any threshold.
fn tone(ms: u64) -> Vec<u8> {
    let n = RATE as u64 * ms / 1000;
    (0..n)
        .flat_map(|i| {
            let t = i as f64 / f64::from(RATE);
            ((8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16).to_le_bytes()
        })
        .collect()
}

fn silence(ms: u64) -> Vec<u8> {
    vec![0; (RATE as u64 * ms / 1000 * 2) as usize]
}

fn send_audio(ws: &mut Client, audio: &[u8], chunk: usize) {
    for c in audio.chunks(chunk) {
        append(ws, c);
    }
}

fn is_id(s: &Value, prefix: &str) -> bool {
    s.as_str().is_some_and(|s| {
        s.strip_prefix(prefix)
            .is_some_and(|r| r.len() == 21 && r.chars().all(|c| c.is_ascii_alphanumeric()))
    })
}

/// Checks the events of a session (up to `session.finished`) against the protocol's order and
/// returns the `completed` events. VAD utterances: speech_started, partials, speech_stopped,
/// committed, item.created, ≥ 1 partial, completed; Manual ones start at committed. One
/// item_id throughout an utterance; previous_item_id chains them.
fn check_sequence(events: &[Value], vad: bool) -> Vec<Value> {
    let mut completed = Vec::new();
    let mut previous = Value::Null;
    let mut it = events.iter().peekable();
    let next = |it: &mut std::iter::Peekable<std::slice::Iter<'_, Value>>, ty: &str| -> Value {
        let e = it.next().unwrap_or_else(|| panic!("missing {ty}"));
        assert_eq!(e["type"], ty, "in {events:#?}");
        assert!(is_id(&e["event_id"], "event_"));
        e.clone()
    };
    let partial = "conversation.item.input_audio_transcription.text";
    loop {
        let Some(first) = it.peek() else {
            panic!("no session.finished")
        };
        if first["type"] == "session.finished" {
            it.next();
            assert!(it.next().is_none());
            return completed;
        }
        let id;
        if vad {
            let started = next(&mut it, "input_audio_buffer.speech_started");
            id = started["item_id"].clone();
            assert!(started["audio_start_ms"].is_u64());
            while it.peek().is_some_and(|e| e["type"] == partial) {
                let p = next(&mut it, partial);
                assert_eq!(p["item_id"], id);
                assert_eq!(p["text"], "");
            }
            let stopped = next(&mut it, "input_audio_buffer.speech_stopped");
            assert_eq!(stopped["item_id"], id);
            assert!(stopped["audio_end_ms"].as_u64() > started["audio_start_ms"].as_u64());
        } else {
            id = it.peek().map(|e| e["item_id"].clone()).unwrap_or_default();
        }
        assert!(is_id(&id, "item_"), "item id {id}");
        let committed = next(&mut it, "input_audio_buffer.committed");
        assert_eq!(committed["item_id"], id);
        assert_eq!(committed["previous_item_id"], previous);
        let created = next(&mut it, "conversation.item.created");
        assert_eq!(created["previous_item_id"], previous);
        let item = &created["item"];
        assert_eq!(item["id"], id);
        assert_eq!(item["object"], "realtime.item");
        assert_eq!(item["type"], "message");
        assert_eq!(item["status"], "completed");
        assert_eq!(item["role"], "user");
        assert_eq!(
            item["content"],
            json!([{"type": "input_audio", "transcript": null}])
        );
        let mut last_partial = next(&mut it, partial);
        while it.peek().is_some_and(|e| e["type"] == partial) {
            last_partial = next(&mut it, partial);
        }
        assert_eq!(last_partial["item_id"], id);
        let done = next(
            &mut it,
            "conversation.item.input_audio_transcription.completed",
        );
        assert_eq!(done["item_id"], id);
        assert_eq!(done["content_index"], 0);
        assert_eq!(done["emotion"], "neutral");
        let preview = format!(
            "{}{}",
            last_partial["text"].as_str().unwrap_or_default(),
            last_partial["stash"].as_str().unwrap_or_default()
        );
        assert_eq!(done["transcript"].as_str(), Some(preview.as_str()));
        assert!(!last_partial["text"].as_str().unwrap_or_default().is_empty());
        previous = id;
        completed.push(done);
    }
}

fn threads_named(prefix: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| name.trim_end().starts_with(prefix))
        .count()
}

/// Joined threads' kernel tasks can outlive the join by a moment (the kernel wakes the joiner
/// before it removes the task), so look a few times.
fn no_threads_left(prefix: &str) -> bool {
    for _ in 0..200 {
        if threads_named(prefix) == 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

// ---- digest ---------------------------------------------------------------------------------

#[test]
fn crc32_matches_the_ieee_check_value() {
    assert_eq!(AudioDigest::of(b"123456789").crc32, 0xcbf4_3926);
    assert_eq!(AudioDigest::of(b""), AudioDigest::default());
    let mut d = AudioDigest::default();
    for piece in [&b"12"[..], b"", b"3456", b"789"] {
        d.update(piece);
    }
    assert_eq!(
        d,
        AudioDigest {
            bytes: 9,
            crc32: 0xcbf4_3926
        }
    );
}

#[test]
fn transcript_names_duration_size_and_crc() {
    let d = AudioDigest {
        bytes: 58880,
        crc32: 0x9a3f_12c0,
    };
    assert_eq!(
        transcript_for(d, 16000),
        "[1.84 s · 58880 bytes · crc32 9a3f12c0]"
    );
    assert_eq!(
        transcript_for(d, 8000),
        "[3.68 s · 58880 bytes · crc32 9a3f12c0]"
    );
}

// ---- handshake --------------------------------------------------------------------------------

#[test]
fn session_created_has_the_documented_shape() {
    let emu = start(EmulatorConfig::default());
    let (mut ws, created) = connect(&emu);
    assert!(is_id(&created["event_id"], "event_"));
    let s = &created["session"];
    assert!(is_id(&s["id"], "sess_"), "{s}");
    assert_eq!(
        s,
        &json!({
            "id": s["id"],
            "object": "realtime.session",
            "model": "qwen3-asr-flash-realtime",
            "modalities": ["text"],
            "input_audio_format": "pcm",
            "sample_rate": 16000,
            "input_audio_transcription": {"model": "qwen3-asr-flash-realtime"},
            "turn_detection": {"type": "server_vad", "threshold": 0.2, "silence_duration_ms": 800},
        })
    );
    ws.close(None).expect("close");
    let _ = ws.read();
    assert!(emu.wait_for_sessions_closed(1, READ_TIMEOUT));
    let rec = &emu.sessions()[0];
    assert_eq!(rec.id, s["id"]);
    assert_eq!(&rec.config, s);
    assert_eq!(rec.query, "model=qwen3-asr-flash-realtime");
    assert_eq!(rec.header("x-dashscope-workspace"), Some("ws-test"));
    assert_eq!(rec.close_code, Some(1005));
    assert!(!rec.finished);
}

#[test]
fn model_comes_from_the_query_unless_overridden() {
    let emu = start(EmulatorConfig::default());
    let mut a = connect_with(&emu, "?model=qwen3-asr-flash-realtime-2026-02-10", None).unwrap();
    assert_eq!(
        recv(&mut a)["session"]["model"],
        "qwen3-asr-flash-realtime-2026-02-10"
    );
    let mut b = connect_with(&emu, "", None).unwrap();
    assert_eq!(recv(&mut b)["session"]["model"], DEFAULT_MODEL);

    let omni = start(EmulatorConfig {
        served_model: Some("qwen-omni-turbo-realtime".into()),
        ..EmulatorConfig::default()
    });
    let mut c = connect_with(&omni, "?model=qwen3-asr-flash-realtime", None).unwrap();
    let s = recv(&mut c)["session"].clone();
    assert_eq!(s["model"], "qwen-omni-turbo-realtime");
    assert_eq!(
        s["input_audio_transcription"]["model"],
        "qwen-omni-turbo-realtime"
    );
}

#[test]
fn wrong_or_missing_api_key_gets_401() {
    let emu = start(EmulatorConfig {
        api_key: Some("sk-good".into()),
        ..EmulatorConfig::default()
    });
    for auth in [Some("Bearer sk-bad"), None, Some("sk-good")] {
        match connect_with(&emu, "?model=m", auth) {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status(), 401);
                let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
                assert!(body.contains("InvalidApiKey"), "{body}");
            }
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
    }
    for auth in ["Bearer sk-good", "bearer sk-good"] {
        let mut ws = connect_with(&emu, "?model=m", Some(auth)).expect("accepted");
        assert_eq!(recv(&mut ws)["type"], "session.created");
    }
    assert_eq!(emu.rejected_handshakes(), 3);
    let sessions = emu.sessions();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[1].header("Authorization"), Some("bearer sk-good"));
}

#[test]
fn wrong_path_gets_404() {
    let emu = start(EmulatorConfig::default());
    let url = emu.url().replace(PATH, "/api-ws/v1/inference");
    let tcp = TcpStream::connect(emu.local_addr()).unwrap();
    tcp.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    match tungstenite::client::client(url, tcp) {
        Err(HandshakeError::Failure(WsError::Http(resp))) => assert_eq!(resp.status(), 404),
        other => panic!(
            "expected 404, got {:?}",
            other.map(|_| ()).map_err(|e| e.to_string())
        ),
    }
    assert_eq!(emu.rejected_handshakes(), 1);
    assert!(emu.sessions().is_empty());
}

// ---- session.update ---------------------------------------------------------------------------

#[test]
fn session_update_merges_and_echoes_in_vad_mode() {
    let emu = start(EmulatorConfig::default());
    let (mut ws, created) = connect(&emu);
    let id = created["session"]["id"].clone();
    // What Python 2.0.2 sends, undocumented fields included.
    let updated = update(
        &mut ws,
        "event_1",
        json!({"modalities": ["text"], "voice": null, "input_audio_format": "pcm",
               "output_audio_format": "pcm16",
               "input_audio_transcription": {"language": "zh", "corpus": {"text": "ctx"}},
               "turn_detection": {"type": "server_vad", "threshold": 0.0,
                                  "prefix_padding_ms": 300, "silence_duration_ms": 400},
               "sample_rate": 16000}),
    );
    assert_eq!(updated["type"], "session.updated");
    let expected = json!({
        "id": id,
        "object": "realtime.session",
        "model": "qwen3-asr-flash-realtime",
        "modalities": ["text"],
        "input_audio_format": "pcm",
        "sample_rate": 16000,
        "input_audio_transcription": {"model": "qwen3-asr-flash-realtime", "language": "zh"},
        "turn_detection": {"type": "server_vad", "threshold": 0.0, "silence_duration_ms": 400},
    });
    assert_eq!(updated["session"], expected);
    // A partial update keeps the rest.
    let updated = update(
        &mut ws,
        "event_2",
        json!({"sample_rate": 8000, "turn_detection": {"type": "server_vad", "threshold": 0.5}}),
    );
    let mut expected = expected;
    expected["sample_rate"] = json!(8000);
    expected["turn_detection"]["threshold"] = json!(0.5);
    assert_eq!(updated["session"], expected);
    // Boundary values are accepted, and every documented format.
    for (i, s) in [
        json!({"turn_detection": {"type": "server_vad", "threshold": -1, "silence_duration_ms": 200}}),
        json!({"turn_detection": {"type": "server_vad", "threshold": 1, "silence_duration_ms": 6000}}),
        json!({"input_audio_format": "pcm16"}),
        json!({"input_audio_format": "opus"}),
        json!({"input_audio_format": "wav"}),
    ]
    .into_iter()
    .enumerate()
    {
        let r = update(&mut ws, &format!("event_b{i}"), s.clone());
        assert_eq!(r["type"], "session.updated", "{s} -> {r}");
    }
    let echoed = update(&mut ws, "event_3", json!({}))["session"].clone();
    assert_eq!(echoed["input_audio_format"], "wav");
    assert_eq!(
        echoed["turn_detection"],
        json!({"type": "server_vad", "threshold": 1.0, "silence_duration_ms": 6000})
    );
    drop(ws);
    assert!(emu.wait_for_sessions_closed(1, READ_TIMEOUT));
    let rec = &emu.sessions()[0];
    assert_eq!(rec.config, echoed);
    assert_eq!(rec.client_events.len(), 8);
    assert_eq!(rec.client_events[0]["event_id"], "event_1");
}

#[test]
fn session_update_to_manual_mode_echoes_null_turn_detection() {
    let emu = start(EmulatorConfig::default());
    let (mut ws, _) = connect(&emu);
    let s = update(
        &mut ws,
        "event_1",
        json!({"input_audio_transcription": {"language": "ja"}, "turn_detection": null}),
    )["session"]
        .clone();
    assert_eq!(s["turn_detection"], Value::Null);
    assert_eq!(
        s["input_audio_transcription"],
        json!({"model": "qwen3-asr-flash-realtime", "language": "ja"})
    );
    // Without turn_detection the mode stays Manual; language null returns to detection.
    let s = update(
        &mut ws,
        "event_2",
        json!({"input_audio_transcription": {"language": null}}),
    )["session"]
        .clone();
    assert_eq!(s["turn_detection"], Value::Null);
    assert_eq!(
        s["input_audio_transcription"],
        json!({"model": "qwen3-asr-flash-realtime"})
    );
    // Back to VAD: defaults for what is not given.
    let s = update(
        &mut ws,
        "event_3",
        json!({"turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}),
    )["session"]
        .clone();
    assert_eq!(
        s["turn_detection"],
        json!({"type": "server_vad", "threshold": 0.2, "silence_duration_ms": 500})
    );
}

#[test]
fn invalid_session_update_is_an_error_and_changes_nothing() {
    let emu = start(EmulatorConfig::default());
    let (mut ws, created) = connect(&emu);
    let before = created["session"].clone();
    let td = |extra: Value| {
        let mut t = json!({"type": "server_vad"});
        if let (Some(t), Value::Object(e)) = (t.as_object_mut(), extra) {
            t.extend(e);
        }
        json!({"turn_detection": t})
    };
    let cases = [
        (
            td(json!({"threshold": 1.5})),
            "session.turn_detection.threshold",
        ),
        (
            td(json!({"threshold": -1.01})),
            "session.turn_detection.threshold",
        ),
        (
            td(json!({"threshold": "0.2"})),
            "session.turn_detection.threshold",
        ),
        (
            td(json!({"silence_duration_ms": 199})),
            "session.turn_detection.silence_duration_ms",
        ),
        (
            td(json!({"silence_duration_ms": 6001})),
            "session.turn_detection.silence_duration_ms",
        ),
        (
            td(json!({"silence_duration_ms": 400.5})),
            "session.turn_detection.silence_duration_ms",
        ),
        (
            json!({"turn_detection": {"type": "semantic_vad"}}),
            "session.turn_detection.type",
        ),
        (
            json!({"turn_detection": {"threshold": 0.1}}),
            "session.turn_detection.type",
        ),
        (json!({"turn_detection": true}), "session.turn_detection"),
        (json!({"sample_rate": 44100}), "session.sample_rate"),
        (json!({"sample_rate": "16000"}), "session.sample_rate"),
        (
            json!({"input_audio_format": "mp3"}),
            "session.input_audio_format",
        ),
        (
            json!({"input_audio_transcription": {"language": "xx"}}),
            "session.input_audio_transcription.language",
        ),
        (
            json!({"input_audio_transcription": {"language": "auto"}}),
            "session.input_audio_transcription.language",
        ),
        // One bad field rejects the whole update: the valid sample rate is not applied.
        (
            json!({"sample_rate": 8000, "turn_detection": {"type": "server_vad", "threshold": 2}}),
            "session.turn_detection.threshold",
        ),
    ];
    for (i, (session, param)) in cases.iter().enumerate() {
        let event_id = format!("event_bad_{i}");
        let e = update(&mut ws, &event_id, session.clone());
        assert_eq!(e["type"], "error", "{session} -> {e}");
        let err = &e["error"];
        assert_eq!(err["type"], "invalid_request_error");
        assert_eq!(err["code"], "invalid_value");
        assert_eq!(err["param"], *param, "{session}");
        assert_eq!(err["event_id"], event_id.as_str());
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let e = update(&mut ws, "event_x", json!("not an object"));
    assert_eq!(e["error"]["param"], "session");
    let unchanged = update(&mut ws, "event_ok", json!({}));
    assert_eq!(unchanged["type"], "session.updated");
    assert_eq!(unchanged["session"], before);
    assert_eq!(emu.sessions()[0].config, before);
}

#[test]
fn session_update_after_audio_closes_with_1007() {
    let emu = start(EmulatorConfig::default());
    let (mut ws, _) = connect(&emu);
    append(&mut ws, &silence(100));
    send(
        &mut ws,
        json!({"event_id": "e", "type": "session.update", "session": {}}),
    );
    assert_eq!(expect_close(&mut ws).0, 1007);
    assert!(emu.wait_for_sessions_closed(1, READ_TIMEOUT));
    assert_eq!(emu.sessions()[0].close_code, Some(1007));
}

// ---- VAD mode ---------------------------------------------------------------------------------

/// Two utterances: 1 s of tone, 1 s of silence, 0.5 s of tone, 1.2 s of silence.
fn two_utterances() -> Vec<u8> {
    [tone(1000), silence(1000), tone(500), silence(1200)].concat()
}

#[test]
fn vad_turns_tone_bursts_into_utterances() {
    let emu = start(EmulatorConfig::default());
    let audio = two_utterances();
    for (session, chunk) in [1234usize, 3200].into_iter().enumerate() {
        let (mut ws, _) = connect(&emu);
        send_audio(&mut ws, &audio, chunk);
        let events = finish(&mut ws);
        let completed = check_sequence(&events, true);
        assert_eq!(completed.len(), 2);

        let of = |t: &str| events.iter().filter(|e| e["type"] == t).collect::<Vec<_>>();
        let started = of("input_audio_buffer.speech_started");
        let stopped = of("input_audio_buffer.speech_stopped");
        assert_eq!(started[0]["audio_start_ms"], 0);
        assert_eq!(stopped[0]["audio_end_ms"], 1000);
        assert_eq!(started[1]["audio_start_ms"], 2000);
        assert_eq!(stopped[1]["audio_end_ms"], 2500);
        // Partials every 400 ms of speech-state audio: 1.8 s and 1.3 s of it, plus the final one.
        let partials_of = |id: &Value| {
            of("conversation.item.input_audio_transcription.text")
                .into_iter()
                .filter(|p| p["item_id"] == *id)
                .count()
        };
        assert_eq!(partials_of(&started[0]["item_id"]), 4 + 1);
        assert_eq!(partials_of(&started[1]["item_id"]), 3 + 1);
        assert_eq!(completed[0]["language"], "en");
        assert_eq!(completed[0]["usage"]["duration"], 1.8);
        assert_eq!(completed[1]["usage"]["duration"], 3.3);

        assert!(emu.wait_for_sessions_closed(session + 1, READ_TIMEOUT));
        let rec = &emu.sessions()[session];
        assert!(rec.finished);
        assert_eq!(rec.close_code, Some(1000));
        assert_eq!(rec.audio, AudioDigest::of(&audio));
        assert_eq!(rec.appends, audio.chunks(chunk).count() as u64);
        // Each item's audio runs from the previous commit to the frame that ended it; items
        // plus the leftover silence are the session's audio exactly.
        let sizes: Vec<u64> = rec.items.iter().map(|i| i.audio.bytes).collect();
        assert_eq!(sizes, [57_600, 48_000]); // 1.8 s and 0.2 + 0.5 + 0.8 s
        assert_eq!(rec.leftover_bytes(), 12_800); // 0.4 s
        let mut at = 0;
        for (item, done) in rec.items.iter().zip(&completed) {
            let end = at + item.audio.bytes as usize;
            assert_eq!(item.audio, AudioDigest::of(&audio[at..end]));
            assert_eq!(item.transcript, transcript_for(item.audio, RATE));
            assert_eq!(done["transcript"], item.transcript.as_str());
            assert_eq!(done["item_id"], item.item_id.as_str());
            at = end;
        }
        assert_eq!(at as u64 + rec.leftover_bytes(), audio.len() as u64);
    }
    let s = emu.sessions();
    assert_eq!(
        s[0].items[1].audio, s[1].items[1].audio,
        "chunking must not matter"
    );
}

#[test]
fn vad_follows_the_configured_threshold_and_silence() {
    let emu = start(EmulatorConfig {
        partial_interval_ms: 0,
        ..EmulatorConfig::default()
    });
    let (mut ws, _) = connect(&emu);
    update(
        &mut ws,
        "e",
        json!({"input_audio_transcription": {"language": "de"},
               "turn_detection": {"type": "server_vad", "threshold": 1.0, "silence_duration_ms": 300}}),
    );
    // A quiet tone (about -30 dBFS) is not speech at threshold 1 (-20 dBFS).
    let quiet: Vec<u8> = tone(500)
        .chunks_exact(2)
        .flat_map(|s| (i16::from_le_bytes([s[0], s[1]]) / 8).to_le_bytes())
        .collect();
    let audio = [quiet, tone(300), silence(300), tone(200), silence(350)].concat();
    send_audio(&mut ws, &audio, 4000);
    let events = finish(&mut ws);
    let completed = check_sequence(&events, true);
    assert_eq!(completed.len(), 2);
    assert_eq!(completed[0]["language"], "de");
    let started: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "input_audio_buffer.speech_started")
        .map(|e| e["audio_start_ms"].as_u64())
        .collect();
    assert_eq!(started, [Some(500), Some(1100)]);
    // Only the final partial per item with interval 0.
    let partials = events
        .iter()
        .filter(|e| e["type"] == "conversation.item.input_audio_transcription.text")
        .count();
    assert_eq!(partials, 2);
}

#[test]
fn finish_completes_an_utterance_in_progress() {
    let emu = start(EmulatorConfig::default());
    let (mut ws, _) = connect(&emu);
    // 0.3 s silence, 0.5 s tone, 0.1 s silence and half a frame: still in speech at finish.
    let audio = [silence(300), tone(500), silence(100), vec![0; 161]].concat();
    send_audio(&mut ws, &audio, 999);
    let events = finish(&mut ws);
    let completed = check_sequence(&events, true);
    assert_eq!(completed.len(), 1);
    let stopped = events
        .iter()
        .find(|e| e["type"] == "input_audio_buffer.speech_stopped")
        .unwrap();
    assert_eq!(stopped["audio_end_ms"], 800);
    assert!(emu.wait_for_sessions_closed(1, READ_TIMEOUT));
    let rec = &emu.sessions()[0];
    assert_eq!(rec.items.len(), 1);
    assert_eq!(rec.items[0].audio, AudioDigest::of(&audio));
    assert_eq!(rec.leftover_bytes(), 0);
}

#[test]
fn finish_without_speech_just_finishes() {
    let emu = start(EmulatorConfig::default());
    let (mut ws, _) = connect(&emu);
    append(&mut ws, &silence(500));
    let events = finish(&mut ws);
    assert_eq!(events.len(), 1);
    assert!(emu.wait_for_sessions_closed(1, READ_TIMEOUT));
    let rec = &emu.sessions()[0];
    assert!(rec.items.is_empty());
    assert_eq!(rec.leftover_bytes(), 16_000);
    assert!(rec.finished);
}

#[test]
fn commit_in_vad_mode_is_an_error() {
    let emu = start(EmulatorConfig::default());
    let (mut ws, _) = connect(&emu);
    append(&mut ws, &silence(100));
    send(
        &mut ws,
        json!({"event_id": "event_c", "type": "input_audio_buffer.commit"}),
    );
    let e = recv(&mut ws);
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["code"], "invalid_value");
    assert_eq!(e["error"]["event_id"], "event_c");
    assert!(e["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("server_vad")));
    assert_eq!(finish(&mut ws).len(), 1);
}

// ---- Manual mode ------------------------------------------------------------------------------

#[test]
fn manual_mode_commits_on_request_and_flushes_at_finish() {
    let emu = start(EmulatorConfig::default());
    let (mut ws, _) = connect(&emu);
    update(
        &mut ws,
        "e",
        json!({"turn_detection": null, "sample_rate": 8000}),
    );
    send(
        &mut ws,
        json!({"event_id": "event_c0", "type": "input_audio_buffer.commit"}),
    );
    let e = recv(&mut ws);
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["code"], "input_audio_buffer_commit_empty");
    assert_eq!(
        e["error"]["message"],
        "Error committing input audio buffer: buffer too small, or have no audio."
    );
    assert_eq!(e["error"]["event_id"], "event_c0");

    let parts = [vec![7u8; 16_000], vec![9u8; 8_001], vec![3u8; 4_000]];
    let commit = json!({"event_id": "event_c", "type": "input_audio_buffer.commit"});
    let mut events = Vec::new();
    for part in &parts[..2] {
        send_audio(&mut ws, part, 3000);
        send(&mut ws, commit.clone());
        events.extend(events_until(
            &mut ws,
            "conversation.item.input_audio_transcription.completed",
        ));
    }
    // Empty again after a commit.
    send(&mut ws, commit.clone());
    assert_eq!(
        recv(&mut ws)["error"]["code"],
        "input_audio_buffer_commit_empty"
    );
    // An uncommitted buffer is committed by session.finish.
    append(&mut ws, &parts[2]);
    events.extend(finish(&mut ws));
    assert!(events.iter().all(|e| !e["type"]
        .as_str()
        .unwrap_or_default()
        .starts_with("input_audio_buffer.speech")));
    let completed = check_sequence(&events, false);
    assert_eq!(completed.len(), 3);
    assert_eq!(
        completed[0]["transcript"],
        "[1.00 s · 16000 bytes · crc32 ".to_owned()
            + &format!("{:08x}]", AudioDigest::of(&parts[0]).crc32)
    );
    assert_eq!(completed[2]["usage"]["duration"], 1.75);

    assert!(emu.wait_for_sessions_closed(1, READ_TIMEOUT));
    let rec = &emu.sessions()[0];
    let digests: Vec<_> = rec.items.iter().map(|i| i.audio).collect();
    let expected: Vec<_> = parts.iter().map(|p| AudioDigest::of(p)).collect();
    assert_eq!(digests, expected);
    assert_eq!(rec.audio, AudioDigest::of(&parts.concat()));
    assert_eq!(rec.leftover_bytes(), 0);
}

// ---- malformed input --------------------------------------------------------------------------

#[test]
fn bad_client_frames_get_error_events_and_the_session_continues() {
    let emu = start(EmulatorConfig::default());
    let (mut ws, _) = connect(&emu);
    let expect_error = |ws: &mut Client, frame: Message, code: &str, param: Value| {
        ws.send(frame).expect("send");
        let e = recv(ws);
        assert_eq!(e["type"], "error");
        assert_eq!(e["error"]["code"], code, "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
    };
    expect_error(
        &mut ws,
        Message::text("{not json"),
        "invalid_json",
        Value::Null,
    );
    expect_error(
        &mut ws,
        Message::text(r#"{"event_id":"e1","type":"input_audio_buffer.clear"}"#),
        "invalid_value",
        json!("type"),
    );
    expect_error(
        &mut ws,
        Message::text("[1,2]"),
        "missing_required_parameter",
        json!("type"),
    );
    expect_error(
        &mut ws,
        Message::binary(vec![0u8; 64]),
        "invalid_value",
        Value::Null,
    );
    expect_error(
        &mut ws,
        Message::text(r#"{"type":"input_audio_buffer.append","audio":"%%%"}"#),
        "invalid_value",
        json!("audio"),
    );
    expect_error(
        &mut ws,
        Message::text(r#"{"type":"input_audio_buffer.append"}"#),
        "missing_required_parameter",
        json!("audio"),
    );
    assert_eq!(finish(&mut ws).len(), 1);
    assert!(emu.wait_for_sessions_closed(1, READ_TIMEOUT));
    let rec = &emu.sessions()[0];
    assert_eq!(rec.appends, 2);
    assert_eq!(rec.audio.bytes, 0, "nothing appended from invalid appends");
    // JSON events other than appends are kept, the finish included.
    assert_eq!(rec.client_events.len(), 3);
}

#[test]
fn frames_over_the_cap_are_closed_with_1009() {
    let emu = start(EmulatorConfig::default());
    let (mut ws, _) = connect(&emu);
    // Exactly at the cap is fine (and not JSON, so an error event).
    ws.send(Message::text("x".repeat(GATEWAY_MAX_FRAME_BYTES)))
        .expect("send");
    assert_eq!(recv(&mut ws)["error"]["code"], "invalid_json");
    ws.send(Message::text("x".repeat(GATEWAY_MAX_FRAME_BYTES + 1)))
        .expect("send");
    assert_eq!(expect_close(&mut ws).0, 1009);
    drop(ws);
    assert!(emu.wait_for_sessions_closed(1, READ_TIMEOUT));
    assert_eq!(emu.sessions()[0].close_code, Some(1009));
}

#[test]
fn client_close_is_answered_and_recorded() {
    let emu = start(EmulatorConfig::default());
    let (mut ws, _) = connect(&emu);
    ws.close(Some(CloseFrame {
        code: 4001.into(),
        reason: "done".into(),
    }))
    .expect("close");
    match ws.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4001),
        other => panic!("expected the close reply, got {other:?}"),
    }
    assert!(emu.wait_for_sessions_closed(1, READ_TIMEOUT));
    assert_eq!(emu.sessions()[0].close_code, Some(4001));
}

// ---- faults -----------------------------------------------------------------------------------

fn after_two(action: FaultAction) -> Emulator {
    with_faults(vec![Fault::AfterAppends { n: 2, action }])
}

/// Connects and sends two appends of silence (the faults above fire after the second).
fn two_appends(emu: &Emulator) -> Client {
    let (mut ws, _) = connect(emu);
    append(&mut ws, &silence(100));
    append(&mut ws, &silence(100));
    ws
}

#[test]
fn fault_send_text_fires_once_per_connection() {
    let emu = with_faults(vec![Fault::AfterAppends {
        n: 1,
        action: FaultAction::SendText("not json{".into()),
    }]);
    for _ in 0..2 {
        let mut ws = two_appends(&emu);
        append(&mut ws, &silence(100));
        match ws.read().expect("read") {
            Message::Text(t) => assert_eq!(t.as_str(), "not json{"),
            other => panic!("{other:?}"),
        }
        // Only once: next comes session.finished.
        assert_eq!(finish(&mut ws).len(), 1);
    }
}

#[test]
fn fault_send_binary() {
    let emu = after_two(FaultAction::SendBinary(vec![1, 2, 3]));
    let mut ws = two_appends(&emu);
    match ws.read().expect("read") {
        Message::Binary(b) => assert_eq!(&b[..], [1, 2, 3]),
        other => panic!("{other:?}"),
    }
    assert_eq!(finish(&mut ws).len(), 1);
}

#[test]
fn fault_send_error_keeps_the_session() {
    let emu = after_two(FaultAction::SendError {
        code: "InternalError".into(),
        message: "Internal service error: null".into(),
    });
    let mut ws = two_appends(&emu);
    let e = recv(&mut ws);
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["code"], "InternalError");
    assert_eq!(e["error"]["message"], "Internal service error: null");
    assert_eq!(finish(&mut ws).len(), 1);
}

#[test]
fn fault_close_sends_the_code() {
    let emu = after_two(FaultAction::Close {
        code: 1011,
        reason: "model unavailable".into(),
    });
    let mut ws = two_appends(&emu);
    assert_eq!(expect_close(&mut ws), (1011, "model unavailable".into()));
    assert!(emu.wait_for_sessions_closed(1, READ_TIMEOUT));
    assert_eq!(emu.sessions()[0].close_code, Some(1011));
}

#[test]
fn fault_drop_ends_the_stream_without_a_close_frame() {
    let emu = after_two(FaultAction::Drop);
    let mut ws = two_appends(&emu);
    match ws.read() {
        Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {}
        Err(WsError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the stream to end without a close frame, got {other:?}"),
    }
    assert!(emu.wait_for_sessions_closed(1, READ_TIMEOUT));
    assert_eq!(emu.sessions()[0].close_code, None);
}

#[test]
fn fault_reset_sends_rst() {
    let emu = after_two(FaultAction::Reset);
    let mut ws = two_appends(&emu);
    match ws.read() {
        Err(WsError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[test]
fn fault_pause_reading_then_carries_on() {
    let emu = after_two(FaultAction::PauseReading(Duration::from_millis(200)));
    let mut ws = two_appends(&emu);
    append(&mut ws, &silence(100));
    assert_eq!(finish(&mut ws).len(), 1);
    assert!(emu.wait_for_sessions_closed(1, READ_TIMEOUT));
    assert_eq!(emu.sessions()[0].appends, 3);
}

#[test]
fn fault_pause_reading_backs_up_the_client_until_shutdown_interrupts_it() {
    let emu = after_two(FaultAction::PauseReading(Duration::from_secs(600)));
    let prefix = emu.thread_name_prefix();
    let mut ws = two_appends(&emu);
    ws.get_mut().set_nonblocking(true).expect("nonblocking");
    let audio = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 150_000]);
    let frame = json!({"type": "input_audio_buffer.append", "audio": audio}).to_string();
    let mut blocked = false;
    // Loopback socket buffers hold a few MB; 1000 × 200 kB is far more.
    for _ in 0..1000 {
        match ws.send(Message::text(frame.clone())) {
            Ok(()) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                blocked = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(blocked, "the paused emulator should push back");
    emu.shutdown(); // returns although the pause has ~10 minutes left
    assert!(no_threads_left(&prefix));
}

#[test]
fn fault_stall_holds_the_socket_until_shutdown() {
    let emu = after_two(FaultAction::Stall);
    let mut ws = two_appends(&emu);
    send(&mut ws, json!({"type": "session.finish"}));
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    match ws.read() {
        Err(WsError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    assert!(!emu.wait_for_sessions_closed(1, Duration::from_millis(10)));
    let rec = emu.sessions().remove(0);
    assert!(!rec.finished);
    emu.shutdown();
    ws.get_mut().set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    assert!(
        !matches!(ws.read(), Ok(Message::Text(_))),
        "nothing after a stall"
    );
}

// ---- threads ----------------------------------------------------------------------------------

#[test]
fn shutdown_joins_every_thread() {
    let emu = start(EmulatorConfig::default());
    let prefix = emu.thread_name_prefix();
    let (mut a, _) = connect(&emu);
    let (_b, _) = connect(&emu);
    // A connection that never completes its handshake has a thread too.
    let _c = TcpStream::connect(emu.local_addr()).unwrap();
    let mut n = 0;
    for _ in 0..500 {
        n = threads_named(&prefix);
        if n == 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(n, 4, "accept thread and three connection threads");
    emu.shutdown();
    assert!(no_threads_left(&prefix));
    assert!(a.read().is_err(), "the client sees the connection end");
}
