//! The loss invariant on slow, stalled and dead links: every millisecond handed over is
//! transcribed or reported in `client.audio_dropped`, however the conversation ends, the
//! backlog behind a slow link stays bounded and visible, and `client.closed` comes last.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::forwarder::Forwarder;
use common::*;
use qwen_asr_emulator::{EmulatorConfig, Fault, FaultAction};
use qwen_asr_realtime::{
    Conversation, Error, Event, EventKind, ReconnectPolicy, SessionConfig, TryAppendError,
};

const RATE: u32 = 16000;
/// 100 ms at 16 kHz.
const CHUNK: usize = 1600;

fn assert_closed_last(events: &[Event]) {
    assert!(
        matches!(
            events.last().map(|e| &e.kind),
            Some(EventKind::Closed { .. })
        ),
        "client.closed is the last event: {:?}",
        types(events)
    );
}

/// A tone that is not silence, so that every chunk's bytes are its own.
fn tone(ms: u32) -> Vec<i16> {
    burst(RATE, ms, 0)
}

fn paused(after_appends: u64, pause: Duration) -> EmulatorConfig {
    EmulatorConfig {
        faults: vec![Fault::AfterAppends {
            n: after_appends,
            action: FaultAction::PauseReading(pause),
        }],
        fault_sessions: Some(1),
        record_audio: true,
        ..Default::default()
    }
}

/// Before: the kernel's autotuned send buffer (up to 4 MiB) took over a minute of audio from
/// a server that had stopped reading, with no append ever waiting, and closing lost all of it
/// without a word.
#[test]
fn a_stalled_link_holds_a_bounded_backlog_and_closing_reports_all_of_it() {
    let emu = start_emulator(paused(1, Duration::from_secs(4)));
    let conv = Conversation::start(params_for(&emu), &SessionConfig::manual()).unwrap();
    let chunk = tone(100);
    conv.append_pcm(&chunk).unwrap();
    let mut accepted_ms = 100u64;
    // Bounded: 300 s of audio at most.
    for _ in 0..3000 {
        match conv.try_append_pcm(&chunk) {
            Ok(()) => accepted_ms += 100,
            Err(TryAppendError::Full) => break,
            Err(TryAppendError::Other(e)) => panic!("{e}"),
        }
    }
    let stats = conv.stats();
    // The queue (6.4 s), our capped send buffer and tungstenite's (about 1.5 s each) and the
    // stalled server's receive window (a few seconds): not a minute of audio.
    assert!(
        accepted_ms <= 20_000,
        "took {accepted_ms} ms of audio into a link that carries nothing"
    );
    assert_eq!(stats.appended_ms, accepted_ms);
    conv.close();
    let events = collect_until_closed(&conv);
    assert_closed_last(&events);
    // Manual mode, never committed: nothing was transcribed, so all of it is reported.
    let dropped = dropped_ms(&events);
    assert!(
        dropped.abs_diff(accepted_ms) <= 2,
        "{dropped} ms reported of {accepted_ms} ms handed over: {:?}",
        types(&events)
    );
    assert_eq!(conv.stats().dropped_ms, dropped);
}

/// With `max_backlog`, a live source is never made to wait for a stalled link: the oldest
/// queued audio goes, reported, and what the server got plus what was reported is all of it.
#[test]
fn a_bounded_backlog_drops_the_oldest_audio_with_a_report() {
    let emu = start_emulator(paused(1, Duration::from_millis(1500)));
    let params = params_for(&emu).max_backlog(Some(Duration::from_secs(2)));
    let conv = Conversation::start(params, &SessionConfig::manual()).unwrap();
    let audio = tone(30_000);
    for c in audio.chunks(CHUNK) {
        conv.append_pcm(c).unwrap();
    }
    conv.commit().unwrap();
    let ended = conv.end_session(WAIT);
    let events = collect_until_closed(&conv);
    ended.unwrap_or_else(|e| panic!("{e}: {:?}", types(&events)));
    assert_closed_last(&events);
    let dropped = dropped_ms(&events);
    assert!(dropped > 0, "the stall cost nothing? {:?}", types(&events));
    let received_ms = emu.sessions()[0].audio.bytes / 32;
    assert_eq!(
        received_ms + dropped,
        30_000,
        "received {received_ms} ms + dropped {dropped} ms"
    );
    // What arrived is the audio in order with whole chunks cut out: each 100 ms the server got
    // is one of ours, and they come in the order sent.
    let got = &emu.sessions()[0].audio_data;
    let sent = le_bytes(&audio);
    assert_eq!(got.len() % 3200, 0);
    let mut at = 0usize;
    for piece in got.chunks(3200) {
        let found = (at..sent.len() / 3200)
            .find(|&i| &sent[i * 3200..(i + 1) * 3200] == piece)
            .expect("a chunk the server got is one we sent, after the one before it");
        at = found + 1;
    }
}

/// Before: nothing said that the link had fallen behind; the backlog was out of sight.
#[test]
fn a_real_time_source_on_a_stalled_link_is_told_it_is_behind() {
    let emu = start_emulator(paused(1, Duration::from_secs(5)));
    let params = params_for(&emu).behind_threshold(Duration::from_millis(300));
    let conv = Conversation::start(params, &SessionConfig::manual()).unwrap();
    let chunk = tone(100);
    let start = Instant::now();
    let mut behind = None;
    // At real time, for at most 10 s of audio, until the conversation says it is behind.
    for i in 0..100u32 {
        let due = start + Duration::from_millis(100) * i;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        match conv.try_append_pcm(&chunk) {
            Ok(()) | Err(TryAppendError::Full) => {}
            Err(TryAppendError::Other(e)) => panic!("{e}"),
        }
        while let Ok(e) = conv.try_recv() {
            if let EventKind::LinkBehind { behind_ms } = e.kind {
                behind = Some(behind_ms);
            }
        }
        if behind.is_some() {
            break;
        }
    }
    let behind_ms = behind.expect("client.link_behind while the server read nothing");
    assert!(behind_ms >= 300, "behind {behind_ms} ms");
    assert!(conv.stats().max_backlog_ms >= behind_ms);
    conv.close();
    assert_closed_last(&collect_until_closed(&conv));
}

/// Before: an `error` in answer to `session.finish` ended the conversation with the audio
/// that never got a result reported nowhere.
#[test]
fn an_error_instead_of_session_finished_reports_the_audio_without_a_result() {
    let emu = start_emulator(EmulatorConfig {
        faults: vec![Fault::InsteadOf {
            event_type: "session.finish".into(),
            action: FaultAction::SendError {
                code: "InternalError".into(),
                message: "no".into(),
            },
        }],
        ..Default::default()
    });
    let conv = Conversation::start(params_for(&emu), &SessionConfig::manual()).unwrap();
    for c in tone(2000).chunks(CHUNK) {
        conv.append_pcm(c).unwrap();
    }
    let ended = conv.end_session(WAIT);
    assert!(matches!(ended, Err(Error::Server(_))), "{ended:?}");
    let events = collect_until_closed(&conv);
    assert_closed_last(&events);
    assert_eq!(dropped_ms(&events), 2000, "{:?}", types(&events));
}

/// Before: with the server gone for good, `end_session` timed out, the reconnect was
/// abandoned without a word, and the audio sent without a result was reported nowhere.
#[test]
fn a_server_gone_at_the_end_reports_everything_without_a_result() {
    let emu = start_emulator(EmulatorConfig::default());
    let fwd = Forwarder::start(emu.local_addr());
    let mut policy = ReconnectPolicy::default();
    policy.initial_backoff = Duration::from_millis(20);
    policy.max_backoff = Duration::from_millis(100);
    // Still trying when end_session gives up: the close abandons the reconnect.
    policy.max_attempts = 10_000;
    let mut params = params_for(&emu).reconnect(policy);
    params.url = fwd.url();
    let conv = Conversation::start(params, &SessionConfig::manual()).unwrap();
    for c in tone(3000).chunks(CHUNK) {
        conv.append_pcm(c).unwrap();
    }
    fwd.stop_listening();
    fwd.cut();
    let ended = conv.end_session(Duration::from_secs(2));
    assert!(ended.is_err(), "{ended:?}");
    let events = collect_until_closed(&conv);
    assert_closed_last(&events);
    assert_eq!(dropped_ms(&events), 3000, "{:?}", types(&events));
}

/// Before: a close during a reconnect attempt was only looked at between attempts, so drop
/// waited for the attempt's handshake timeout (two minutes here).
#[test]
fn drop_during_a_reconnect_attempt_returns_at_once() {
    let emu = start_emulator(EmulatorConfig::default());
    let fwd = Forwarder::start(emu.local_addr());
    // Takes the connection and never says a word: the attempt waits in the handshake.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut params = params_for(&emu).reconnect(ReconnectPolicy::default());
    params.url = fwd.url();
    params.timeouts.handshake = Duration::from_secs(120);
    params.timeouts.session_created = Duration::from_secs(120);
    let conv = Conversation::start(params, &SessionConfig::manual()).unwrap();
    conv.append_pcm(&tone(100)).unwrap();
    fwd.set_upstream(silent.local_addr().unwrap());
    fwd.cut();
    let deadline = Instant::now() + WAIT;
    while fwd.accepted() < 2 {
        assert!(Instant::now() < deadline, "no reconnect attempt came");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let dropper = std::thread::spawn(move || {
        drop(conv);
        let _ = tx.send(());
    });
    // A bound six times shorter than the handshake timeout it must not wait for.
    rx.recv_timeout(WAIT)
        .expect("drop waited for the reconnect attempt's timeout");
    dropper.join().unwrap();
}

/// Before: a commit (or an update, or a client event) that took the last queue slot between
/// a non-blocking append's room check and its push turned into `Error::Internal("queue
/// shrank")`, which a capture thread takes as fatal. It must be `Full`.
#[test]
fn try_append_racing_commits_reports_full_never_an_error() {
    const ROUNDS: usize = 10_000;
    let emu = start_emulator(EmulatorConfig::default());
    let mut params = params_for(&emu);
    // One slot: the check "room for my frame" and a commit's push meet often.
    params.send_queue_frames = 1;
    let conv = Conversation::start(params, &SessionConfig::manual()).unwrap();
    let sender = conv.audio_sender();
    let barrier = std::sync::Barrier::new(2);
    let chunk = tone(10);
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..ROUNDS {
                barrier.wait();
                match sender.try_append_pcm(&chunk) {
                    Ok(()) | Err(TryAppendError::Full) => {}
                    Err(TryAppendError::Other(e)) => {
                        panic!("a full queue reported as an error: {e}")
                    }
                }
                barrier.wait();
            }
        });
        for round in 0..ROUNDS {
            barrier.wait();
            for _ in 0..(round % 64) * 50 {
                std::hint::spin_loop();
            }
            match conv.commit() {
                Ok(()) | Err(Error::EmptyCommit) => {}
                Err(e) => panic!("{e}"),
            }
            barrier.wait();
        }
    });
    conv.end_session(WAIT).unwrap();
}

/// Before: `commit` read the count of audio appended since the last commit, queued, then
/// set it to 0, so an append in between was forgotten: the next commit failed with "empty"
/// and that audio was left out of the utterance it belonged to.
#[test]
fn no_append_is_forgotten_by_a_concurrent_commit() {
    const ROUNDS: usize = 10_000;
    let emu = start_emulator(EmulatorConfig::default());
    let conv = Conversation::start(params_for(&emu), &SessionConfig::manual()).unwrap();
    let sender = conv.audio_sender();
    let barrier = std::sync::Barrier::new(2);
    let sample = [1000i16];
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..ROUNDS {
                barrier.wait();
                sender.append_pcm(&sample).unwrap();
                sender.append_pcm(&sample).unwrap();
                barrier.wait();
            }
        });
        for round in 0..ROUNDS {
            barrier.wait();
            // A different moment each round, to land between the two appends.
            for _ in 0..(round % 64) * 50 {
                std::hint::spin_loop();
            }
            let commit = || match conv.commit() {
                Ok(()) | Err(Error::EmptyCommit) => {}
                Err(e) => panic!("{e}"),
            };
            commit();
            barrier.wait();
            // Whatever the first commit left, once both appends are in.
            commit();
        }
    });
    conv.end_session(WAIT).unwrap();
    // Each round ends with its two samples committed: no utterance can hold more than two
    // samples, unless an append was forgotten and left for the next round's commit.
    let s = &emu.sessions()[0];
    assert_eq!(s.audio.bytes, (ROUNDS * 4) as u64);
    let biggest = s.items.iter().map(|i| i.audio.bytes).max().unwrap_or(0);
    assert!(
        biggest <= 4,
        "an utterance of {biggest} bytes: an append was forgotten"
    );
}
