//! Onset/offset hysteresis over the detector's per-frame scores: the gate opens only after a
//! short run of confident frames (one loud cough frame is not speech) and closes only after a
//! long run of frames below a lower threshold (the pauses inside and between words keep it
//! open). A frame counts only if the detector's score *and* its level above the noise
//! floor agree.

/// What one frame did to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing changed.
    Stay,
    /// The gate opens at the end of this frame; speech began `run_frames` frames ago (this
    /// frame included).
    Open { run_frames: u32 },
    /// The gate closes at the end of this frame; the last speech frame ended `silent_frames`
    /// frames ago.
    Close { silent_frames: u32 },
}

/// One frame as the hysteresis sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    /// The detector's score, 0 to 1.
    pub(crate) score: f32,
    /// How far the frame's level stands above the noise floor, in dB.
    pub(crate) above_floor_db: f64,
}

/// The hysteresis state machine, in detector frames.
#[derive(Debug, Clone)]
pub(crate) struct Hysteresis {
    onset_threshold: f32,
    offset_threshold: f32,
    onset_above_floor_db: f64,
    offset_above_floor_db: f64,
    onset_frames: u32,
    hangover_frames: u32,
    open: bool,
    /// While closed: consecutive frames at or above the onset threshold.
    run: u32,
    /// While open: frames since the last one at or above the offset threshold.
    silent: u32,
}

impl Hysteresis {
    /// Opens after `onset_frames` consecutive frames scoring at least `onset_threshold` and
    /// standing `onset_above_floor_db` out of the background; closes after `hangover_frames`
    /// consecutive frames failing `offset_threshold` or `offset_above_floor_db`.
    pub(crate) fn new(
        (onset_threshold, onset_above_floor_db): (f32, f64),
        (offset_threshold, offset_above_floor_db): (f32, f64),
        onset_frames: u32,
        hangover_frames: u32,
    ) -> Hysteresis {
        Hysteresis {
            onset_threshold,
            offset_threshold,
            onset_above_floor_db,
            offset_above_floor_db,
            onset_frames: onset_frames.max(1),
            hangover_frames: hangover_frames.max(1),
            open: false,
            run: 0,
            silent: 0,
        }
    }

    /// Whether the gate is open.
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// Frames since the last speech frame while open (0 while closed).
    pub(crate) fn silent_frames(&self) -> u32 {
        if self.open {
            self.silent
        } else {
            0
        }
    }

    /// Feeds one frame's score.
    pub(crate) fn step(&mut self, frame: Frame) -> Step {
        if self.open {
            if frame.score >= self.offset_threshold
                && frame.above_floor_db >= self.offset_above_floor_db
            {
                self.silent = 0;
                return Step::Stay;
            }
            self.silent += 1;
            if self.silent >= self.hangover_frames {
                let silent_frames = self.silent;
                self.open = false;
                self.silent = 0;
                self.run = 0;
                return Step::Close { silent_frames };
            }
            Step::Stay
        } else {
            if frame.score < self.onset_threshold
                || frame.above_floor_db < self.onset_above_floor_db
            {
                self.run = 0;
                return Step::Stay;
            }
            self.run += 1;
            if self.run >= self.onset_frames {
                let run_frames = self.run;
                self.open = true;
                self.run = 0;
                self.silent = 0;
                return Step::Open { run_frames };
            }
            Step::Stay
        }
    }

    /// Closes without a step (end of stream), back to the state of a new stream.
    pub(crate) fn reset(&mut self) {
        self.open = false;
        self.run = 0;
        self.silent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loud(score: f32) -> Frame {
        Frame {
            score,
            above_floor_db: 10.0,
        }
    }

    #[test]
    fn opens_after_a_run_and_closes_after_the_hangover() {
        let mut h = Hysteresis::new((0.5, 6.0), (0.3, 3.0), 3, 4);
        // A run broken before its third frame does not open.
        for s in [0.9, 0.9, 0.4, 0.6, 0.6] {
            assert_eq!(h.step(loud(s)), Step::Stay);
        }
        assert_eq!(h.step(loud(0.6)), Step::Open { run_frames: 3 });
        assert!(h.is_open());
        // Between the thresholds counts as speech while open.
        for _ in 0..10 {
            assert_eq!(h.step(loud(0.35)), Step::Stay);
        }
        for _ in 0..3 {
            assert_eq!(h.step(loud(0.1)), Step::Stay);
        }
        assert_eq!(h.silent_frames(), 3);
        // A speech frame restarts the hangover.
        assert_eq!(h.step(loud(0.31)), Step::Stay);
        for _ in 0..3 {
            assert_eq!(h.step(loud(0.0)), Step::Stay);
        }
        assert_eq!(h.step(loud(0.0)), Step::Close { silent_frames: 4 });
        assert!(!h.is_open());
    }

    #[test]
    fn a_frame_counts_only_if_it_stands_out_of_the_noise_floor() {
        let mut h = Hysteresis::new((0.5, 6.0), (0.3, 3.0), 2, 2);
        let frame = |score, above_floor_db| Frame {
            score,
            above_floor_db,
        };
        // Steady hum: a confident score at the floor's level never opens.
        for _ in 0..100 {
            assert_eq!(h.step(frame(0.9, 1.0)), Step::Stay);
        }
        assert_eq!(h.step(frame(0.9, 6.0)), Step::Stay);
        assert_eq!(h.step(frame(0.9, 7.0)), Step::Open { run_frames: 2 });
        // Open, a confident score back at the floor is silence.
        assert_eq!(h.step(frame(0.9, 4.0)), Step::Stay);
        assert_eq!(h.step(frame(0.9, 2.0)), Step::Stay);
        assert_eq!(h.step(frame(0.9, 2.0)), Step::Close { silent_frames: 2 });
    }
}
