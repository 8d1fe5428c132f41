//! The speech gate: between an audio source and the conversation, it forwards only speech,
//! with a pre-roll before each onset and a hangover after it, and holds everything else back,
//! so that an always-listening device sends (and pays for) minutes a day, not hours.
//!
//! Everything runs on the **audio timeline**: positions are samples since the first sample
//! the gate was given, durations are audio durations. A file pushed as fast as possible is
//! gated exactly as the same audio captured live, and the output does not depend on how the
//! audio is cut into chunks.
//!
//! Per 16 ms frame (256 samples at 16 kHz, 128 at 8 kHz):
//! 1. the frame's level is measured above 100 Hz (DC, rumble and fan swell removed), and a
//!    noise-floor tracker measures how far the frame stands out of the background;
//! 2. an energy pre-gate runs the network only from a frame that could begin speech (above
//!    [`GateConfig::energy_floor_dbfs`] and [`GateConfig::onset_above_floor_db`] out of the
//!    background) until shortly after frames stop qualifying, or while the gate is open, so
//!    it does not run on near-silence or steady noise;
//! 3. the [`Detector`] (built in: [`EarshotDetector`]) scores the frame; an 8 kHz session's
//!    frame is scored on a 16 kHz copy, and the original 8 kHz samples are forwarded;
//! 4. onset/offset hysteresis opens the gate after [`GateConfig::onset_ms`] of frames that
//!    are both confident and loud enough, and closes it after
//!    [`GateConfig::effective_hangover_ms`] without such a frame.
//!
//! While closed, the newest [`GateConfig::pre_roll_ms`] (plus the onset run) wait in a ring
//! allocated once; an onset forwards them first. No call allocates after [`Gate::new`].
//!
//! ```
//! use qwen_asr_realtime::gate::{Gate, GateConfig, Output};
//!
//! let mut gate = Gate::new(GateConfig::default(), 16_000)?;
//! let silence = vec![0i16; 16_000];
//! let mut sent = 0;
//! gate.process(&silence, |out| {
//!     if let Output::Audio { samples, .. } = out {
//!         sent += samples.len(); // hand `samples` to the conversation here
//!     }
//! });
//! gate.finish(|_| {});
//! assert_eq!(sent, 0);
//! let c = gate.counters();
//! assert_eq!(c.captured_samples, c.forwarded_samples + c.gated_samples + c.held_samples);
//! # Ok::<(), qwen_asr_realtime::Error>(())
//! ```

mod config;
mod detector;
mod energy;
mod policy;
mod preroll;
mod sender;
#[cfg(feature = "alsa")]
mod sink;
mod timeline;
mod upsample;

pub use config::{
    GateConfig, TurnMode, MANUAL_COMMIT_LIMIT_MS, MAX_HANGOVER_MS, MAX_ONSET_MS, MAX_PRE_ROLL_MS,
    NARROWBAND_OFFSET_THRESHOLD, NARROWBAND_ONSET_THRESHOLD, SERVER_SILENCE_MARGIN_MS,
    SPLIT_WINDOW_MS,
};
pub use detector::{
    Detector, EarshotDetector, DETECTOR_FRAME_MS, DETECTOR_FRAME_SAMPLES, DETECTOR_RATE_HZ,
};
pub use sender::{Accounting, GatedSender};
#[cfg(feature = "alsa")]
#[cfg_attr(docsrs, doc(cfg(feature = "alsa")))]
pub use sink::{GateControl, GatedSink};

pub use timeline::{SessionTimeline, DEFAULT_TIMELINE_SEGMENTS};

use crate::error::{Error, Result};
use detector::sanitize;
use energy::{LevelFilter, NoiseFloor, PreGate, Qualifies, Verdict};
use policy::{Frame, Hysteresis, Step};
use preroll::PreRoll;
use upsample::Upsampler2x;

/// Frames of the audio just before a start that the detector is run on first (their
/// scores discarded). A freshly reset network needs about five frames to reach its scores:
/// without this it would recognise a word that begins after a quiet stretch some 100 ms
/// late, eating into the pre-roll. Starts are rare (a frame must stand well out of the
/// background), so the extra runs cost little.
const WARM_UP_FRAMES: usize = 6;

/// One thing the gate did, in order with the audio. Positions are on the device timeline:
/// samples (and whole milliseconds, rounded down) since the first sample given to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output<'a> {
    /// Speech began: the audio that follows (starting with the pre-roll) is forwarded.
    Opened {
        /// Position of the first forwarded sample, the start of the pre-roll.
        at_sample: u64,
        /// [`at_sample`](Output::Opened::at_sample) in ms.
        at_ms: u64,
        /// Where the detector's onset run began, after the pre-roll.
        speech_at_sample: u64,
        /// True for the first onset after an [`Output::Idle`]: a session ended for idleness
        /// must be reopened before the audio is sent.
        after_idle: bool,
    },
    /// Samples to forward, contiguous with the previous `Audio` unless an `Opened` came
    /// between. The slice is only valid during the call.
    Audio {
        /// The original samples, at the session's rate.
        samples: &'a [i16],
        /// Position of `samples[0]`.
        at_sample: u64,
        /// [`at_sample`](Output::Audio::at_sample) in ms.
        at_ms: u64,
    },
    /// The hangover ran out (or the stream ended): nothing more is forwarded until the next
    /// `Opened`.
    Closed {
        /// Position just after the last forwarded sample.
        at_sample: u64,
        /// [`at_sample`](Output::Closed::at_sample) in ms.
        at_ms: u64,
        /// Where the last speech frame ended (the hangover is what lies between).
        speech_end_sample: u64,
        /// True in manual mode: send `input_audio_buffer.commit` now.
        commit: bool,
    },
    /// Manual mode: the utterance has lasted [`GateConfig::max_utterance_ms`] (or nearly,
    /// and paused): send `input_audio_buffer.commit` now; the gate stays open and the audio
    /// goes on, contiguous.
    Commit {
        /// Position of the first sample after the committed audio.
        at_sample: u64,
        /// [`at_sample`](Output::Commit::at_sample) in ms.
        at_ms: u64,
    },
    /// The gate has been closed for [`GateConfig::idle_timeout_ms`]: end the session; the next
    /// `Opened` has `after_idle` set. Reported once per closed stretch.
    Idle {
        /// Position at which the timeout was reached.
        at_sample: u64,
        /// [`at_sample`](Output::Idle::at_sample) in ms.
        at_ms: u64,
    },
}

/// The gate's accounting, in samples at the session's rate. At every moment
/// `captured = forwarded + gated + held`; after [`Gate::finish`] `held` is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Counters {
    /// The session's sample rate, for the `_ms` conversions.
    pub sample_rate: u32,
    /// Samples given to [`Gate::process`].
    pub captured_samples: u64,
    /// Samples handed out in [`Output::Audio`].
    pub forwarded_samples: u64,
    /// Samples held back for good (pushed out of the pre-roll, or left in it at the end).
    pub gated_samples: u64,
    /// Samples in the pre-roll now: forwarded if speech follows soon, gated otherwise.
    pub held_samples: u64,
    /// Times the gate opened.
    pub openings: u64,
    /// Times the gate reported [`Output::Idle`].
    pub idles: u64,
    /// 16 ms frames judged.
    pub frames: u64,
    /// Frames on which the detector ran (the rest were skipped by the energy pre-gate).
    pub detector_frames: u64,
}

impl Counters {
    fn ms(&self, samples: u64) -> u64 {
        samples.saturating_mul(1000) / u64::from(self.sample_rate.max(1))
    }

    /// Captured audio in ms (rounded down).
    pub fn captured_ms(&self) -> u64 {
        self.ms(self.captured_samples)
    }

    /// Forwarded audio in ms (rounded down).
    pub fn forwarded_ms(&self) -> u64 {
        self.ms(self.forwarded_samples)
    }

    /// Gated audio in ms (rounded down).
    pub fn gated_ms(&self) -> u64 {
        self.ms(self.gated_samples)
    }

    /// Held audio in ms (rounded down).
    pub fn held_ms(&self) -> u64 {
        self.ms(self.held_samples)
    }

    /// The share of the captured audio forwarded, 0 to 1 (0 before any audio).
    pub fn share_forwarded(&self) -> f64 {
        if self.captured_samples == 0 {
            0.0
        } else {
            self.forwarded_samples as f64 / self.captured_samples as f64
        }
    }
}

/// The speech gate. See the [module documentation](self).
pub struct Gate {
    config: GateConfig,
    sample_rate: u32,
    /// Samples per detector frame at the session's rate.
    frame_len: usize,
    /// The current frame at the session's rate, `frame_fill` samples of it so far.
    frame: Box<[i16]>,
    frame_fill: usize,
    /// The detector's 16 kHz view of the frame (a copy, or the ×2 interpolation at 8 kHz).
    frame16: Box<[i16; DETECTOR_FRAME_SAMPLES]>,
    /// One earlier frame at the session's rate, for the warm-up.
    warm: Box<[i16]>,
    upsampler: Option<Upsampler2x>,
    detector: Box<dyn Detector>,
    level_filter: LevelFilter,
    pre_gate: PreGate,
    noise_floor: NoiseFloor,
    hysteresis: Hysteresis,
    preroll: PreRoll,
    /// Position of the next sample.
    pos: u64,
    /// Where the gate last closed (or the stream began): the start of the closed stretch.
    closed_at: u64,
    /// Where the audio of the current manual-mode utterance began (its last commit).
    utterance_at: u64,
    /// Manual mode: utterance lengths at which a pause splits it, and at which it is split.
    split_samples: Option<(u64, u64)>,
    idle_samples: Option<u64>,
    idle_reported: bool,
    last_score: f32,
    last_level_dbfs: f64,
    counters: Counters,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("config", &self.config)
            .field("sample_rate", &self.sample_rate)
            .field("open", &self.is_open())
            .field("position", &self.pos)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate for `sample_rate` Hz mono audio (16000 or 8000, the session's rate) with the
    /// built-in [`EarshotDetector`]. For 8 kHz, make `config` with
    /// [`GateConfig::for_session`] or [`GateConfig::narrowband`]: the network scores
    /// narrowband speech lower.
    ///
    /// Fails with [`Error::InvalidConfig`] for another rate or an invalid `config`.
    pub fn new(config: GateConfig, sample_rate: u32) -> Result<Gate> {
        Gate::with_detector(config, sample_rate, Box::new(EarshotDetector::new()))
    }

    /// A gate with a detector of the caller's.
    pub fn with_detector(
        config: GateConfig,
        sample_rate: u32,
        detector: Box<dyn Detector>,
    ) -> Result<Gate> {
        config.validate()?;
        let (frame_len, upsampler) = match sample_rate {
            16_000 => (DETECTOR_FRAME_SAMPLES, None),
            8_000 => (DETECTOR_FRAME_SAMPLES / 2, Some(Upsampler2x::default())),
            other => {
                return Err(Error::InvalidConfig {
                    field: "gate.sample_rate",
                    message: format!("{other} Hz; the gate takes 16000 or 8000 Hz"),
                })
            }
        };
        let frames = |ms: u32| ms.div_ceil(DETECTOR_FRAME_MS);
        let onset_frames = frames(config.onset_ms);
        let samples = |ms: u32| u64::from(ms) * u64::from(sample_rate) / 1000;
        // The ring holds the pre-roll and the onset run, which is still in it when the gate
        // opens (the onset is only known at the run's end).
        let preroll =
            PreRoll::new(samples(config.pre_roll_ms) as usize + onset_frames as usize * frame_len);
        let split_samples = (config.turn == TurnMode::Manual).then(|| {
            let max = samples(config.max_utterance_ms);
            (max - samples(SPLIT_WINDOW_MS), max)
        });
        Ok(Gate {
            hysteresis: Hysteresis::new(
                (config.onset_threshold, config.onset_above_floor_db),
                (config.offset_threshold, config.offset_above_floor_db),
                onset_frames,
                frames(config.effective_hangover_ms()),
            ),
            pre_gate: PreGate::new(config.energy_floor_dbfs, frame_len),
            noise_floor: NoiseFloor::new(),
            level_filter: LevelFilter::new(sample_rate),
            idle_samples: config.idle_timeout_ms.map(samples),
            config,
            sample_rate,
            frame_len,
            frame: vec![0; frame_len].into_boxed_slice(),
            frame_fill: 0,
            frame16: Box::new([0; DETECTOR_FRAME_SAMPLES]),
            warm: vec![0; frame_len].into_boxed_slice(),
            upsampler,
            detector,
            preroll,
            pos: 0,
            closed_at: 0,
            utterance_at: 0,
            split_samples,
            idle_reported: false,
            last_score: 0.0,
            last_level_dbfs: f64::NEG_INFINITY,
            counters: Counters {
                sample_rate,
                ..Counters::default()
            },
        })
    }

    /// The settings.
    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// The session's sample rate.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Whether audio is being forwarded.
    pub fn is_open(&self) -> bool {
        self.hysteresis.is_open()
    }

    /// Position (samples since the first) of the next sample.
    pub fn position_samples(&self) -> u64 {
        self.pos
    }

    /// The detector's score of the last frame it ran on (0 after a skipped frame).
    pub fn last_score(&self) -> f32 {
        self.last_score
    }

    /// The level (RMS, dBFS) of the last frame judged.
    pub fn last_level_dbfs(&self) -> f64 {
        self.last_level_dbfs
    }

    /// The accounting so far.
    pub fn counters(&self) -> Counters {
        Counters {
            held_samples: self.preroll.len() as u64,
            ..self.counters
        }
    }

    /// A position in samples as whole ms (rounded down).
    pub fn samples_to_ms(&self, samples: u64) -> u64 {
        self.counters.ms(samples)
    }

    /// Gates `pcm` (mono, the session's rate, any length) and calls `emit` with what to do,
    /// in order. Allocates nothing.
    pub fn process(&mut self, pcm: &[i16], mut emit: impl FnMut(Output<'_>)) {
        let start = self.pos;
        // Start in `pcm` of audio to forward not yet handed to `emit`: forwarded audio goes
        // out in runs as long as the chunk allows, not a frame at a time.
        let mut forward_from: Option<usize> = None;
        let mut i = 0;
        while i < pcm.len() {
            let take = (self.frame_len - self.frame_fill).min(pcm.len() - i);
            let piece = &pcm[i..i + take];
            self.frame[self.frame_fill..self.frame_fill + take].copy_from_slice(piece);
            self.frame_fill += take;
            if self.hysteresis.is_open() {
                forward_from.get_or_insert(i);
            } else {
                self.counters.gated_samples += self.preroll.push(piece) as u64;
            }
            i += take;
            self.pos = start + i as u64;
            self.counters.captured_samples += take as u64;
            if self.frame_fill < self.frame_len {
                continue;
            }
            self.frame_fill = 0;
            match self.judge_frame() {
                Step::Stay if self.hysteresis.is_open() => {
                    if self.split_due() {
                        if let Some(from) = forward_from.replace(i) {
                            self.forward(&pcm[from..i], start + from as u64, &mut emit);
                        }
                        self.utterance_at = self.pos;
                        emit(Output::Commit {
                            at_sample: self.pos,
                            at_ms: self.samples_to_ms(self.pos),
                        });
                    }
                }
                Step::Stay => self.check_idle(&mut emit),
                Step::Open { run_frames } => {
                    self.open(run_frames, &mut emit);
                    forward_from = Some(i);
                }
                Step::Close { silent_frames } => {
                    if let Some(from) = forward_from.take() {
                        self.forward(&pcm[from..i], start + from as u64, &mut emit);
                    }
                    self.close(u64::from(silent_frames) * self.frame_len as u64, &mut emit);
                }
            }
        }
        if let Some(from) = forward_from {
            if from < pcm.len() {
                self.forward(&pcm[from..], start + from as u64, &mut emit);
            }
        }
    }

    /// Ends the stream: an open gate closes here (with a commit in manual mode), the pre-roll
    /// is gated, and the detector starts afresh. The timeline goes on: a later
    /// [`process`](Gate::process) continues at the same position.
    pub fn finish(&mut self, mut emit: impl FnMut(Output<'_>)) {
        if self.hysteresis.is_open() {
            let silent = u64::from(self.hysteresis.silent_frames()) * self.frame_len as u64
                + self.frame_fill as u64;
            self.hysteresis.reset();
            self.close(silent, &mut emit);
        }
        self.counters.gated_samples += self.preroll.len() as u64;
        self.preroll.clear();
        self.frame_fill = 0;
        self.pre_gate.reset();
        self.noise_floor.reset();
        self.level_filter.reset();
        self.detector.reset();
        if let Some(u) = &mut self.upsampler {
            u.reset();
        }
    }

    /// Scores the frame just completed and steps the hysteresis.
    fn judge_frame(&mut self) -> Step {
        self.counters.frames += 1;
        let sum = self.level_filter.sum_of_squares(&self.frame);
        let level_dbfs = energy::dbfs(sum, self.frame_len);
        let above_floor_db = self.noise_floor.above_floor_db(level_dbfs);
        let open = self.hysteresis.is_open();
        let verdict = self.pre_gate.judge(
            sum,
            Qualifies {
                to_start: open || above_floor_db >= self.config.onset_above_floor_db,
                to_continue: open || above_floor_db >= self.config.offset_above_floor_db,
            },
        );
        if verdict == Verdict::ResetAndRun {
            self.detector.reset();
            self.warm_up();
        }
        let score = if verdict == Verdict::Skip {
            if let Some(u) = &mut self.upsampler {
                u.skip(&self.frame);
            }
            0.0
        } else {
            match &mut self.upsampler {
                Some(u) => u.process(&self.frame, &mut self.frame16[..]),
                None => self.frame16.copy_from_slice(&self.frame),
            }
            self.counters.detector_frames += 1;
            sanitize(self.detector.score(&self.frame16))
        };
        self.last_score = score;
        self.last_level_dbfs = level_dbfs;
        self.hysteresis.step(Frame {
            score,
            above_floor_db,
        })
    }

    /// Runs the freshly reset detector over the frames before the current one (still in the
    /// pre-roll, since a start happens only while closed), oldest first.
    fn warm_up(&mut self) {
        if let Some(u) = &mut self.upsampler {
            u.reset();
        }
        for back in (1..=WARM_UP_FRAMES).rev() {
            if !self
                .preroll
                .copy_back(back * self.frame_len, &mut self.warm)
            {
                continue;
            }
            match &mut self.upsampler {
                Some(u) => u.process(&self.warm, &mut self.frame16[..]),
                None => self.frame16.copy_from_slice(&self.warm),
            }
            self.counters.detector_frames += 1;
            self.detector.score(&self.frame16);
        }
    }

    fn forward(&mut self, samples: &[i16], at_sample: u64, emit: &mut impl FnMut(Output<'_>)) {
        if samples.is_empty() {
            return;
        }
        self.counters.forwarded_samples += samples.len() as u64;
        emit(Output::Audio {
            samples,
            at_sample,
            at_ms: self.samples_to_ms(at_sample),
        });
    }

    /// Whether a long manual-mode utterance is to be committed at this frame's end: at a
    /// frame without speech late in it, or at its limit.
    fn split_due(&self) -> bool {
        let Some((soft, hard)) = self.split_samples else {
            return false;
        };
        let length = self.pos - self.utterance_at;
        length >= hard || (length >= soft && self.hysteresis.silent_frames() > 0)
    }

    /// Opens at the current position: reports it, then forwards the pre-roll.
    fn open(&mut self, run_frames: u32, emit: &mut impl FnMut(Output<'_>)) {
        let held = self.preroll.len() as u64;
        let at_sample = self.pos - held;
        self.utterance_at = at_sample;
        let speech_at_sample = self
            .pos
            .saturating_sub(u64::from(run_frames) * self.frame_len as u64)
            .max(at_sample);
        emit(Output::Opened {
            at_sample,
            at_ms: self.samples_to_ms(at_sample),
            speech_at_sample,
            after_idle: self.idle_reported,
        });
        self.counters.openings += 1;
        self.idle_reported = false;
        // The ring's halves are borrowed while `forward` updates the counters, so the counts
        // are done here and the ring is emptied after.
        let (a, b) = self.preroll.as_slices();
        for (part, at) in [(a, at_sample), (b, at_sample + a.len() as u64)] {
            if !part.is_empty() {
                emit(Output::Audio {
                    samples: part,
                    at_sample: at,
                    at_ms: self.counters.ms(at),
                });
            }
        }
        self.counters.forwarded_samples += held;
        self.preroll.clear();
    }

    /// Closes at the current position; the last speech ended `silent` samples before it.
    fn close(&mut self, silent: u64, emit: &mut impl FnMut(Output<'_>)) {
        self.closed_at = self.pos;
        emit(Output::Closed {
            at_sample: self.pos,
            at_ms: self.samples_to_ms(self.pos),
            speech_end_sample: self.pos.saturating_sub(silent),
            commit: self.config.turn == TurnMode::Manual,
        });
    }

    /// Reports idleness once the gate has been closed for the idle timeout.
    fn check_idle(&mut self, emit: &mut impl FnMut(Output<'_>)) {
        let Some(limit) = self.idle_samples else {
            return;
        };
        if self.idle_reported || self.hysteresis.is_open() || self.pos - self.closed_at < limit {
            return;
        }
        self.idle_reported = true;
        self.counters.idles += 1;
        emit(Output::Idle {
            at_sample: self.pos,
            at_ms: self.samples_to_ms(self.pos),
        });
    }
}
