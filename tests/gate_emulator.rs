//! The speech gate in front of a real conversation with the emulator on loopback: what the
//! gate forwards becomes the session's audio, and every utterance, the last one included,
//! is completed by the service before the session is ended (so `session.finish` cannot be
//! what flushed it).

mod common;
mod gate_support;

use std::time::Instant;

use common::{params_for, start_emulator, WAIT};
use gate_support::{scene, Noise, Scene};
use qwen_asr_emulator::EmulatorConfig;
use qwen_asr_realtime::gate::{Gate, GateConfig, Output};
use qwen_asr_realtime::{Conversation, EventKind, SessionConfig};

/// What the caller does with the gate's outputs: audio to the conversation, a commit at each
/// close in manual mode. Returns where each region's first sample landed in the session's
/// audio, in samples.
fn stream_through_gate(conv: &Conversation, gate: &mut Gate, s: &Scene) -> Vec<u64> {
    let mut sent = 0u64;
    let mut region_offsets = vec![None; s.regions.len()];
    let mut feed = |o: Output<'_>| match o {
        Output::Audio {
            samples, at_sample, ..
        } => {
            let end = at_sample + samples.len() as u64;
            for (r, off) in s.regions.iter().zip(region_offsets.iter_mut()) {
                if (at_sample..end).contains(&(r.start as u64)) {
                    *off = Some(sent + r.start as u64 - at_sample);
                }
            }
            conv.append_pcm(samples).expect("append");
            sent += samples.len() as u64;
        }
        Output::Closed { commit: true, .. } | Output::Commit { .. } => {
            conv.commit().expect("commit")
        }
        _ => {}
    };
    for chunk in s.pcm.chunks(1600) {
        gate.process(chunk, &mut feed);
    }
    region_offsets
        .into_iter()
        .map(|o| o.expect("every region forwarded"))
        .collect()
}

/// Waits (bounded) for `n` completed transcripts, before anything ends the session.
fn wait_for_completed(conv: &Conversation, n: usize) -> usize {
    let deadline = Instant::now() + WAIT;
    let mut completed = 0;
    while completed < n {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match conv.recv_timeout(left) {
            Ok(e) if matches!(e.kind, EventKind::Completed(_)) => completed += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    completed
}

fn check(session: SessionConfig, gate_config: GateConfig, silence_ms: u64) {
    let s = scene(Noise::Room, 30.0, &[2.0, 9.0, 17.0], None, 8);
    let emu = start_emulator(EmulatorConfig {
        record_audio: true,
        ..EmulatorConfig::default()
    });
    let conv = Conversation::start(params_for(&emu), &session).unwrap();
    let mut gate = Gate::new(gate_config, 16_000).unwrap();
    let offsets = stream_through_gate(&conv, &mut gate, &s);
    assert!(!gate.is_open(), "the gate closed after the last word");
    // The last utterance has nothing after it: its completed must come from the audio sent.
    assert_eq!(
        wait_for_completed(&conv, 3),
        3,
        "an utterance was left open"
    );
    conv.end_session(WAIT).unwrap();
    let sessions = emu.sessions();
    let rec = &sessions[0];
    let c = gate.counters();
    assert_eq!(
        rec.audio.bytes,
        c.forwarded_samples * 2,
        "the session got what the gate sent"
    );
    assert_eq!(rec.items.len(), 3, "{:?}", rec.items);
    for ((item, r), off) in rec.items.iter().zip(&s.regions).zip(&offsets) {
        let (start, len) = (item.start / 2, item.audio.bytes / 2);
        let (rs, re) = (*off, off + r.len() as u64);
        assert!(
            start <= rs && re <= start + len,
            "region not whole in {item:?}"
        );
        // The item's bytes are the region's own samples.
        let bytes: Vec<u8> = s.pcm[r.clone()]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            &rec.audio_data[rs as usize * 2..re as usize * 2],
            &bytes[..]
        );
        // On the audio timeline the utterance ended within the window plus half a second of
        // the end of its speech.
        let late_ms = (start + len - re) / 16;
        assert!(
            late_ms <= silence_ms + 500,
            "item ended {late_ms} ms after the speech"
        );
    }
}

#[test]
fn vad_mode_every_utterance_completes_including_the_last() {
    check(SessionConfig::vad(), GateConfig::default(), 800);
}

#[test]
fn vad_mode_with_a_short_silence_window() {
    let session = SessionConfig::vad().silence_duration_ms(400);
    check(session.clone(), GateConfig::for_session(&session), 400);
}

#[test]
fn manual_mode_each_close_commits_an_utterance() {
    let session = SessionConfig::manual();
    check(session.clone(), GateConfig::for_session(&session), 500);
}

/// `GatedSender` does the above itself, and its openings and closings take their place in the
/// conversation's events: each `client.gate_opened` comes before the utterance's transcript,
/// each `client.gate_closed` after its speech, with device-timeline positions that bracket
/// the speech region; the server gets exactly what the gate forwarded, in both modes.
#[test]
fn a_gated_sender_sends_only_speech_and_reports_the_gate_in_the_event_stream() {
    use qwen_asr_realtime::gate::GatedSender;
    for session in [SessionConfig::vad(), SessionConfig::manual()] {
        let s = scene(Noise::Room, 30.0, &[2.0, 9.0, 17.0], None, 8);
        let emu = start_emulator(EmulatorConfig {
            record_audio: true,
            ..EmulatorConfig::default()
        });
        let conv = Conversation::start(params_for(&emu), &session).unwrap();
        let mut gated =
            GatedSender::new(conv.audio_sender(), GateConfig::for_session(&session)).unwrap();
        for chunk in s.pcm.chunks(1600) {
            gated.append_pcm(chunk).unwrap();
        }
        gated.finish().unwrap();
        conv.end_session(WAIT).unwrap();
        let mut opened = Vec::new();
        let mut closed = Vec::new();
        let mut order = Vec::new();
        while let Ok(e) = conv.try_recv() {
            match e.kind {
                EventKind::GateOpened {
                    at_ms,
                    speech_at_ms,
                } => {
                    assert!(at_ms <= speech_at_ms);
                    opened.push(speech_at_ms);
                    order.push('o');
                }
                EventKind::GateClosed {
                    at_ms,
                    speech_end_ms,
                } => {
                    assert!(speech_end_ms <= at_ms);
                    closed.push(speech_end_ms);
                    order.push('c');
                }
                EventKind::Completed(_) => order.push('t'),
                _ => {}
            }
        }
        // Sent as fast as the socket takes it, a transcript may come after the next opening;
        // but the gate alternates, and the k-th transcript never comes before the k-th opening.
        let gate_only: String = order.iter().filter(|&&c| c != 't').collect();
        assert_eq!(gate_only, "ocococ", "{session:?}: {order:?}");
        let mut seen_opened = 0;
        let mut transcripts = 0;
        for c in &order {
            match c {
                'o' => seen_opened += 1,
                't' => {
                    transcripts += 1;
                    assert!(transcripts <= seen_opened, "{order:?}");
                }
                _ => {}
            }
        }
        assert_eq!(transcripts, 3, "{order:?}");
        for ((r, on), off) in s.regions.iter().zip(&opened).zip(&closed) {
            // Detected within 100 ms of the region's bounds (frames of 16 ms, onset runs).
            let (start_ms, end_ms) = (r.start as u64 / 16, r.end as u64 / 16);
            assert!(on.abs_diff(start_ms) <= 100, "onset {on} for {start_ms}");
            assert!(off.abs_diff(end_ms) <= 100, "end {off} for {end_ms}");
        }
        let c = gated.counters();
        assert!(c.share_forwarded() < 0.9, "{c:?}");
        assert_eq!(emu.sessions()[0].audio.bytes, c.forwarded_samples * 2);
        assert_eq!(conv.stats().appended_ms, c.forwarded_ms());
    }
}

/// `GatedSink` is what `mic --gate` puts between the capture thread and the conversation. A
/// capture thread must never wait, and the gate cannot take back a chunk it has looked at:
/// so while the link is backed up (here the server stops reading for a while, twice) the sink
/// refuses new chunks until everything the gate decided before them is out, and a refused
/// chunk is offered again, as the capture thread does. Nothing is lost or reordered on the
/// way: the session gets exactly the gate's forwarded audio, each speech region's own samples
/// whole, and the gate's events in order.
#[cfg(feature = "alsa")]
#[test]
fn a_gated_sink_refuses_chunks_while_backed_up_and_loses_nothing() {
    use std::time::Duration;

    use qwen_asr_emulator::{Fault, FaultAction};
    use qwen_asr_realtime::capture::AudioSink;
    use qwen_asr_realtime::gate::GatedSink;
    use qwen_asr_realtime::TryAppendError;

    let session = SessionConfig::vad();
    let s = scene(Noise::Room, 30.0, &[2.0, 9.0, 17.0], None, 8);
    let pause = |n| Fault::AfterAppends {
        n,
        action: FaultAction::PauseReading(Duration::from_millis(700)),
    };
    let emu = start_emulator(EmulatorConfig {
        record_audio: true,
        faults: vec![pause(2), pause(12)],
        fault_sessions: Some(1),
        ..EmulatorConfig::default()
    });
    let params = params_for(&emu)
        .send_queue_frames(2)
        .send_buffer_bytes(Some(4096));
    let conv = Conversation::start(params, &session).unwrap();
    let (sink, control) =
        GatedSink::new(conv.audio_sender(), GateConfig::for_session(&session)).unwrap();
    let mut refused = 0u32;
    let deadline = Instant::now() + WAIT;
    for chunk in s.pcm.chunks(320) {
        loop {
            match sink.try_append(chunk) {
                Ok(()) => break,
                Err(TryAppendError::Full) => {
                    refused += 1;
                    assert!(Instant::now() < deadline, "the sink never took the chunk");
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(TryAppendError::Other(e)) => panic!("{e}"),
            }
        }
    }
    control.finish().unwrap();
    assert!(
        refused > 0,
        "the link never backed up: the test proves nothing"
    );
    // Every event, until the three transcripts are in (bounded), then the rest after the end.
    let mut events = Vec::new();
    while events
        .iter()
        .filter(|k| matches!(k, EventKind::Completed(_)))
        .count()
        < 3
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match conv.recv_timeout(left) {
            Ok(e) => events.push(e.kind),
            Err(e) => panic!("an utterance was left open: {e:?}"),
        }
    }
    conv.end_session(WAIT).unwrap();
    while let Ok(e) = conv.try_recv() {
        events.push(e.kind);
    }
    let c = control.counters();
    assert_eq!(c.captured_samples, s.pcm.len() as u64);
    assert_eq!(
        c.captured_samples,
        c.forwarded_samples + c.gated_samples + c.held_samples
    );
    let sessions = emu.sessions();
    let rec = &sessions[0];
    assert_eq!(
        rec.audio.bytes,
        c.forwarded_samples * 2,
        "what the gate sent"
    );
    // Each region's own samples arrived whole and in order.
    let received: Vec<i16> = rec
        .audio_data
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut from = 0;
    for r in &s.regions {
        let region = &s.pcm[r.clone()];
        let at = received[from..]
            .windows(region.len())
            .position(|w| w == region)
            .unwrap_or_else(|| panic!("region {r:?} did not arrive whole"));
        from += at + region.len();
    }
    let mut gate_events = String::new();
    for kind in events {
        match kind {
            EventKind::GateOpened { .. } => gate_events.push('o'),
            EventKind::GateClosed { .. } => gate_events.push('c'),
            EventKind::AudioDropped { ms, .. } => panic!("{ms} ms dropped"),
            _ => {}
        }
    }
    assert_eq!(gate_events, "ocococ");
}
