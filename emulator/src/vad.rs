//! The emulator's voice activity detector: energy only, over 10 ms frames of 16-bit
//! little-endian mono PCM. It is driven by audio content alone (no clocks), so the same audio
//! always gives the same utterances, however the client chunks it.

/// Length of one VAD frame.
pub(crate) const FRAME_MS: u64 = 10;

/// The RMS level, in dBFS, that a 10 ms frame must exceed to count as speech, for a
/// `turn_detection.threshold` in [-1, 1]: `-40 + 20 × threshold`.
///
/// So the default 0.2 gives -36 dBFS, 0.0 (the recommended value) -40 dBFS, -1 (most sensitive)
/// -60 dBFS and 1 (least sensitive) -20 dBFS. Lower thresholds are more sensitive, as the
/// service documents. Digital silence is always below the level; a full-scale-ish tone (RMS
/// above -20 dBFS, e.g. a sine of amplitude 8000 at -15 dBFS) is always above it.
pub fn speech_level_dbfs(threshold: f64) -> f64 {
    -40.0 + 20.0 * threshold
}

/// What one frame did to the detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Nothing changed.
    None,
    /// This frame is the first of an utterance.
    Started,
    /// This frame completed the silence that ends the utterance.
    Stopped,
}

/// Energy VAD with a hangover: speech starts at the first frame above the level and stops once
/// `silence_duration_ms` of consecutive frames are at or below it.
#[derive(Debug)]
pub(crate) struct Vad {
    /// The level as a mean square of sample values, so frames need no logarithm.
    level_mean_square: f64,
    /// Consecutive quiet frames that end an utterance.
    hangover_frames: u64,
    speaking: bool,
    quiet_run: u64,
}

impl Vad {
    pub(crate) fn new(threshold: f64, silence_duration_ms: u64) -> Self {
        let rms = 32768.0 * 10f64.powf(speech_level_dbfs(threshold) / 20.0);
        Vad {
            level_mean_square: rms * rms,
            hangover_frames: silence_duration_ms.div_ceil(FRAME_MS).max(1),
            speaking: false,
            quiet_run: 0,
        }
    }

    /// Bytes in one frame at `sample_rate` (16-bit mono).
    pub(crate) fn frame_bytes(sample_rate: u32) -> usize {
        (sample_rate as usize / 100).max(1) * 2
    }

    #[cfg(test)]
    pub(crate) fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// Forgets the current utterance (used when `session.finish` cuts it short).
    pub(crate) fn reset(&mut self) {
        self.speaking = false;
        self.quiet_run = 0;
    }

    /// Feeds one whole frame; returns whether it was voiced and what it changed.
    pub(crate) fn push_frame(&mut self, frame: &[u8]) -> (bool, Transition) {
        let voiced = self.is_voiced(frame);
        let transition = match (self.speaking, voiced) {
            (false, true) => {
                self.speaking = true;
                self.quiet_run = 0;
                Transition::Started
            }
            (false, false) => Transition::None,
            (true, true) => {
                self.quiet_run = 0;
                Transition::None
            }
            (true, false) => {
                self.quiet_run += 1;
                if self.quiet_run >= self.hangover_frames {
                    self.reset();
                    Transition::Stopped
                } else {
                    Transition::None
                }
            }
        };
        (voiced, transition)
    }

    fn is_voiced(&self, frame: &[u8]) -> bool {
        let samples = frame.len() / 2;
        if samples == 0 {
            return false;
        }
        let sum: f64 = frame
            .chunks_exact(2)
            .map(|b| {
                let s = f64::from(i16::from_le_bytes([b[0], b[1]]));
                s * s
            })
            .sum();
        sum / samples as f64 > self.level_mean_square
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(amplitude: i16, n: usize) -> Vec<u8> {
        // A square wave: its RMS equals its amplitude, which keeps the expectations exact.
        (0..n)
            .flat_map(|i| {
                let s = if i % 2 == 0 { amplitude } else { -amplitude };
                s.to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn level_mapping_matches_the_documented_formula() {
        assert_eq!(speech_level_dbfs(0.2), -36.0);
        assert_eq!(speech_level_dbfs(0.0), -40.0);
        assert_eq!(speech_level_dbfs(-1.0), -60.0);
        assert_eq!(speech_level_dbfs(1.0), -20.0);
    }

    #[test]
    fn threshold_decides_what_counts_as_speech() {
        // -36 dBFS is an RMS of about 518.
        let mut v = Vad::new(0.2, 800);
        assert_eq!(v.push_frame(&frame(500, 160)), (false, Transition::None));
        assert_eq!(v.push_frame(&frame(540, 160)), (true, Transition::Started));
        // More sensitive: 500 is speech at threshold 0 (-40 dBFS, RMS about 328).
        let mut v = Vad::new(0.0, 800);
        assert_eq!(v.push_frame(&frame(500, 160)), (true, Transition::Started));
    }

    #[test]
    fn speech_stops_after_the_silence_duration() {
        let mut v = Vad::new(0.2, 200);
        assert_eq!(v.push_frame(&frame(8000, 160)).1, Transition::Started);
        for _ in 0..19 {
            assert_eq!(v.push_frame(&frame(0, 160)).1, Transition::None);
        }
        // A voiced frame inside the hangover resets the silence count.
        assert_eq!(v.push_frame(&frame(8000, 160)).1, Transition::None);
        for _ in 0..19 {
            assert_eq!(v.push_frame(&frame(0, 160)).1, Transition::None);
        }
        assert_eq!(v.push_frame(&frame(0, 160)).1, Transition::Stopped);
        assert!(!v.is_speaking());
    }

    #[test]
    fn frame_sizes() {
        assert_eq!(Vad::frame_bytes(16000), 320);
        assert_eq!(Vad::frame_bytes(8000), 160);
    }
}
