//! The 16 kHz copy the detector sees in an 8 kHz session (the session still gets the
//! original 8 kHz samples).
//!
//! A short half-band interpolator, not the crate's general [`Resampler`](crate::audio::resample):
//! that one is built for audio a person or the service listens to (about 87 taps per output
//! sample at this ratio, 1.4 million multiply-adds per audio second, more than the detector
//! itself) and holds samples back, so its output would not line up with the detector's
//! frames. Plain linear interpolation is not enough either: the mirror images it leaves above
//! 4 kHz made the built-in network score 8 kHz speech around 0.3 where a band-limited copy
//! scores 0.45, so first words were missed. [`TAPS`] taps on the odd outputs pass the
//! telephone band (to 3.4 kHz within 1.5 dB) and put the images of everything below 3 kHz
//! 30 dB down, for a quarter of a million multiply-adds per audio second.

/// Input samples each interpolated (odd) output is computed from.
pub(crate) const TAPS: usize = 32;
/// Passband edge as a share of the input's Nyquist frequency (the window widens it into
/// a transition band centred here).
const CUTOFF_SHARE: f64 = 0.88;
/// Kaiser window shape: about 60 dB of stopband attenuation.
const KAISER_BETA: f64 = 5.7;

/// Most input samples one call takes: a detector frame at 8 kHz.
pub(crate) const MAX_INPUT: usize = 128;

/// Streaming ×2 interpolator. Output pairs are `[x[n - TAPS/2], y(n - TAPS/2 + 1/2)]`: the
/// input delayed by `TAPS / 2` samples (2 ms at 8 kHz) and the band-limited value half a
/// sample later, so chunks never change the output.
#[derive(Debug, Clone)]
pub(crate) struct Upsampler2x {
    /// Coefficients in window order: `window[i]` (oldest first) meets `coeffs[i]`.
    coeffs: [f32; TAPS],
    /// The last `TAPS` inputs (oldest first), then room for one call's input.
    buf: [f32; TAPS + MAX_INPUT],
}

impl Default for Upsampler2x {
    fn default() -> Self {
        Self::new()
    }
}

impl Upsampler2x {
    pub(crate) fn new() -> Upsampler2x {
        let half = TAPS as f64 / 2.0;
        let i0_beta = crate::audio::resample::bessel_i0(KAISER_BETA);
        let mut raw = [0f64; TAPS];
        for (i, c) in raw.iter_mut().enumerate() {
            // Window position i holds x[n - (TAPS - 1 - i)]; its offset from the interpolated
            // instant n - TAPS/2 + 1/2, in input samples:
            let t = i as f64 - (half - 0.5);
            let x = std::f64::consts::PI * CUTOFF_SHARE * t;
            let sinc = if x == 0.0 { 1.0 } else { x.sin() / x };
            let r = t / half;
            let w = crate::audio::resample::bessel_i0(KAISER_BETA * (1.0 - r * r).max(0.0).sqrt())
                / i0_beta;
            *c = sinc * w;
        }
        // Unity gain at DC, like the even outputs (which are the input itself).
        let sum: f64 = raw.iter().sum();
        let mut coeffs = [0f32; TAPS];
        for (c, r) in coeffs.iter_mut().zip(raw) {
            *c = (r / sum) as f32;
        }
        Upsampler2x {
            coeffs,
            buf: [0.0; TAPS + MAX_INPUT],
        }
    }

    /// Writes the ×2 interpolation of `input` (at most [`MAX_INPUT`] samples) into `out`,
    /// which must be twice as long.
    pub(crate) fn process(&mut self, input: &[i16], out: &mut [i16]) {
        debug_assert!(input.len() <= MAX_INPUT && out.len() == input.len() * 2);
        let n = input.len().min(MAX_INPUT);
        for (b, &x) in self.buf[TAPS..TAPS + n].iter_mut().zip(input) {
            *b = f32::from(x);
        }
        for (k, pair) in out.chunks_exact_mut(2).take(n).enumerate() {
            // The newest sample of this window is input[k], at buf[TAPS + k].
            let window = &self.buf[k + 1..k + 1 + TAPS];
            pair[0] = window[TAPS / 2 - 1] as i16;
            // `as` saturates: the filter's overshoot on a full-scale step clips.
            pair[1] = dot(&self.coeffs, window).round() as i16;
        }
        self.buf.copy_within(n..n + TAPS, 0);
    }

    /// Takes `input` into the history without computing output: for frames the detector
    /// skips, so that the next frame it scores is interpolated from the true samples.
    pub(crate) fn skip(&mut self, input: &[i16]) {
        let n = input.len().min(MAX_INPUT);
        for (b, &x) in self.buf[TAPS..TAPS + n].iter_mut().zip(input) {
            *b = f32::from(x);
        }
        self.buf.copy_within(n..n + TAPS, 0);
    }

    /// Back to the state of a new stream.
    pub(crate) fn reset(&mut self) {
        self.buf = [0.0; TAPS + MAX_INPUT];
    }
}

/// Dot product with four accumulators, which lets the compiler use SIMD lanes.
fn dot(a: &[f32; TAPS], b: &[f32]) -> f32 {
    let mut acc = [0f32; 4];
    for (x, y) in a.chunks_exact(4).zip(b.chunks_exact(4)) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: f64, n: usize, amp: f64) -> Vec<i16> {
        (0..n)
            .map(|i| (amp * (std::f64::consts::TAU * freq * i as f64 / rate).sin()).round() as i16)
            .collect()
    }

    /// Amplitude of the `freq` component of `v` at `rate` (one DFT bin).
    fn amplitude(v: &[i16], freq: f64, rate: f64) -> f64 {
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &s) in v.iter().enumerate() {
            let ph = std::f64::consts::TAU * freq * i as f64 / rate;
            re += f64::from(s) * ph.cos();
            im += f64::from(s) * ph.sin();
        }
        2.0 * (re * re + im * im).sqrt() / v.len() as f64
    }

    fn upsample(input: &[i16], chunk: usize) -> Vec<i16> {
        let mut u = Upsampler2x::new();
        let mut out = vec![0i16; input.len() * 2];
        for (i, c) in input.chunks(chunk.min(MAX_INPUT)).enumerate() {
            let at = i * chunk.min(MAX_INPUT) * 2;
            u.process(c, &mut out[at..at + c.len() * 2]);
        }
        out
    }

    #[test]
    fn speech_band_passes_and_images_are_removed() {
        // The telephone band up to 3.4 kHz passes within 1.5 dB; the images of it are 30 dB down
        // (from 3 kHz down; closer to 4 kHz the transition band lets more through).
        for (freq, image, image_db) in [
            (300.0, 7_700.0, -30.0),
            (1_000.0, 7_000.0, -30.0),
            (2_500.0, 5_500.0, -30.0),
            (3_400.0, 4_600.0, -10.0),
        ] {
            let out = upsample(&tone(freq, 8_000.0, 8_000, 10_000.0), 128);
            let steady = &out[1_000..];
            let pass = amplitude(steady, freq, 16_000.0) / 10_000.0;
            let img = amplitude(steady, image, 16_000.0) / 10_000.0;
            assert!(
                (20.0 * pass.log10()).abs() < 1.5,
                "{freq} Hz passes at {:.2} dB",
                20.0 * pass.log10()
            );
            assert!(
                20.0 * img.log10() < image_db,
                "{freq} Hz image at {:.1} dB",
                20.0 * img.log10()
            );
        }
    }

    #[test]
    fn skipped_input_keeps_the_history_exact() {
        let input = tone(700.0, 8_000.0, 384, 12_000.0);
        let whole = upsample(&input, 128);
        let mut u = Upsampler2x::new();
        let mut out = vec![0i16; 256];
        u.process(&input[..128], &mut out);
        u.skip(&input[128..256]);
        u.process(&input[256..], &mut out);
        assert_eq!(out, whole[512..]);
    }

    #[test]
    fn chunks_do_not_change_the_output() {
        let input = tone(700.0, 8_000.0, 1_000, 12_000.0);
        assert_eq!(upsample(&input, 1), upsample(&input, 128));
        assert_eq!(upsample(&input, 7), upsample(&input, 100));
    }

    #[test]
    fn even_outputs_are_the_delayed_input_and_full_scale_does_not_wrap() {
        let input: Vec<i16> = (0..400)
            .map(|i| if (i / 5) % 2 == 0 { i16::MAX } else { i16::MIN })
            .collect();
        let out = upsample(&input, 64);
        for n in TAPS / 2..input.len() {
            assert_eq!(out[2 * n], input[n - TAPS / 2]);
        }
        assert!(out
            .windows(2)
            .all(|w| (i32::from(w[0]) - i32::from(w[1])).abs() < 50_000));
    }
}
