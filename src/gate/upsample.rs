//! The 8 kHz to 16 kHz copy the detector sees in an 8 kHz session (the session still gets the
//! original 8 kHz samples).
//!
//! Linear interpolation by two, not the crate's polyphase [`Resampler`](crate::resample):
//! that filter is built for audio a person or the service listens to (about 87 taps per
//! output sample at this ratio, over 1.3 million multiply-adds per audio second, more than
//! the detector itself), and it holds samples back, so its output would not line up with the
//! detector's frames. A detector only needs the speech band, which an 8 kHz signal keeps
//! below 4 kHz; the images linear interpolation leaves above 4 kHz are weak (attenuated by
//! the interpolator's sinc-squared response) and carry no speech-like structure.

/// Streaming ×2 linear interpolator: `y[2n] = (x[n-1] + x[n]) / 2`, `y[2n+1] = x[n]`, so
/// the output lags by half an input sample and chunks never change it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Upsampler2x {
    prev: i16,
}

impl Upsampler2x {
    /// Writes the ×2 interpolation of `input` into `out`, which must be twice as long.
    pub(crate) fn process(&mut self, input: &[i16], out: &mut [i16]) {
        debug_assert_eq!(out.len(), input.len() * 2);
        for (&x, pair) in input.iter().zip(out.chunks_exact_mut(2)) {
            // The mean of two i16 fits in i16.
            pair[0] = ((i32::from(self.prev) + i32::from(x)) >> 1) as i16;
            pair[1] = x;
            self.prev = x;
        }
    }

    /// Back to the state of a new stream.
    pub(crate) fn reset(&mut self) {
        self.prev = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_midpoints_and_carries_the_last_sample_across_calls() {
        let mut u = Upsampler2x::default();
        let mut out = [0i16; 4];
        u.process(&[100, 200], &mut out);
        assert_eq!(out, [50, 100, 150, 200]);
        u.process(&[i16::MIN, i16::MAX], &mut out);
        assert_eq!(out, [-16284, i16::MIN, -1, i16::MAX]);
    }
}
