//! Frame levels: the energy pre-gate, which decides whether the detector runs at all (so the
//! network costs nothing while the room is near-silent, most of an appliance's day), and the
//! noise-floor tracker, which tells speech from the steady sounds the network mistakes for it.

/// Full scale of a 16-bit sample, the 0 dBFS reference (a full-scale square wave).
const FULL_SCALE: f64 = 32768.0;

/// Frames on which the detector goes on running after the level stopped qualifying: the
/// network sees 48 ms at a time and its recurrent state spans more, so it is shown the decay
/// of a word rather than being cut off in it, and the dips between syllables and short words
/// (up to 128 ms) never reset it.
pub(crate) const TAIL_FRAMES: u32 = 8;

/// Corner of the high-pass in front of every level measurement. Speech has little energy
/// below it, while a microphone's DC offset, rumble and the slow swell of a fan (or brown
/// noise) have most of theirs there: unfiltered they would swing the level by tens of dB
/// and keep the network running on nothing. The forwarded audio is not filtered.
pub(crate) const LEVEL_HIGH_PASS_HZ: f64 = 100.0;
/// Below this the filter's state is set to zero: decaying towards silence it would
/// otherwise pass through subnormal numbers, which are slow on many CPUs.
const SUBNORMAL_GUARD: f32 = 1e-20;

/// A first-order high-pass (a DC blocker with its corner at [`LEVEL_HIGH_PASS_HZ`]) whose
/// output is only measured, never forwarded.
#[derive(Debug, Clone)]
pub(crate) struct LevelFilter {
    pole: f32,
    prev_in: f32,
    prev_out: f32,
}

impl LevelFilter {
    pub(crate) fn new(sample_rate: u32) -> LevelFilter {
        let pole = (-std::f64::consts::TAU * LEVEL_HIGH_PASS_HZ / f64::from(sample_rate)).exp();
        LevelFilter {
            pole: pole as f32,
            prev_in: 0.0,
            prev_out: 0.0,
        }
    }

    /// Sum of squares of the high-passed `frame`, in squared sample units.
    pub(crate) fn sum_of_squares(&mut self, frame: &[i16]) -> u64 {
        let mut sum = 0f32;
        for &s in frame {
            let x = f32::from(s);
            let mut y = self.pole * (self.prev_out + x - self.prev_in);
            if y.abs() < SUBNORMAL_GUARD {
                y = 0.0;
            }
            self.prev_in = x;
            self.prev_out = y;
            sum += y * y;
        }
        // `as` saturates; a frame's sum is far below u64::MAX anyway.
        sum.round() as u64
    }

    pub(crate) fn reset(&mut self) {
        self.prev_in = 0.0;
        self.prev_out = 0.0;
    }
}

/// Sum of squares of a frame's samples, unfiltered: exact, in integers (a frame of 256
/// full-scale samples is below 2^39).
#[cfg(test)]
pub(crate) fn sum_of_squares(frame: &[i16]) -> u64 {
    frame
        .iter()
        .map(|&s| {
            let v = i32::from(s);
            (v * v) as u64
        })
        .sum()
}

/// The level in dBFS (0 dBFS = RMS of a full-scale square wave, as `sox stats` reports it)
/// of a frame whose sum of squares over `samples` samples is `sum`; digital silence is
/// `f64::NEG_INFINITY`.
pub(crate) fn dbfs(sum: u64, samples: usize) -> f64 {
    if samples == 0 || sum == 0 {
        return f64::NEG_INFINITY;
    }
    let mean_square = sum as f64 / samples as f64;
    10.0 * (mean_square / (FULL_SCALE * FULL_SCALE)).log10()
}

/// Decides per frame whether the detector runs.
///
/// It starts on a frame above the absolute floor that could begin speech (it stands out of
/// the noise floor by the onset margin, or the gate is open), goes on while frames could
/// continue speech (the offset margin), and stops [`TAIL_FRAMES`] frames after they no
/// longer do. Frames that qualify for neither could not count as speech whatever their
/// score, so skipping the network on them changes nothing but the cost: steady room noise,
/// a fan or hum cost almost nothing. Starting only at the onset margin matters too: a freshly
/// reset network scores the first frames of plain noise higher than it does later, and must
/// not be restarted on every small fluctuation of a noise bed.
#[derive(Debug, Clone)]
pub(crate) struct PreGate {
    /// The floor as a sum of squares over one frame, so no frame needs a logarithm.
    floor_sum: u64,
    running: bool,
    /// While running: consecutive frames that did not qualify.
    quiet_run: u32,
}

/// What the pre-gate decided for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Run the detector on this frame.
    Run,
    /// Run it, but reset it first: it last saw audio before a skipped stretch, and a
    /// detector fed only that quiet stretch would have forgotten the audio before it.
    ResetAndRun,
    /// The frame is not speech; the detector is not run.
    Skip,
}

/// How a frame's level compares with the noise floor, as the pre-gate needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Qualifies {
    /// Loud enough above the floor to begin speech (or the gate is open).
    pub(crate) to_start: bool,
    /// Loud enough above the floor to continue speech (or the gate is open).
    pub(crate) to_continue: bool,
}

impl PreGate {
    /// A pre-gate with its floor at `floor_dbfs` for frames of `frame_samples` samples.
    pub(crate) fn new(floor_dbfs: f64, frame_samples: usize) -> PreGate {
        let rms = FULL_SCALE * 10f64.powf(floor_dbfs / 20.0);
        let floor = (rms * rms * frame_samples as f64).ceil();
        PreGate {
            // A floor of -inf dBFS runs the detector on everything but digital silence.
            floor_sum: if floor.is_finite() && floor >= 1.0 {
                floor as u64
            } else {
                1
            },
            running: false,
            quiet_run: 0,
        }
    }

    /// The verdict for a frame with sum of squares `sum`.
    pub(crate) fn judge(&mut self, sum: u64, q: Qualifies) -> Verdict {
        let loud = sum >= self.floor_sum;
        if self.running {
            if loud && q.to_continue {
                self.quiet_run = 0;
                Verdict::Run
            } else if self.quiet_run < TAIL_FRAMES {
                self.quiet_run += 1;
                Verdict::Run
            } else {
                self.running = false;
                Verdict::Skip
            }
        } else if loud && q.to_start {
            self.running = true;
            self.quiet_run = 0;
            Verdict::ResetAndRun
        } else {
            Verdict::Skip
        }
    }

    /// Back to the state of a new stream (the detector is reset before its next run).
    pub(crate) fn reset(&mut self) {
        self.running = false;
        self.quiet_run = 0;
    }
}

/// Level given to digital silence, so the noise floor stays a finite number.
const SILENCE_DBFS: f64 = -100.0;
/// How fast the floor follows the level down (a share of the gap per frame): a few frames,
/// so that a pause between words shows the floor at once.
const FLOOR_FALL_SHARE: f64 = 0.25;
/// How fast the floor rises towards a louder level, per 16 ms frame: 1.25 dB per second,
/// slow enough that a sentence does not lift the floor to its own level, fast enough that
/// a fan switched on is part of the floor within a quarter of a minute.
const FLOOR_RISE_DB_PER_FRAME: f64 = 0.02;

/// Tracks the background level (a slowly rising, quickly falling minimum of the frame
/// levels) and reports how far each frame stands above it.
///
/// Why: the network normalises its features by their RMS and scores the spectrum's shape,
/// so steady mains hum, or the first frames after a click, can score like speech. Speech,
/// unlike a steady noise, stands out of the background by several dB in its voiced frames.
#[derive(Debug, Clone)]
pub(crate) struct NoiseFloor {
    floor_dbfs: Option<f64>,
}

impl NoiseFloor {
    pub(crate) fn new() -> NoiseFloor {
        NoiseFloor { floor_dbfs: None }
    }

    /// Feeds a frame's level; returns how many dB it stands above the floor as it was.
    /// The first frame of a stream sets the floor.
    pub(crate) fn above_floor_db(&mut self, level_dbfs: f64) -> f64 {
        let level = level_dbfs.max(SILENCE_DBFS);
        let floor = *self.floor_dbfs.get_or_insert(level);
        let new = if level < floor {
            floor + FLOOR_FALL_SHARE * (level - floor)
        } else {
            (floor + FLOOR_RISE_DB_PER_FRAME).min(level)
        };
        self.floor_dbfs = Some(new);
        level - floor
    }

    /// Back to the state of a new stream.
    pub(crate) fn reset(&mut self) {
        self.floor_dbfs = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_filter_removes_dc_and_rumble_and_keeps_the_speech_band() {
        let frames = |f: &dyn Fn(usize) -> f64| -> Vec<i16> {
            (0..64 * 256).map(|i| f(i).round() as i16).collect()
        };
        let level = |pcm: &[i16]| {
            let mut lf = LevelFilter::new(16_000);
            let mut last = 0;
            for frame in pcm.chunks(256) {
                last = lf.sum_of_squares(frame);
            }
            dbfs(last, 256)
        };
        let tone = |hz: f64, amp: f64| {
            move |i: usize| amp * (std::f64::consts::TAU * hz * i as f64 / 16_000.0).sin()
        };
        let dc = frames(&|_| 3000.0);
        assert!(level(&dc) < -90.0, "DC at {:.1} dBFS", level(&dc));
        let speech_band = frames(&tone(1000.0, 10_000.0));
        let plain = dbfs(sum_of_squares(&speech_band[63 * 256..]), 256);
        assert!((level(&speech_band) - plain).abs() < 0.5);
        let rumble = frames(&tone(10.0, 10_000.0));
        assert!(level(&rumble) < plain - 15.0);
    }

    #[test]
    fn levels_are_in_dbfs_of_a_square_wave() {
        assert!((dbfs(sum_of_squares(&[i16::MIN; 256]), 256)).abs() < 1e-9);
        let half = dbfs(sum_of_squares(&[16384; 256]), 256);
        assert!((half + 6.0206).abs() < 1e-3, "{half}");
        assert_eq!(dbfs(0, 256), f64::NEG_INFINITY);
    }

    const START: Qualifies = Qualifies {
        to_start: true,
        to_continue: true,
    };
    const CONTINUE: Qualifies = Qualifies {
        to_start: false,
        to_continue: true,
    };
    const NEITHER: Qualifies = Qualifies {
        to_start: false,
        to_continue: false,
    };

    #[test]
    fn detector_starts_on_a_qualifying_frame_and_stops_after_a_tail() {
        let mut g = PreGate::new(-50.0, 256);
        let loud = sum_of_squares(&[1000; 256]);
        let quiet = sum_of_squares(&[10; 256]);
        // Below the absolute floor nothing starts it, and neither does a frame that could
        // only continue speech.
        assert_eq!(g.judge(quiet, START), Verdict::Skip);
        assert_eq!(g.judge(loud, CONTINUE), Verdict::Skip);
        assert_eq!(g.judge(loud, START), Verdict::ResetAndRun);
        assert_eq!(g.judge(loud, CONTINUE), Verdict::Run);
        for _ in 0..TAIL_FRAMES {
            assert_eq!(g.judge(loud, NEITHER), Verdict::Run);
        }
        assert_eq!(g.judge(quiet, CONTINUE), Verdict::Skip);
        assert_eq!(g.judge(loud, CONTINUE), Verdict::Skip);
        assert_eq!(g.judge(loud, START), Verdict::ResetAndRun);
        // A dip shorter than the tail neither stops nor resets it.
        assert_eq!(g.judge(quiet, NEITHER), Verdict::Run);
        assert_eq!(g.judge(loud, CONTINUE), Verdict::Run);
    }

    #[test]
    fn floor_of_minus_infinity_runs_on_everything_but_digital_silence() {
        let mut g = PreGate::new(f64::NEG_INFINITY, 256);
        assert_eq!(g.judge(1, START), Verdict::ResetAndRun);
        g.reset();
        assert_eq!(g.judge(0, START), Verdict::Skip);
    }

    #[test]
    fn noise_floor_falls_fast_rises_slowly_and_measures_the_excess() {
        let mut f = NoiseFloor::new();
        assert_eq!(f.above_floor_db(-50.0), 0.0);
        // A loud frame stands out by its full excess and lifts the floor only a little.
        assert_eq!(f.above_floor_db(-30.0), 20.0);
        assert!((f.above_floor_db(-50.0) + FLOOR_RISE_DB_PER_FRAME).abs() < 1e-9);
        // Ten seconds of a steady louder noise become the floor.
        for _ in 0..625 {
            f.above_floor_db(-40.0);
        }
        assert!(f.above_floor_db(-40.0).abs() < 1e-9);
        // Digital silence pulls the floor down within a few frames.
        for _ in 0..40 {
            f.above_floor_db(f64::NEG_INFINITY);
        }
        assert!(f.above_floor_db(-90.0) > 9.0);
    }
}
