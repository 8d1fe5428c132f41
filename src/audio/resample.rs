//! Downmix to mono and sample-rate conversion with a proper anti-aliasing filter, for
//! microphones that cannot deliver the session's rate (many USB microphones only offer
//! 44.1 or 48 kHz, and some only stereo).
//!
//! The converter is a rational L/M polyphase FIR: the input is (conceptually) upsampled by
//! L, low-pass filtered, and decimated by M, where L/M is the output/input rate ratio in
//! lowest terms. Only the filter taps that meet a non-zero input sample at an output
//! instant are ever computed, so each output sample costs one dot product of
//! [`Resampler::taps_per_phase`] taps. The filter is a Kaiser-windowed sinc whose passband
//! ends at 45 % and whose stopband starts at 50 % of the lower of the two rates (so at the
//! output's Nyquist when downsampling), with about 70 dB of stopband attenuation: what
//! ALSA's default linear-interpolation converter or sample dropping would fold back into
//! the speech band is removed first.
//!
//! It is streaming: the filter history is carried between calls, so feeding a signal in
//! chunks of any size gives exactly the same output as feeding it at once, and after the
//! first calls no call allocates (the output `Vec` is the caller's and can be reused).
//!
//! ```
//! use qwen_asr_realtime::audio::resample::Resampler;
//!
//! // 10 ms of 48 kHz stereo in, 10 ms of 16 kHz mono out (less the filter's delay at first).
//! let mut r = Resampler::new(48_000, 2, 16_000)?;
//! let input = vec![0i16; 480 * 2];
//! let mut out = Vec::new();
//! r.process(&input, &mut out);
//! assert_eq!(out.len(), 160);
//! # Ok::<(), qwen_asr_realtime::Error>(())
//! ```

use std::f64::consts::PI;

use crate::error::{Error, Result};

/// Highest input or output rate accepted, in Hz.
pub const MAX_RATE_HZ: u32 = 768_000;
/// Highest channel count accepted (ALSA devices go up to a few dozen).
pub const MAX_CHANNELS: u32 = 64;
/// Most filter phases (the L of L/M) a conversion may need; every pair of common audio rates
/// needs at most 640 (11025 Hz to 16000 Hz). Rates whose ratio reduces to more are refused
/// rather than building a table of megabytes.
pub const MAX_PHASES: u32 = 2048;

/// End of the passband as a fraction of the lower rate (0.45 of 16 kHz is 7.2 kHz).
const PASSBAND_FRACTION: f64 = 0.45;
/// Start of the stopband as a fraction of the lower rate: its Nyquist frequency.
const STOPBAND_FRACTION: f64 = 0.5;
/// Stopband attenuation the Kaiser window is designed for.
const STOPBAND_ATTENUATION_DB: f64 = 70.0;

/// Streaming downmix (average of all channels) and rate converter from interleaved `i16`
/// frames to mono `i16` samples. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Resampler {
    in_rate: u32,
    channels: usize,
    out_rate: u32,
    kind: Kind,
    /// Samples of a frame split across two calls (fewer than `channels`).
    partial: Vec<i16>,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Same rate, mono: a copy.
    Identity,
    /// Same rate, several channels: only the downmix.
    DownmixOnly,
    /// The polyphase filter.
    Filter(Polyphase),
}

#[derive(Debug, Clone)]
struct Polyphase {
    /// Upsampling factor L (number of phases).
    up: usize,
    /// Decimation factor M.
    down: usize,
    /// Taps per phase (N): how many input samples each output sample looks at.
    taps: usize,
    /// `up` rows of `taps` coefficients, each row reversed so that it lines up with the input
    /// window oldest-first.
    table: Vec<f32>,
    /// Mono input not yet consumed, oldest first; starts with `taps - 1` zeros of history.
    history: Vec<f32>,
    /// Index in `history` of the newest input sample the next output needs.
    newest: usize,
    /// Phase (0..up) of the next output sample.
    phase: usize,
}

impl Resampler {
    /// A converter from `in_rate` Hz with `in_channels` interleaved channels to mono at
    /// `out_rate` Hz.
    ///
    /// Fails with [`Error::InvalidConfig`] for a zero or absurd rate or channel count, or a
    /// pair of rates whose ratio needs more than [`MAX_PHASES`] filter phases.
    pub fn new(in_rate: u32, in_channels: u32, out_rate: u32) -> Result<Resampler> {
        for (field, rate) in [
            ("resample.in_rate", in_rate),
            ("resample.out_rate", out_rate),
        ] {
            if rate == 0 || rate > MAX_RATE_HZ {
                return Err(Error::InvalidConfig {
                    field,
                    message: format!("{rate} Hz is outside 1..={MAX_RATE_HZ} Hz"),
                });
            }
        }
        if in_channels == 0 || in_channels > MAX_CHANNELS {
            return Err(Error::InvalidConfig {
                field: "resample.in_channels",
                message: format!("{in_channels} is outside 1..={MAX_CHANNELS}"),
            });
        }
        let kind = if in_rate == out_rate {
            if in_channels == 1 {
                Kind::Identity
            } else {
                Kind::DownmixOnly
            }
        } else {
            let g = gcd(in_rate, out_rate);
            let (up, down) = (out_rate / g, in_rate / g);
            if up > MAX_PHASES {
                return Err(Error::InvalidConfig {
                    field: "resample.in_rate",
                    message: format!(
                        "converting {in_rate} Hz to {out_rate} Hz needs {up} filter phases \
                         (at most {MAX_PHASES}); use a common audio rate"
                    ),
                });
            }
            Kind::Filter(Polyphase::new(
                in_rate,
                out_rate,
                up as usize,
                down as usize,
            ))
        };
        Ok(Resampler {
            in_rate,
            channels: in_channels as usize,
            out_rate,
            kind,
            partial: Vec::with_capacity(in_channels as usize),
        })
    }

    /// The input rate in Hz.
    pub fn in_rate(&self) -> u32 {
        self.in_rate
    }

    /// The number of interleaved input channels.
    pub fn in_channels(&self) -> u32 {
        self.channels as u32
    }

    /// The output rate in Hz.
    pub fn out_rate(&self) -> u32 {
        self.out_rate
    }

    /// True when the input is passed through untouched (same rate, mono).
    pub fn is_identity(&self) -> bool {
        matches!(self.kind, Kind::Identity)
    }

    /// Input samples each output sample is computed from (0 when no filter is used). Its cost
    /// is this many multiply-adds per output sample.
    pub fn taps_per_phase(&self) -> usize {
        match &self.kind {
            Kind::Filter(p) => p.taps,
            _ => 0,
        }
    }

    /// The filter's group delay in output samples: how far the output lags the input.
    pub fn delay_out_samples(&self) -> f64 {
        match &self.kind {
            Kind::Filter(p) => {
                // The prototype is symmetric, (taps * up - 1) / 2 long at the upsampled rate.
                (p.taps * p.up - 1) as f64 / 2.0 / p.down as f64
            }
            _ => 0.0,
        }
    }

    /// Converts `interleaved_in` (whole or partial frames; a frame split across calls is
    /// completed by the next call) and appends the mono output to `out`.
    ///
    /// Output appears as soon as the filter has the input it needs; samples not yet
    /// computable are held back until the next call, so the split into calls never changes
    /// the output.
    pub fn process(&mut self, interleaved_in: &[i16], out: &mut Vec<i16>) {
        if self.channels == 1 {
            // Mono at the same rate is `Identity`, never `DownmixOnly`.
            match &mut self.kind {
                Kind::Filter(p) => {
                    p.push_input(interleaved_in.iter().map(|&s| f32::from(s)));
                    p.run(out);
                }
                Kind::Identity | Kind::DownmixOnly => out.extend_from_slice(interleaved_in),
            }
            return;
        }
        let mut input = interleaved_in;
        // Complete a frame left over from the previous call.
        if !self.partial.is_empty() {
            let need = self.channels - self.partial.len();
            let take = need.min(input.len());
            self.partial.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.partial.len() < self.channels {
                return;
            }
            let frame = std::mem::take(&mut self.partial);
            self.push_frames(&frame, out);
            self.partial = frame;
            self.partial.clear();
        }
        let whole = input.len() - input.len() % self.channels;
        self.push_frames(&input[..whole], out);
        self.partial.extend_from_slice(&input[whole..]);
    }

    /// Downmixes whole frames and runs them through the converter.
    fn push_frames(&mut self, frames: &[i16], out: &mut Vec<i16>) {
        let ch = self.channels;
        let scale = 1.0 / ch as f32;
        let mono = frames
            .chunks_exact(ch)
            .map(move |f| f.iter().map(|&s| i32::from(s)).sum::<i32>() as f32 * scale);
        match &mut self.kind {
            Kind::Identity | Kind::DownmixOnly => out.extend(mono.map(to_i16)),
            Kind::Filter(p) => {
                p.push_input(mono);
                p.run(out);
            }
        }
    }

    /// Forgets all history (as if newly made), for a restart after a gap in the input.
    pub fn reset(&mut self) {
        self.partial.clear();
        if let Kind::Filter(p) = &mut self.kind {
            p.reset();
        }
    }
}

impl Polyphase {
    fn new(in_rate: u32, out_rate: u32, up: usize, down: usize) -> Polyphase {
        let low = f64::from(in_rate.min(out_rate));
        let in_rate = f64::from(in_rate);
        // Frequencies as fractions of the input rate.
        let pass = PASSBAND_FRACTION * low / in_rate;
        let stop = STOPBAND_FRACTION * low / in_rate;
        let cutoff = (pass + stop) / 2.0;
        let transition = stop - pass;
        // Kaiser's formulas for the length (in input samples) and the window's beta.
        let a = STOPBAND_ATTENUATION_DB;
        let taps = (((a - 7.95) / (2.285 * 2.0 * PI * transition)).ceil() as usize).max(4);
        let beta = 0.1102 * (a - 8.7);
        let len = taps * up;
        let centre = (len - 1) as f64 / 2.0;
        let i0_beta = bessel_i0(beta);
        // Prototype at the upsampled rate: the cutoff there is `cutoff / up`.
        let fc = cutoff / up as f64;
        let proto: Vec<f64> = (0..len)
            .map(|i| {
                let x = i as f64 - centre;
                let sinc = if x == 0.0 {
                    2.0 * fc
                } else {
                    (2.0 * PI * fc * x).sin() / (PI * x)
                };
                let r = x / centre;
                let w = bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
                sinc * w
            })
            .collect();
        let mut table = vec![0f32; len];
        for p in 0..up {
            // Phase p uses proto[p + k*up], k = 0 (newest input) .. taps-1 (oldest); each row
            // is normalised to unity gain at DC so that no phase is louder than another.
            let sum: f64 = (0..taps).map(|k| proto[p + k * up]).sum();
            let row = &mut table[p * taps..(p + 1) * taps];
            for k in 0..taps {
                row[taps - 1 - k] = (proto[p + k * up] / sum) as f32;
            }
        }
        let mut poly = Polyphase {
            up,
            down,
            taps,
            table,
            history: Vec::new(),
            newest: 0,
            phase: 0,
        };
        poly.reset();
        poly
    }

    fn reset(&mut self) {
        self.history.clear();
        self.history.resize(self.taps - 1, 0.0);
        self.newest = self.taps - 1;
        self.phase = 0;
    }

    fn push_input(&mut self, samples: impl Iterator<Item = f32>) {
        self.history.extend(samples);
    }

    fn run(&mut self, out: &mut Vec<i16>) {
        let taps = self.taps;
        while self.newest < self.history.len() {
            let window = &self.history[self.newest + 1 - taps..=self.newest];
            let row = &self.table[self.phase * taps..(self.phase + 1) * taps];
            out.push(to_i16(dot(row, window)));
            self.phase += self.down;
            self.newest += self.phase / self.up;
            self.phase %= self.up;
        }
        // Drop input no future output can reach; the Vec keeps its capacity.
        let consumed = (self.newest + 1 - taps).min(self.history.len());
        if consumed > 0 {
            self.history.drain(..consumed);
            self.newest -= consumed;
        }
    }
}

/// Dot product with four accumulators, which lets the compiler use SIMD lanes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 4];
    let (ac, bc) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        acc[0] += x[0] * y[0];
        acc[1] += x[1] * y[1];
        acc[2] += x[2] * y[2];
        acc[3] += x[3] * y[3];
    }
    let mut sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ar.iter().zip(br) {
        sum += x * y;
    }
    sum
}

fn to_i16(v: f32) -> i16 {
    // `as` saturates at the i16 range (and maps NaN to 0).
    v.round() as i16
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The zeroth-order modified Bessel function of the first kind, by its power series (the
/// Kaiser window of this resampler's filter, and of the speech gate's upsampler).
pub(crate) fn bessel_i0(x: f64) -> f64 {
    let q = x * x / 4.0;
    let (mut term, mut sum) = (1.0, 1.0);
    for k in 1..64 {
        term *= q / (k * k) as f64;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sine of `freq` Hz at `rate` Hz, `channels` interleaved copies (channel c scaled by
    /// `1 - 0.25 c` so that the downmix is an average, not a copy of one channel).
    fn tone(freq: f64, rate: u32, channels: usize, secs: f64, amp: f64) -> Vec<i16> {
        let n = (f64::from(rate) * secs) as usize;
        let mut v = Vec::with_capacity(n * channels);
        for i in 0..n {
            let s = amp * (2.0 * PI * freq * i as f64 / f64::from(rate) + 0.3).sin();
            for c in 0..channels {
                v.push((s * (1.0 - 0.25 * c as f64)).round() as i16);
            }
        }
        v
    }

    fn rms(v: &[i16]) -> f64 {
        (v.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / v.len() as f64).sqrt()
    }

    fn zero_crossings(v: &[i16]) -> usize {
        v.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count()
    }

    fn db(ratio: f64) -> f64 {
        20.0 * ratio.log10()
    }

    fn convert(in_rate: u32, ch: u32, out_rate: u32, input: &[i16]) -> Vec<i16> {
        let mut r = Resampler::new(in_rate, ch, out_rate).unwrap();
        let mut out = Vec::new();
        r.process(input, &mut out);
        out
    }

    /// One second of output starting 0.1 s in (past the filter's start-up).
    fn steady(out: &[i16], out_rate: u32) -> &[i16] {
        let skip = out_rate as usize / 10;
        &out[skip..skip + out_rate as usize]
    }

    fn check_tone(in_rate: u32, ch: u32, out_rate: u32) {
        let amp = 10_000.0;
        let input = tone(1000.0, in_rate, ch as usize, 1.3, amp);
        let out = convert(in_rate, ch, out_rate, &input);
        let s = steady(&out, out_rate);
        let zc = zero_crossings(s);
        assert!(
            (1998..=2002).contains(&zc),
            "{in_rate}->{out_rate}: {zc} crossings"
        );
        // The downmix of channels scaled 1, 0.75, ... is the mean of those scales.
        let mean_scale = (0..ch).map(|c| 1.0 - 0.25 * f64::from(c)).sum::<f64>() / f64::from(ch);
        let want = amp * mean_scale / 2f64.sqrt();
        let err = db(rms(s) / want).abs();
        assert!(err < 0.5, "{in_rate}->{out_rate}: level off by {err:.3} dB");
    }

    #[test]
    fn tone_48k_stereo_to_16k_mono_keeps_frequency_and_level() {
        check_tone(48_000, 2, 16_000);
    }

    #[test]
    fn tone_44k1_to_16k_keeps_frequency_and_level() {
        check_tone(44_100, 1, 16_000);
        check_tone(44_100, 2, 16_000);
    }

    #[test]
    fn eight_khz_output_works() {
        check_tone(48_000, 2, 8_000);
        check_tone(44_100, 1, 8_000);
        check_tone(16_000, 1, 8_000);
    }

    #[test]
    fn upsampling_8k_to_16k_works() {
        check_tone(8_000, 1, 16_000);
    }

    #[test]
    fn tone_above_output_nyquist_is_attenuated_by_40_db() {
        // 12 kHz at 48 kHz would alias to 4 kHz at 16 kHz without the low-pass.
        let amp = 10_000.0;
        let input = tone(12_000.0, 48_000, 2, 1.3, amp);
        let out = convert(48_000, 2, 16_000, &input);
        let att = db(rms(steady(&out, 16_000)).max(0.5) / (amp * 0.875 / 2f64.sqrt()));
        assert!(att < -40.0, "12 kHz only attenuated by {att:.1} dB");
        // Likewise at 44.1 kHz, a tone just inside the stopband (8.5 kHz).
        let input = tone(8_500.0, 44_100, 1, 1.3, amp);
        let out = convert(44_100, 1, 16_000, &input);
        let att = db(rms(steady(&out, 16_000)).max(0.5) / (amp / 2f64.sqrt()));
        assert!(att < -40.0, "8.5 kHz only attenuated by {att:.1} dB");
    }

    #[test]
    fn chunked_processing_equals_one_shot() {
        let input = tone(440.0, 44_100, 2, 0.5, 8_000.0);
        let whole = convert(44_100, 2, 16_000, &input);
        let mut r = Resampler::new(44_100, 2, 16_000).unwrap();
        let mut chunked = Vec::new();
        // Odd sizes, so that frames are split across calls too.
        let mut rest = &input[..];
        for size in [1usize, 7, 1000, 3, 441, 2, 8820].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = (*size).min(rest.len());
            r.process(&rest[..n], &mut chunked);
            rest = &rest[n..];
        }
        assert_eq!(whole, chunked);
    }

    #[test]
    fn identity_passes_samples_through() {
        let input: Vec<i16> = (0..1000).map(|i| (i * 31 % 2000 - 1000) as i16).collect();
        let mut r = Resampler::new(16_000, 1, 16_000).unwrap();
        assert!(r.is_identity());
        let mut out = Vec::new();
        r.process(&input, &mut out);
        assert_eq!(out, input);
    }

    #[test]
    fn downmix_only_averages_channels() {
        let mut r = Resampler::new(16_000, 2, 16_000).unwrap();
        let mut out = Vec::new();
        r.process(&[100, 300, -5, -7, i16::MAX, i16::MAX, i16::MIN], &mut out);
        r.process(&[i16::MIN], &mut out);
        assert_eq!(out, [200, -6, i16::MAX, i16::MIN]);
    }

    #[test]
    fn output_length_follows_the_ratio() {
        for (inr, outr) in [
            (48_000, 16_000),
            (44_100, 16_000),
            (22_050, 16_000),
            (11_025, 8_000),
        ] {
            let input = vec![0i16; inr as usize];
            let out = convert(inr, 1, outr, &input);
            // All of one second is out, less what the filter still needs to see.
            let held = (Resampler::new(inr, 1, outr).unwrap().taps_per_phase() as u64
                * u64::from(outr))
            .div_ceil(u64::from(inr)) as usize;
            assert!(out.len() <= outr as usize && out.len() + held + 1 >= outr as usize);
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(Resampler::new(0, 1, 16_000).is_err());
        assert!(Resampler::new(48_000, 0, 16_000).is_err());
        assert!(Resampler::new(48_000, 1, 0).is_err());
        // 47999 and 16000 are coprime: 16000 phases.
        assert!(Resampler::new(47_999, 1, 16_000).is_err());
    }

    #[test]
    fn full_scale_input_does_not_wrap() {
        // A full-scale square wave overshoots after filtering (Gibbs); it must clip, not wrap.
        let input: Vec<i16> = (0..48_000)
            .map(|i| {
                if (i / 24) % 2 == 0 {
                    i16::MAX
                } else {
                    i16::MIN
                }
            })
            .collect();
        let out = convert(48_000, 1, 16_000, &input);
        let s = &out[100..];
        // Wrapping would put large values of the wrong sign next to each other.
        assert!(s
            .windows(2)
            .all(|w| (i32::from(w[0]) - i32::from(w[1])).abs() < 40_000));
    }

    #[test]
    #[ignore = "prints figures for the report: cargo test --release --lib resample -- --ignored --nocapture"]
    fn figures() {
        for (inr, ch, outr) in [(48_000, 2, 16_000), (44_100, 2, 16_000), (48_000, 2, 8_000)] {
            let r = Resampler::new(inr, ch, outr).unwrap();
            let input = tone(1000.0, inr, ch as usize, 10.0, 10_000.0);
            let t = std::time::Instant::now();
            let out = convert(inr, ch, outr, &input);
            let per_sec = t.elapsed().as_secs_f64() / 10.0;
            let s = steady(&out, outr);
            println!(
                "{inr}x{ch} -> {outr}: {} taps/phase, delay {:.1} out samples, {} crossings, \
                 rms {:.1}, {:.2} ms CPU per s of audio",
                r.taps_per_phase(),
                r.delay_out_samples(),
                zero_crossings(s),
                rms(s),
                per_sec * 1000.0
            );
        }
        for f in [
            7_000.0, 7_600.0, 8_000.0, 8_500.0, 9_000.0, 12_000.0, 20_000.0,
        ] {
            let input = tone(f, 48_000, 1, 1.3, 10_000.0);
            let out = convert(48_000, 1, 16_000, &input);
            let att = db(rms(steady(&out, 16_000)).max(0.5) / (10_000.0 / 2f64.sqrt()));
            println!("48k -> 16k: {f} Hz at {att:.1} dB");
        }
    }
}
