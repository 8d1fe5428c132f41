//! The speech gate on audio whose speech regions are known by construction: shipped speech
//! clips placed in generated noise beds. Counts and positions only, never timings.

mod gate_support;

use std::ops::Range;

use gate_support::*;
use qwen_asr_realtime::audio::resample::Resampler;
use qwen_asr_realtime::gate::{
    Detector, Gate, GateConfig, Output, SessionTimeline, TurnMode, DETECTOR_FRAME_SAMPLES,
};
use qwen_asr_realtime::SessionConfig;

mod counting_alloc;
use counting_alloc::allocations_here;

const MS: usize = RATE / 1000;
/// Least pre-roll before a region's first sample: the default 500 ms less the detector's
/// onset delay (its onset run and its 48 ms window), with room to spare.
const MIN_LEAD_MS: usize = 300;

/// The three clips at 2, 8 and 14 s in 20 s of `kind`, at 10 dB SNR over a real noise (over
/// silence and near-silence at their own level: 10 dB above -70 dBFS would not be speech).
fn three_clips_in(kind: Noise) -> Scene {
    let snr = match kind {
        Noise::Silence | Noise::NearSilence => None,
        _ => Some(10.0),
    };
    scene(kind, 20.0, &[2.0, 8.0, 14.0], snr, 3)
}

/// Checks that every forwarded segment is the input's own samples at its position, and that
/// each region lies whole inside one segment that starts at least `lead` samples before it
/// and ends at least `tail` samples after it. Returns the segment index of each region.
fn assert_regions_forwarded(
    what: &str,
    pcm: &[i16],
    regions: &[Range<usize>],
    run: &Run,
    lead: usize,
    tail: usize,
) -> Vec<usize> {
    for (start, samples) in &run.segments {
        let start = *start as usize;
        assert!(
            start + samples.len() <= pcm.len(),
            "{what}: segment past the end"
        );
        assert!(
            samples[..] == pcm[start..start + samples.len()],
            "{what}: the segment at {start} is not the input's samples"
        );
    }
    regions
        .iter()
        .map(|r| {
            let i = run
                .segments
                .iter()
                .position(|(s, v)| (*s as usize) <= r.start && r.end <= *s as usize + v.len())
                .unwrap_or_else(|| {
                    panic!(
                        "{what}: region {r:?} is not forwarded whole; segments {:?}",
                        run.segments
                            .iter()
                            .map(|(s, v)| *s..*s + v.len() as u64)
                            .collect::<Vec<_>>()
                    )
                });
            let (s, v) = &run.segments[i];
            let (s, e) = (*s as usize, *s as usize + v.len());
            assert!(
                r.start - s >= lead.min(r.start),
                "{what}: region {r:?} has only {} ms of pre-roll",
                (r.start - s) / MS
            );
            assert!(
                e - r.end >= tail.min(pcm.len() - r.end),
                "{what}: region {r:?} is followed by only {} ms",
                (e - r.end) / MS
            );
            i
        })
        .collect()
}

#[test]
fn every_speech_region_is_forwarded_whole_with_pre_roll_in_every_noise() {
    for kind in NOISES {
        let s = three_clips_in(kind);
        let mut gate = Gate::new(GateConfig::default(), 16_000).unwrap();
        let run = run_gate(&mut gate, &s.pcm, 1600);
        let what = format!("{kind:?}");
        let segs =
            assert_regions_forwarded(&what, &s.pcm, &s.regions, &run, MIN_LEAD_MS * MS, 800 * MS);
        // Each clip is its own utterance (the gaps are longer than the hangover), and nothing
        // else opened the gate.
        assert_eq!(segs, [0, 1, 2], "{what}");
        assert_eq!(run.openings(), 3, "{what}: {:?}", run.events);
        let c = gate.counters();
        assert_eq!(c.held_samples, 0);
        assert_eq!(c.captured_samples, s.pcm.len() as u64);
        assert_eq!(c.captured_samples, c.forwarded_samples + c.gated_samples);
    }
}

#[test]
fn noise_beds_alone_are_held_back() {
    for kind in NOISES {
        let pcm = noise(kind, 120.0, 11);
        let mut gate = Gate::new(GateConfig::default(), 16_000).unwrap();
        let run = run_gate(&mut gate, &pcm, 1600);
        let c = gate.counters();
        assert_eq!(
            (run.openings(), c.forwarded_samples),
            (0, 0),
            "{kind:?} opened the gate: {:?}",
            run.events
        );
        assert_eq!(c.gated_samples, pcm.len() as u64, "{kind:?}");
    }
}

#[test]
fn noise_beds_alone_are_held_back_at_8_khz() {
    for kind in NOISES {
        let (pcm8, _) = to_8k(&noise(kind, 120.0, 12));
        let mut gate = Gate::new(narrowband(), 8_000).unwrap();
        let run = run_gate(&mut gate, &pcm8, 800);
        assert_eq!(
            run.openings(),
            0,
            "8 kHz {kind:?} opened the gate: {:?}",
            run.events
        );
    }
}

#[test]
fn a_long_mostly_silent_fixture_sends_at_most_a_quarter_with_every_region_whole() {
    let s = long_scene(10.0, 0.10, 5);
    let speech: usize = s.regions.iter().map(|r| r.len()).sum();
    let speech_share = speech as f64 / s.pcm.len() as f64;
    assert!(
        (0.08..0.12).contains(&speech_share),
        "fixture speech share {speech_share}"
    );
    let mut gate = Gate::new(GateConfig::default(), 16_000).unwrap();
    let run = run_gate(&mut gate, &s.pcm, 1600);
    assert_regions_forwarded(
        "10 min",
        &s.pcm,
        &s.regions,
        &run,
        MIN_LEAD_MS * MS,
        800 * MS,
    );
    let c = gate.counters();
    assert_eq!(c.captured_samples, c.forwarded_samples + c.gated_samples);
    let share = c.share_forwarded();
    println!(
        "10 min, {:.1} % speech in {} regions: {:.1} % sent in {} openings",
        speech_share * 100.0,
        s.regions.len(),
        share * 100.0,
        c.openings
    );
    assert!(share <= 0.25, "sent {:.1} %", share * 100.0);
    assert!(c.openings as usize <= s.regions.len());
}

#[test]
fn output_does_not_depend_on_chunk_size() {
    let s = three_clips_in(Noise::Pink);
    let reference = run_gate(
        &mut Gate::new(GateConfig::default(), 16_000).unwrap(),
        &s.pcm,
        16_000,
    );
    assert_eq!(reference.openings(), 3);
    for chunk in [1, 160, 256, 1000, 16_001] {
        let mut gate = Gate::new(GateConfig::default(), 16_000).unwrap();
        let run = run_gate(&mut gate, &s.pcm, chunk);
        assert!(run == reference, "chunks of {chunk} gave another output");
    }
    // Irregular chunks, so that frames are split at every offset.
    let mut gate = Gate::new(GateConfig::default(), 16_000).unwrap();
    let mut run = Run::default();
    let mut rest = &s.pcm[..];
    for size in [7usize, 300, 1, 4099, 255, 257, 13].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = (*size).min(rest.len());
        gate.process(&rest[..n], |o| run.record(o));
        rest = &rest[n..];
    }
    gate.finish(|o| run.record(o));
    assert!(run == reference, "irregular chunks gave another output");
}

fn to_8k(pcm: &[i16]) -> (Vec<i16>, usize) {
    let mut down = Resampler::new(16_000, 1, 8_000).unwrap();
    let mut pcm8 = Vec::new();
    down.process(pcm, &mut pcm8);
    (pcm8, down.delay_out_samples().round() as usize)
}

fn narrowband() -> GateConfig {
    GateConfig::for_session(&SessionConfig::vad().sample_rate(8_000))
}

#[test]
fn eight_khz_sessions_forward_the_original_samples_of_every_region() {
    for kind in NOISES {
        let s = three_clips_in(kind);
        let (pcm8, delay) = to_8k(&s.pcm);
        let regions: Vec<Range<usize>> = s
            .regions
            .iter()
            .map(|r| r.start / 2 + delay..(r.end / 2 + delay).min(pcm8.len()))
            .collect();
        let mut gate = Gate::new(narrowband(), 8_000).unwrap();
        let run = run_gate(&mut gate, &pcm8, 800);
        let what = format!("8 kHz {kind:?}");
        let segs = assert_regions_forwarded(&what, &pcm8, &regions, &run, MIN_LEAD_MS * 8, 800 * 8);
        assert_eq!(segs, [0, 1, 2], "{what}");
        assert_eq!(run.openings(), 3, "{what}");
        let c = gate.counters();
        assert_eq!(c.captured_samples, pcm8.len() as u64);
        assert_eq!(c.captured_samples, c.forwarded_samples + c.gated_samples);
    }
}

/// The last utterance, with nothing after it, must still end on time: the service gets its
/// whole silence window of real audio, and the gate closes promptly after it.
#[test]
fn vad_mode_sends_the_server_silence_window_after_the_last_word_then_closes() {
    for silence_ms in [200u32, 400, 800, 2000] {
        let s = scene(Noise::Room, 12.0, &[2.0], Some(15.0), 9);
        let config = GateConfig::default().turn(TurnMode::ServerVad {
            silence_duration_ms: silence_ms,
        });
        let hangover = config.effective_hangover_ms() as usize;
        let mut gate = Gate::new(config, 16_000).unwrap();
        let run = run_gate(&mut gate, &s.pcm, 1600);
        let what = format!("silence_duration_ms {silence_ms}");
        let need = silence_ms as usize * MS;
        assert_regions_forwarded(&what, &s.pcm, &s.regions, &run, MIN_LEAD_MS * MS, need);
        let end = s.regions[0].end;
        let closed: Vec<&Event> = run
            .events
            .iter()
            .filter(|e| matches!(e, Event::Closed { .. }))
            .collect();
        let [Event::Closed { at, commit, .. }] = closed[..] else {
            panic!("{what}: {:?}", run.events)
        };
        assert!(!commit);
        // Closed within the hangover (plus the detector's lag of a few frames) of the speech.
        let late_ms = (*at as usize).saturating_sub(end) / MS;
        assert!(
            late_ms <= hangover + 150,
            "{what}: closed {late_ms} ms after the speech"
        );
    }
}

#[test]
fn manual_mode_closes_each_utterance_with_a_commit_after_a_short_hangover() {
    let s = three_clips_in(Noise::Fan);
    let config = GateConfig::default()
        .turn(TurnMode::Manual)
        .hangover_ms(400);
    let mut gate = Gate::new(config, 16_000).unwrap();
    let run = run_gate(&mut gate, &s.pcm, 1600);
    let segs = assert_regions_forwarded(
        "manual",
        &s.pcm,
        &s.regions,
        &run,
        MIN_LEAD_MS * MS,
        300 * MS,
    );
    assert_eq!(segs, [0, 1, 2]);
    let closes: Vec<(u64, bool)> = run
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Closed { at, commit, .. } => Some((*at, *commit)),
            _ => None,
        })
        .collect();
    assert_eq!(closes.len(), 3);
    for ((at, commit), r) in closes.iter().zip(&s.regions) {
        assert!(commit);
        let late_ms = (*at as usize - r.end) / MS;
        assert!(late_ms <= 400 + 250, "closed {late_ms} ms after the speech");
    }
}

#[test]
fn idle_is_reported_once_per_closed_stretch_and_marks_the_next_onset() {
    let s = scene(Noise::Room, 100.0, &[5.0, 70.0], None, 21);
    let config = GateConfig::default().idle_timeout_ms(Some(30_000));
    let run = run_gate(
        &mut Gate::new(config.clone(), 16_000).unwrap(),
        &s.pcm,
        1600,
    );
    let kinds: Vec<&str> = run
        .events
        .iter()
        .map(|e| match e {
            Event::Opened {
                after_idle: false, ..
            } => "opened",
            Event::Opened {
                after_idle: true, ..
            } => "opened after idle",
            Event::Closed { .. } => "closed",
            Event::Idle { .. } => "idle",
            Event::Commit { .. } => "commit",
        })
        .collect();
    assert_eq!(
        kinds,
        ["opened", "closed", "idle", "opened after idle", "closed"],
        "{:?}",
        run.events
    );
    let Event::Closed { at: closed, .. } = run.events[1] else {
        unreachable!()
    };
    let Event::Idle { at: idle } = run.events[2] else {
        unreachable!()
    };
    // On the frame grid: within one frame of 30 s of audio after the close.
    let after = idle - closed;
    assert!(
        (480_000..480_000 + DETECTOR_FRAME_SAMPLES as u64).contains(&after),
        "{after}"
    );
    // The session is kept open: no idleness, and the second onset is not marked.
    let kept = run_gate(
        &mut Gate::new(config.keep_session_open(), 16_000).unwrap(),
        &s.pcm,
        1600,
    );
    assert!(kept.events.iter().all(|e| !matches!(
        e,
        Event::Idle { .. }
            | Event::Opened {
                after_idle: true,
                ..
            }
    )));
    assert_eq!(kept.openings(), 2);
    assert!(
        kept.segments == run.segments,
        "idleness changed what was forwarded"
    );
}

/// The service's offsets count only the audio of the current session; the timeline maps
/// them back to where the speech was captured, across gate closes and a session rollover at
/// an idle report.
#[test]
fn session_offsets_map_back_to_the_device_timeline_across_closes_and_rollovers() {
    let s = scene(Noise::Room, 100.0, &[3.0, 9.0, 70.0], None, 4);
    let mut gate = Gate::new(GateConfig::default(), 16_000).unwrap();
    let mut timeline = SessionTimeline::new(16_000, 64);
    // (session number, session offset in samples) of every region's first sample, worked out
    // from what was sent, as the service would count it.
    let mut session = 0;
    let mut found = Vec::new();
    let mut checks = Vec::new();
    for chunk in s.pcm.chunks(1600) {
        gate.process(chunk, |o| match o {
            Output::Audio {
                samples, at_sample, ..
            } => {
                let end = at_sample + samples.len() as u64;
                for (i, r) in s.regions.iter().enumerate() {
                    let start = r.start as u64;
                    if (at_sample..end).contains(&start) {
                        let offset = timeline.sent_samples() + (start - at_sample);
                        found.push((i, session, offset));
                    }
                }
                timeline.record(at_sample, samples.len() as u64);
            }
            Output::Idle { .. } => {
                // What the conversation does: end the session, map the rest of its events,
                // then start counting afresh for the next one.
                for &(i, sess, offset) in &found {
                    if sess == session {
                        checks.push((i, timeline.device_sample(offset)));
                    }
                }
                session += 1;
                timeline.new_session();
            }
            _ => {}
        });
    }
    for &(i, sess, offset) in &found {
        if sess == session {
            checks.push((i, timeline.device_sample(offset)));
        }
    }
    assert_eq!(session, 1, "one rollover");
    assert_eq!(found.iter().map(|f| f.1).collect::<Vec<_>>(), [0, 0, 1]);
    let want: Vec<(usize, Option<u64>)> = s
        .regions
        .iter()
        .enumerate()
        .map(|(i, r)| (i, Some(r.start as u64)))
        .collect();
    assert_eq!(checks, want);
    // The second region's session offset is well before its device position: the gap
    // between the utterances was never sent.
    assert!(found[1].2 < s.regions[1].start as u64 - 3 * RATE as u64);
}

/// A detector that knows the answer: frames whose samples are all non-zero are speech.
struct Oracle {
    resets: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Detector for Oracle {
    fn score(&mut self, frame: &[i16; DETECTOR_FRAME_SAMPLES]) -> f32 {
        if frame.iter().all(|&s| s != 0) {
            1.0
        } else {
            0.0
        }
    }
    fn reset(&mut self) {
        self.resets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// With a detector of the caller's, the pre-roll, onset and hangover are exact to the sample.
#[test]
fn a_plugged_in_detector_drives_the_gate_to_the_sample() {
    let frame = DETECTOR_FRAME_SAMPLES;
    // Digital silence with two bursts of loud, never-zero samples on the frame grid.
    let mut pcm = vec![0i16; 20 * RATE];
    let mut rng = Rng::new(1);
    let bursts = [(100 * frame)..(150 * frame), (400 * frame)..(420 * frame)];
    for b in &bursts {
        for s in &mut pcm[b.clone()] {
            *s = (rng.range(1000..20_000) as i16) * if rng.uniform() < 0.5 { -1 } else { 1 };
        }
    }
    let resets = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let config = GateConfig::default()
        .turn(TurnMode::Manual)
        .hangover_ms(320)
        .pre_roll_ms(500)
        .onset_ms(48)
        .keep_session_open();
    let detector = Box::new(Oracle {
        resets: resets.clone(),
    });
    let mut gate = Gate::with_detector(config, 16_000, detector).unwrap();
    let run = run_gate(&mut gate, &pcm, 333);
    let (onset, hangover, pre_roll) = (3 * frame, 20 * frame, 8000);
    let mut want = Vec::new();
    for b in &bursts {
        let speech_at = b.start as u64;
        let opened = speech_at - pre_roll as u64;
        want.push(Event::Opened {
            at: opened,
            speech_at,
            after_idle: false,
        });
        want.push(Event::Closed {
            at: (b.end + hangover) as u64,
            speech_end: b.end as u64,
            commit: true,
        });
    }
    assert_eq!(run.events, want);
    // The gate opened at the end of the onset run and forwarded 500 ms before its start.
    let _ = onset;
    let seg: Vec<Range<u64>> = run
        .segments
        .iter()
        .map(|(s, v)| *s..*s + v.len() as u64)
        .collect();
    assert_eq!(
        seg,
        bursts
            .iter()
            .map(|b| (b.start - pre_roll) as u64..(b.end + hangover) as u64)
            .collect::<Vec<_>>()
    );
    // The detector was reset at the start of each burst, after the skipped silence.
    assert_eq!(resets.load(std::sync::atomic::Ordering::Relaxed), 2 + 1);
    let c = gate.counters();
    assert_eq!(
        c.forwarded_samples,
        seg.iter().map(|r| r.end - r.start).sum::<u64>()
    );
    assert_eq!(c.gated_samples, pcm.len() as u64 - c.forwarded_samples);
}

/// Manual mode takes at most 60 s per commit: a long utterance is committed at a pause late
/// in it, or at the limit, and the audio goes on without a gap.
#[test]
fn long_manual_utterances_are_committed_at_a_pause_or_at_the_limit() {
    let frame = DETECTOR_FRAME_SAMPLES;
    let mut rng = Rng::new(2);
    // In frames: 64 of silence, then "speech" (never-zero samples) with a one-frame pause
    // every 125 frames (2 s) for 30 s, none for the next 25 s, pauses again for 45 s, then
    // 2 s of silence. Every position is on the frame grid.
    let lead = 64;
    let mut pauses = Vec::new();
    let mut f = lead + 125;
    while f < lead + 30 * 125 / 2 {
        pauses.push(f);
        f += 125;
    }
    let quiet_until = lead + 55 * 125 / 2;
    f = quiet_until;
    while f < lead + 100 * 125 / 2 {
        pauses.push(f);
        f += 125;
    }
    let end = lead + 100 * 125 / 2;
    let mut pcm = vec![0i16; end * frame + 2 * RATE];
    for fr in lead..end {
        if pauses.contains(&fr) {
            continue;
        }
        for s in &mut pcm[fr * frame..(fr + 1) * frame] {
            *s = (rng.range(1000..20_000) as i16) * if rng.uniform() < 0.5 { -1 } else { 1 };
        }
    }
    let config = GateConfig::default()
        .turn(TurnMode::Manual)
        .keep_session_open()
        .pre_roll_ms(0);
    let resets = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut gate = Gate::with_detector(config, 16_000, Box::new(Oracle { resets })).unwrap();
    let run = run_gate(&mut gate, &pcm, 1600);
    let commits: Vec<u64> = run
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Commit { at } => Some(*at),
            _ => None,
        })
        .collect();
    let opened = (lead * frame) as u64;
    assert!(
        matches!(run.events[0], Event::Opened { at, .. } if at == opened),
        "{:?}",
        run.events
    );
    // No pause between 40 and 50 s into the utterance: committed at the limit, 50 s.
    let first = opened + 50 * RATE as u64;
    // Then the first pause (its frame's end) at least 40 s after that.
    let second_commit = pauses
        .iter()
        .map(|p| ((p + 1) * frame) as u64)
        .find(|&p| p >= first + 40 * RATE as u64)
        .unwrap();
    assert_eq!(commits, [first, second_commit], "{:?}", run.events);
    // One continuous forwarded stretch, closed with the last commit.
    assert_eq!(run.segments.len(), 1);
    assert_eq!(run.openings(), 1);
    assert!(matches!(
        run.events.last(),
        Some(Event::Closed { commit: true, .. })
    ));
}

#[test]
fn the_gate_allocates_nothing_while_it_runs() {
    let s = three_clips_in(Noise::Room);
    let (pcm8, _) = to_8k(&s.pcm);
    for (rate, pcm, config) in [
        (16_000u32, &s.pcm, GateConfig::default()),
        (8_000, &pcm8, narrowband()),
    ] {
        let mut gate = Gate::new(config.idle_timeout_ms(Some(1_000)), rate).unwrap();
        let (mut forwarded, mut events) = (0usize, 0usize);
        let mut emit = |o: Output<'_>| match o {
            Output::Audio { samples, .. } => forwarded += samples.len(),
            _ => events += 1,
        };
        let before = allocations_here();
        for chunk in pcm.chunks(rate as usize / 10) {
            gate.process(chunk, &mut emit);
        }
        gate.finish(&mut emit);
        let allocations = allocations_here() - before;
        // The work was done: three utterances forwarded, each opened, closed and idled (and
        // the first second was idle too).
        assert_eq!(events, 10, "{rate} Hz");
        assert_eq!(forwarded as u64, gate.counters().forwarded_samples);
        assert!(forwarded > 3 * rate as usize);
        assert_eq!(allocations, 0, "{rate} Hz");
    }
}

#[test]
#[ignore = "prints figures: cargo test --release --test gate figures -- --ignored --nocapture"]
fn figures() {
    for kind in NOISES {
        let pcm = noise(kind, 600.0, 7);
        let mut gate = Gate::new(GateConfig::default(), 16_000).unwrap();
        let run = run_gate(&mut gate, &pcm, 1600);
        let c = gate.counters();
        println!(
            "{kind:?}: level {:.1} dBFS, {} openings, {} ms forwarded of {} ms, detector on {} of {} frames",
            level_dbfs(&pcm),
            run.openings(),
            c.forwarded_ms(),
            c.captured_ms(),
            c.detector_frames,
            c.frames
        );
    }
    for kind in NOISES {
        let s = three_clips_in(kind);
        let mut gate = Gate::new(GateConfig::default(), 16_000).unwrap();
        let run = run_gate(&mut gate, &s.pcm, 1600);
        let leads: Vec<String> = s
            .regions
            .iter()
            .zip(run.events.chunks(2))
            .map(|(r, e)| match e {
                [Event::Opened { at, speech_at, .. }, Event::Closed { at: closed, .. }] => format!(
                    "lead {} ms (onset +{} ms), tail {} ms",
                    (r.start as i64 - *at as i64) / MS as i64,
                    (*speech_at as i64 - r.start as i64) / MS as i64,
                    (*closed as i64 - r.end as i64) / MS as i64
                ),
                _ => "?".into(),
            })
            .collect();
        println!(
            "{kind:?} + speech: {} openings; {}",
            run.openings(),
            leads.join("; ")
        );
    }
}
