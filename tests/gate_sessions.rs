//! The speech gate's sessions against the real emulator on loopback: the session ends while
//! nobody speaks and a new one opens at the next onset without losing its first word; a
//! server that closes an idle session costs nothing; reconnects while the gate is open; the
//! service's offsets placed on the device timeline; and every millisecond accounted for.

mod common;
mod gate_support;

use std::time::{Duration, Instant};

use common::{
    collect_until_closed, dropped_ms, le_bytes, params_for, recording, start_emulator, types, WAIT,
};
use gate_support::{scene, Noise, Scene, RATE};
use qwen_asr_emulator::{Emulator, Fault, FaultAction, SessionRecord};
use qwen_asr_realtime::gate::{Gate, GateConfig, GatedSender, Output};
use qwen_asr_realtime::{Conversation, Event, EventKind, ReconnectPolicy, SessionConfig};

/// The gate's idle timeout in these tests: shorter than the default, so a fixture stays short.
const IDLE_MS: u32 = 5_000;

/// Room noise with three utterances: the first two a gate close apart (shorter than the idle
/// timeout), the third after a silence longer than it.
fn three_utterances() -> Scene {
    scene(Noise::Room, 26.0, &[2.0, 7.0, 20.0], None, 21)
}

/// Where `needle` lies in `hay`, if it does (once is enough: the regions differ).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Each region's session: the index of the session whose audio holds its samples whole and
/// contiguous, exactly.
fn region_sessions(s: &Scene, sessions: &[SessionRecord]) -> Vec<Option<usize>> {
    s.regions
        .iter()
        .map(|r| {
            let want = le_bytes(&s.pcm[r.clone()]);
            sessions
                .iter()
                .position(|rec| find(&rec.audio_data, &want).is_some())
        })
        .collect()
}

/// Feeds the scene through a gated sender in 100 ms chunks, from `from` to `to` samples.
fn feed(gated: &mut GatedSender, s: &Scene, from: usize, to: usize) {
    for chunk in s.pcm[from..to].chunks(1600) {
        gated.append_pcm(chunk).expect("append");
    }
}

/// Waits (bounded) for an event matching `want`, keeping every event read.
fn wait_for(conv: &Conversation, seen: &mut Vec<Event>, want: impl Fn(&EventKind) -> bool) {
    let deadline = Instant::now() + WAIT;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match conv.recv_timeout(left) {
            Ok(e) => {
                let done = want(&e.kind);
                seen.push(e);
                if done {
                    return;
                }
            }
            Err(_) => break,
        }
    }
    panic!("not seen within {WAIT:?}: {:?}", types(seen));
}

/// Waits (bounded) for `n` more transcripts, then ends the session and reads every event up
/// to `client.closed` into `seen`. Waiting first proves each utterance was completed by the
/// audio sent, before anything ended the session.
fn end_after_transcripts(conv: &Conversation, seen: &mut Vec<Event>, n: usize) {
    for _ in 0..n {
        wait_for(conv, seen, |k| matches!(k, EventKind::Completed(_)));
    }
    conv.end_session(WAIT).unwrap();
    seen.extend(collect_until_closed(conv));
}

/// Every speech_started, on the device timeline, falls within a region (the emulator's
/// energy VAD starts on the clip's first loud frame, a little after the clip's start) and
/// every region has one (a replay after a reconnect may give one twice); every
/// speech_stopped falls after a region's start and within 2 s of its end.
fn check_device_offsets(s: &Scene, events: &[Event]) {
    let regions_ms: Vec<(u64, u64)> = s
        .regions
        .iter()
        .map(|r| ((r.start * 1000 / RATE) as u64, (r.end * 1000 / RATE) as u64))
        .collect();
    let mut hit = vec![false; regions_ms.len()];
    let (mut starts, mut stops) = (0, 0);
    for e in events {
        match e.kind {
            EventKind::SpeechStarted { audio_start_ms, .. } => {
                starts += 1;
                let d = e
                    .device_start_ms()
                    .unwrap_or_else(|| panic!("no device position for {e:?}"));
                let i = regions_ms
                    .iter()
                    .position(|&(rs, re)| rs.saturating_sub(100) <= d && d < re)
                    .unwrap_or_else(|| {
                        panic!(
                            "speech_started at {audio_start_ms:?} ms of its session placed at \
                             {d} ms on the device, outside every region {regions_ms:?}"
                        )
                    });
                hit[i] = true;
            }
            EventKind::SpeechStopped { .. } => {
                stops += 1;
                let d = e
                    .device_end_ms()
                    .unwrap_or_else(|| panic!("no device position for {e:?}"));
                assert!(
                    regions_ms.iter().any(|&(rs, re)| rs < d && d <= re + 2_000),
                    "speech_stopped at {d} ms, regions {regions_ms:?}"
                );
            }
            _ => {}
        }
    }
    assert!(hit.iter().all(|h| *h), "{hit:?}: {:?}", types(events));
    assert!(starts >= regions_ms.len() && stops >= regions_ms.len());
    // The JSON line carries it too.
    let line = events
        .iter()
        .find(|e| matches!(e.kind, EventKind::SpeechStarted { .. }))
        .map(Event::to_json_line)
        .unwrap_or_default();
    assert!(line.contains("\"device_audio_start_ms\""), "{line}");
}

fn recording_emulator(faults: Vec<Fault>) -> Emulator {
    start_emulator(recording(faults))
}

/// Before: `Output::Idle` was only counted; the session stayed open through the silence, one
/// session served all three utterances, no rollover event was raised, and the service's
/// offsets were never placed on the device timeline.
#[test]
fn an_idle_session_is_closed_and_the_next_onset_opens_a_new_one_with_its_first_word() {
    idle_close_and_reopen(SessionConfig::vad());
}

/// The same in manual mode: each gate close commits, the idle close finishes the session.
#[test]
fn manual_mode_an_idle_session_is_closed_and_reopened_with_every_utterance_committed() {
    idle_close_and_reopen(SessionConfig::manual());
}

fn idle_close_and_reopen(session: SessionConfig) {
    let s = three_utterances();
    let emu = recording_emulator(Vec::new());
    let conv = Conversation::start(params_for(&emu), &session).unwrap();
    let config = GateConfig::for_session(&session).idle_timeout_ms(Some(IDLE_MS));
    let mut gated = GatedSender::new(conv.audio_sender(), config).unwrap();
    feed(&mut gated, &s, 0, s.pcm.len());
    gated.finish().unwrap();
    let mut events = Vec::new();
    end_after_transcripts(&conv, &mut events, 3);

    let sessions = emu.sessions();
    assert_eq!(sessions.len(), 2, "one rollover: {:?}", types(&events));
    assert!(sessions[0].finished, "the idle session ended cleanly");
    assert_eq!(sessions[0].close_code, Some(1000));
    // Every region whole, the first two in the first session, the third (its pre-roll and
    // first word included) in the new one.
    assert_eq!(
        region_sessions(&s, &sessions),
        vec![Some(0), Some(0), Some(1)]
    );
    assert_eq!(sessions[0].items.len(), 2, "{:?}", sessions[0].items);
    assert_eq!(sessions[1].items.len(), 1, "{:?}", sessions[1].items);
    // The rollover as client events, in order, and nothing lost.
    let kinds = types(&events);
    let idle_at = kinds
        .iter()
        .position(|t| t == "client.session_idle_closed")
        .expect("idle close reported");
    let reopened_at = kinds
        .iter()
        .position(|t| t == "client.session_reopened")
        .expect("reopening reported");
    assert!(idle_at < reopened_at, "{kinds:?}");
    match &events[idle_at].kind {
        EventKind::SessionIdleClosed {
            session_id,
            idle_ms,
            by_server,
            ..
        } => {
            assert_eq!(session_id.as_deref(), Some(sessions[0].id.as_str()));
            assert_eq!(*idle_ms, Some(u64::from(IDLE_MS)));
            assert!(!by_server);
        }
        other => panic!("{other:?}"),
    }
    match &events[reopened_at].kind {
        EventKind::SessionReopened { session_id, .. } => {
            assert_eq!(session_id.as_deref(), Some(sessions[1].id.as_str()))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(dropped_ms(&events), 0, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|t| *t == "client.closed").count(), 1);
    assert_eq!(kinds.last().map(String::as_str), Some("client.closed"));
    if !session.is_manual() {
        check_device_offsets(&s, &events);
    }

    // The accounting: what the gate forwarded is exactly what the two sessions got.
    let a = gated.accounting();
    let received: u64 = sessions.iter().map(|r| r.audio.bytes).sum();
    assert_eq!(received, a.gate.forwarded_samples * 2);
    assert_eq!(a.gate.held_samples, 0);
    assert_eq!(
        a.gate.captured_samples,
        a.gate.forwarded_samples + a.gate.gated_samples
    );
    assert_eq!(a.dropped_ms(), 0);
    assert_eq!(a.sessions(), 2);
    assert_eq!(conv.stats().sessions, 2);
    let explained = a.sent_ms() + a.gated_ms() + a.held_ms() + a.dropped_ms();
    assert!(
        a.captured_ms().abs_diff(explained) <= 3,
        "{} captured, {explained} explained",
        a.captured_ms()
    );
}

/// The number of appends a gated sender makes for the scene's first utterance: each
/// forwarded stretch is one append frame here (all are far below the frame size limit).
fn appends_of_first_utterance(s: &Scene, config: GateConfig) -> u64 {
    let mut gate = Gate::new(config, RATE as u32).unwrap();
    let (mut appends, mut closed) = (0, false);
    for chunk in s.pcm.chunks(1600) {
        gate.process(chunk, |o| match o {
            Output::Audio { .. } if !closed => appends += 1,
            Output::Closed { .. } => closed = true,
            _ => {}
        });
    }
    appends
}

/// Keep-open: the gate never asks for an idle close, and the server closes the session
/// while the gate is closed and every result is in. Before: that ended the conversation
/// (a close 1000 is not retryable), and the next utterance could not be sent.
#[test]
fn keep_open_a_server_closing_an_idle_session_is_no_error_and_the_next_onset_reopens() {
    let s = scene(Noise::Room, 16.0, &[2.0, 11.0], None, 22);
    let session = SessionConfig::vad();
    let config = GateConfig::for_session(&session).keep_session_open();
    let n = appends_of_first_utterance(&s, config.clone());
    let emu = recording_emulator(vec![Fault::AfterAppends {
        n,
        action: FaultAction::Close {
            code: 1000,
            reason: "idle session".into(),
        },
    }]);
    let conv = Conversation::start(params_for(&emu), &session).unwrap();
    let mut gated = GatedSender::new(conv.audio_sender(), config).unwrap();
    // The first utterance and the silence after it, until the server's close is seen.
    let second = s.regions[1].start - RATE;
    feed(&mut gated, &s, 0, second);
    let mut events = Vec::new();
    wait_for(&conv, &mut events, |k| {
        matches!(k, EventKind::SessionIdleClosed { .. })
    });
    feed(&mut gated, &s, second, s.pcm.len());
    gated.finish().unwrap();
    end_after_transcripts(&conv, &mut events, 1);

    let kinds = types(&events);
    let idle = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::SessionIdleClosed {
                by_server, code, ..
            } => Some((*by_server, *code)),
            _ => None,
        })
        .expect("idle close");
    assert_eq!(idle, (true, 1000), "{kinds:?}");
    assert!(
        kinds.iter().any(|t| t == "client.session_reopened"),
        "{kinds:?}"
    );
    assert_eq!(dropped_ms(&events), 0, "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("client.closed"));
    let sessions = emu.sessions();
    assert_eq!(sessions.len(), 2);
    assert_eq!(region_sessions(&s, &sessions), vec![Some(0), Some(1)]);
    assert_eq!(conv.stats().sessions, 2);
    assert_eq!(gated.idles(), 0, "keep-open never asks for an idle close");
    check_device_offsets(&s, &events);
}

/// A connection lost while the gate is open: the new session is given the audio without a
/// result, each region still reaches the service whole, nothing is lost, and the replayed
/// audio keeps its device positions. Before: the offsets had no device positions.
#[test]
fn a_reconnect_while_the_gate_is_open_keeps_every_region_and_its_device_positions() {
    let s = scene(Noise::Room, 12.0, &[2.0, 7.0], None, 23);
    let emu = recording_emulator(vec![Fault::AfterAppends {
        n: 4,
        action: FaultAction::Reset,
    }]);
    let session = SessionConfig::vad();
    let mut policy = ReconnectPolicy::default();
    policy.initial_backoff = Duration::from_millis(20);
    let params = params_for(&emu).reconnect(policy);
    let conv = Conversation::start(params, &session).unwrap();
    let mut gated = GatedSender::new(
        conv.audio_sender(),
        GateConfig::for_session(&session).idle_timeout_ms(None),
    )
    .unwrap();
    feed(&mut gated, &s, 0, s.pcm.len());
    gated.finish().unwrap();
    let mut events = Vec::new();
    end_after_transcripts(&conv, &mut events, 2);
    let kinds = types(&events);
    assert!(kinds.iter().any(|t| t == "client.reconnected"), "{kinds:?}");
    assert_eq!(dropped_ms(&events), 0, "{kinds:?}");
    let sessions = emu.sessions();
    assert_eq!(sessions.len(), 2);
    assert!(
        region_sessions(&s, &sessions).iter().all(Option::is_some),
        "every region whole in a session"
    );
    assert_eq!(conv.stats().sessions, 2);
    check_device_offsets(&s, &events);
}

/// The new session cannot be opened (the service is gone): the audio queued for it is
/// reported lost, and `client.closed` is the last event. Before: the conversation stayed
/// open through the silence and ended with the first session.
#[test]
fn when_no_new_session_can_be_opened_the_queued_audio_is_reported_dropped() {
    let s = scene(Noise::Room, 16.0, &[1.0, 12.0], None, 24);
    let emu = recording_emulator(Vec::new());
    let session = SessionConfig::vad();
    let conv = Conversation::start(params_for(&emu), &session).unwrap();
    let config = GateConfig::for_session(&session).idle_timeout_ms(Some(IDLE_MS));
    let mut gated = GatedSender::new(conv.audio_sender(), config).unwrap();
    let second = s.regions[1].start - RATE;
    feed(&mut gated, &s, 0, second);
    let mut events = Vec::new();
    wait_for(&conv, &mut events, |k| {
        matches!(k, EventKind::SessionIdleClosed { .. })
    });
    let first_session_bytes = emu.sessions()[0].audio.bytes;
    emu.shutdown();
    let forwarded_before = gated.counters().forwarded_samples;
    // The conversation ends while this is fed: appends then fail, which is the point.
    let mut refused = false;
    for chunk in s.pcm[second..].chunks(1600) {
        if gated.append_pcm(chunk).is_err() {
            refused = true;
            break;
        }
    }
    if !refused {
        let _ = gated.finish();
    }
    events.extend(collect_until_closed(&conv));
    let kinds = types(&events);
    assert_eq!(kinds.last().map(String::as_str), Some("client.closed"));
    assert!(
        kinds.iter().any(|t| t == "client.reconnect_failed"),
        "{kinds:?}"
    );
    assert_eq!(first_session_bytes, forwarded_before * 2);
    // Everything appended after the idle close is reported (ms rounded per report).
    let appended_ms = conv.stats().appended_ms;
    let after_ms = appended_ms - first_session_bytes / 32;
    let dropped = dropped_ms(&events);
    assert!(after_ms > 0);
    assert!(
        dropped + 2 >= after_ms && dropped <= after_ms + 5,
        "{after_ms} ms appended after the idle close, {dropped} ms reported: {kinds:?}"
    );
}
