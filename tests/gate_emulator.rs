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
