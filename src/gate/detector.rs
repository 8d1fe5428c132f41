//! The voice-activity detector behind the gate, as a small trait so that another model
//! (a Silero network, say) can replace the built-in one without forking the gate.

/// The detector's sample rate: every detector sees 16 kHz mono, whatever the session's rate.
pub const DETECTOR_RATE_HZ: u32 = 16_000;
/// Samples in one detector frame: 256 at 16 kHz, 16 ms.
pub const DETECTOR_FRAME_SAMPLES: usize = 256;
/// The length of one detector frame.
pub const DETECTOR_FRAME_MS: u32 = 16;

/// A voice-activity detector scoring 16 ms frames of 16 kHz mono audio.
///
/// The gate calls [`score`](Detector::score) once per frame, in order, on the audio timeline,
/// except for frames the energy pre-gate found near-silent; after such a skipped stretch it
/// calls [`reset`](Detector::reset) before the next frame, so a detector with history (a
/// recurrent network) starts from silence rather than from the audio before the gap.
///
/// A model with a longer frame (Silero takes 512 samples at 16 kHz) can collect two frames
/// and return its last score for the first of them. The score is clamped to [0, 1]; NaN
/// counts as 0.
pub trait Detector: Send {
    /// The probability, in [0, 1], that `frame` holds speech.
    fn score(&mut self, frame: &[i16; DETECTOR_FRAME_SAMPLES]) -> f32;
    /// Forgets all history, as if newly made.
    fn reset(&mut self);
}

/// The built-in detector: the `earshot` crate's network (a 40 KiB model on 40 mel bands of
/// three context frames, pure Rust, about 8 KiB of state).
///
/// Its features are normalised by their RMS, so it judges the shape of a spectrum and not its
/// level: quiet hiss can look like anything to it. That is why the gate runs it only on
/// frames the energy pre-gate let through.
pub struct EarshotDetector {
    // Boxed: the state is ~8 KiB, built on the heap rather than moved there.
    inner: Box<earshot::Detector>,
}

impl EarshotDetector {
    /// A new detector with the crate's default network.
    pub fn new() -> EarshotDetector {
        EarshotDetector {
            inner: earshot::Detector::default_boxed(),
        }
    }
}

impl Default for EarshotDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for EarshotDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarshotDetector").finish_non_exhaustive()
    }
}

impl Detector for EarshotDetector {
    fn score(&mut self, frame: &[i16; DETECTOR_FRAME_SAMPLES]) -> f32 {
        self.inner.predict_i16(frame)
    }

    fn reset(&mut self) {
        self.inner.reset();
    }
}

/// A score as the gate uses it: in [0, 1], NaN as 0.
pub(crate) fn sanitize(score: f32) -> f32 {
    if score.is_nan() {
        0.0
    } else {
        score.clamp(0.0, 1.0)
    }
}
