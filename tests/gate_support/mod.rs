//! Fixtures for the speech gate: the shipped speech clips (espeak-ng, trimmed so that their
//! first and last samples are the start and end of speech), noise beds generated from a fixed
//! seed, and scenes that place clips in a bed, so every speech region is known by
//! construction.
#![allow(dead_code)]

use std::ops::Range;
use std::path::Path;

use qwen_asr_realtime::audio::wav::WavReader;
use qwen_asr_realtime::gate::{Gate, Output};

pub const RATE: usize = 16_000;

/// The three shipped clips, 16 kHz mono, about 2 s each, speech from first to last sample.
pub fn clips() -> Vec<Vec<i16>> {
    ["lights", "weather", "timer"]
        .iter()
        .map(|name| {
            // From the client's tests, or from the benchmark (a workspace member beside them).
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let dir = ["tests/fixtures/gate", "../tests/fixtures/gate"]
                .iter()
                .map(|d| root.join(d))
                .find(|d| d.is_dir())
                .unwrap_or_else(|| root.join("tests/fixtures/gate"));
            let path = dir.join(format!("{name}.wav"));
            read_wav(&path)
        })
        .collect()
}

pub fn read_wav(path: &Path) -> Vec<i16> {
    let mut r = WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = r.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels),
        (16_000, 1),
        "{}",
        path.display()
    );
    let mut out = vec![0i16; r.len_samples().unwrap() as usize];
    let mut filled = 0;
    while filled < out.len() {
        let n = r.read_samples(&mut out[filled..]).unwrap();
        assert!(n > 0, "short file {}", path.display());
        filled += n;
    }
    out
}

/// A small deterministic PRNG (SplitMix64), so every run builds the same fixtures.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly Gaussian, unit variance (sum of four uniforms).
    pub fn gauss(&mut self) -> f64 {
        let s: f64 = (0..4).map(|_| self.uniform()).sum();
        (s - 2.0) * 3f64.sqrt()
    }

    /// Uniform integer in `range`.
    pub fn range(&mut self, range: Range<usize>) -> usize {
        range.start + (self.next_u64() % (range.end - range.start) as u64) as usize
    }
}

/// The kinds of background the gate must hold back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noise {
    /// Digital silence.
    Silence,
    /// White noise at -70 dBFS: a good microphone in a silent room.
    NearSilence,
    /// Low-passed noise at -50 dBFS: a living room with nothing going on.
    Room,
    /// Brown noise at -35 dBFS: a fan or air conditioning close to the device.
    Fan,
    /// Pink noise at -35 dBFS.
    Pink,
    /// 50 Hz mains hum with odd and even harmonics at -30 dBFS.
    Hum,
    /// Near-silence with a sharp click every 0.3 to 1.5 s (a keyboard, a relay, a tick).
    Clicks,
}

pub const NOISES: [Noise; 7] = [
    Noise::Silence,
    Noise::NearSilence,
    Noise::Room,
    Noise::Fan,
    Noise::Pink,
    Noise::Hum,
    Noise::Clicks,
];

fn rms(v: &[f64]) -> f64 {
    (v.iter().map(|x| x * x).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

fn scale_to_dbfs(v: &mut [f64], dbfs: f64) {
    let r = rms(v);
    if r > 0.0 {
        let g = 32768.0 * 10f64.powf(dbfs / 20.0) / r;
        v.iter_mut().for_each(|x| *x *= g);
    }
}

fn to_i16(v: &[f64]) -> Vec<i16> {
    v.iter()
        .map(|&x| x.round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

/// `seconds` of `noise` at 16 kHz, from `seed`.
pub fn noise(kind: Noise, seconds: f64, seed: u64) -> Vec<i16> {
    let n = (seconds * RATE as f64) as usize;
    let mut rng = Rng::new(seed ^ (kind as u64).wrapping_mul(0x1000_0000_01b3));
    let mut v = vec![0f64; n];
    match kind {
        Noise::Silence => {}
        Noise::NearSilence => {
            v.iter_mut().for_each(|x| *x = rng.gauss());
            scale_to_dbfs(&mut v, -70.0);
        }
        Noise::Room => {
            // Two one-pole low-passes: most energy below ~1 kHz, like a quiet room.
            let (mut a, mut b) = (0.0, 0.0);
            for x in v.iter_mut() {
                a += 0.3 * (rng.gauss() - a);
                b += 0.3 * (a - b);
                *x = b + 0.05 * rng.gauss();
            }
            scale_to_dbfs(&mut v, -50.0);
        }
        Noise::Fan => {
            let mut y = 0.0;
            for x in v.iter_mut() {
                // Leaky integration of white noise: a -6 dB/octave (brown) spectrum.
                y = 0.998 * y + rng.gauss();
                *x = y;
            }
            scale_to_dbfs(&mut v, -35.0);
        }
        Noise::Pink => {
            // Paul Kellet's economy pink filter.
            let (mut b0, mut b1, mut b2) = (0.0, 0.0, 0.0);
            for x in v.iter_mut() {
                let w = rng.gauss();
                b0 = 0.99765 * b0 + w * 0.0990460;
                b1 = 0.96300 * b1 + w * 0.2965164;
                b2 = 0.57000 * b2 + w * 1.0526913;
                *x = b0 + b1 + b2 + w * 0.1848;
            }
            scale_to_dbfs(&mut v, -35.0);
        }
        Noise::Hum => {
            let phases: Vec<f64> = (0..8)
                .map(|_| rng.uniform() * std::f64::consts::TAU)
                .collect();
            for (i, x) in v.iter_mut().enumerate() {
                let t = i as f64 / RATE as f64;
                *x = (1..=8)
                    .map(|h| {
                        let f = 50.0 * h as f64;
                        (std::f64::consts::TAU * f * t + phases[h - 1]).sin() / h as f64
                    })
                    .sum::<f64>()
                    + 0.01 * rng.gauss();
            }
            scale_to_dbfs(&mut v, -30.0);
        }
        Noise::Clicks => {
            v.iter_mut().for_each(|x| *x = rng.gauss());
            scale_to_dbfs(&mut v, -65.0);
            let mut at = rng.range(RATE / 3..RATE * 3 / 2);
            while at < n {
                // A sharp attack with a 2 ms decay, peak about -6 dBFS, random polarity.
                let sign = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
                for k in 0..(RATE / 100).min(n - at) {
                    let env = (-(k as f64) / 32.0).exp();
                    v[at + k] += sign * 16_000.0 * env * if k % 2 == 0 { 1.0 } else { -0.6 };
                }
                at += rng.range(RATE * 3 / 10..RATE * 3 / 2);
            }
        }
    }
    to_i16(&v)
}

/// Audio with speech regions known by construction.
pub struct Scene {
    pub pcm: Vec<i16>,
    /// Where each clip lies in `pcm`.
    pub regions: Vec<Range<usize>>,
}

/// `clip` mixed (added, saturating) into `bed` at `at`, scaled by `gain`.
pub fn mix_in(bed: &mut [i16], at: usize, clip: &[i16], gain: f64) {
    for (d, &s) in bed[at..at + clip.len()].iter_mut().zip(clip) {
        *d = (f64::from(*d) + f64::from(s) * gain)
            .round()
            .clamp(-32768.0, 32767.0) as i16;
    }
}

/// RMS level in dBFS of `v`.
pub fn level_dbfs(v: &[i16]) -> f64 {
    let ms = v.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / v.len().max(1) as f64;
    10.0 * (ms / (32768.0 * 32768.0)).log10()
}

/// Clips at the given positions (seconds) in a bed of `kind`, `seconds` long; the clips are
/// mixed so that the speech is `snr_db` above the bed (or at their own level over silence).
pub fn scene(
    kind: Noise,
    seconds: f64,
    at_seconds: &[f64],
    snr_db: Option<f64>,
    seed: u64,
) -> Scene {
    let clips = clips();
    let mut pcm = noise(kind, seconds, seed);
    let bed_db = level_dbfs(&pcm);
    let mut regions = Vec::new();
    for (i, &t) in at_seconds.iter().enumerate() {
        let clip = &clips[i % clips.len()];
        let gain = match snr_db {
            Some(snr) => 10f64.powf((bed_db + snr - level_dbfs(clip)) / 20.0),
            None => 1.0,
        };
        let at = (t * RATE as f64) as usize;
        mix_in(&mut pcm, at, clip, gain);
        regions.push(at..at + clip.len());
    }
    Scene { pcm, regions }
}

/// The long fixture: `minutes` of room noise with clips placed at random gaps so that about
/// `speech_share` of it is speech.
pub fn long_scene(minutes: f64, speech_share: f64, seed: u64) -> Scene {
    let clips = clips();
    let total = (minutes * 60.0 * RATE as f64) as usize;
    let mean_clip = clips.iter().map(Vec::len).sum::<usize>() / clips.len();
    let count = (total as f64 * speech_share / mean_clip as f64).round() as usize;
    let mean_gap = (total - count * mean_clip) / (count + 1);
    let mut rng = Rng::new(seed);
    let mut pcm = noise(Noise::Room, minutes * 60.0, seed);
    let mut regions = Vec::new();
    let mut at = rng.range(mean_gap / 2..mean_gap * 3 / 2);
    let mut i = 0;
    while i < count {
        let clip = &clips[i % clips.len()];
        if at + clip.len() > total {
            break;
        }
        mix_in(&mut pcm, at, clip, 1.0);
        regions.push(at..at + clip.len());
        at += clip.len() + rng.range(mean_gap / 2..mean_gap * 3 / 2);
        i += 1;
    }
    Scene { pcm, regions }
}

/// What the gate did with a stream, with the forwarded audio merged into contiguous
/// segments, so runs with different chunk sizes can be compared.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Run {
    /// Forwarded audio: (start position, samples), contiguous runs merged.
    pub segments: Vec<(u64, Vec<i16>)>,
    /// Every non-audio output, in order, in a comparable form.
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Opened {
        at: u64,
        speech_at: u64,
        after_idle: bool,
    },
    Closed {
        at: u64,
        speech_end: u64,
        commit: bool,
    },
    Idle {
        at: u64,
    },
    Commit {
        at: u64,
    },
}

impl Run {
    pub fn record(&mut self, out: Output<'_>) {
        match out {
            Output::Audio {
                samples, at_sample, ..
            } => match self.segments.last_mut() {
                Some((start, s)) if *start + s.len() as u64 == at_sample => {
                    s.extend_from_slice(samples)
                }
                _ => self.segments.push((at_sample, samples.to_vec())),
            },
            Output::Opened {
                at_sample,
                speech_at_sample,
                after_idle,
                ..
            } => self.events.push(Event::Opened {
                at: at_sample,
                speech_at: speech_at_sample,
                after_idle,
            }),
            Output::Closed {
                at_sample,
                speech_end_sample,
                commit,
                ..
            } => self.events.push(Event::Closed {
                at: at_sample,
                speech_end: speech_end_sample,
                commit,
            }),
            Output::Idle { at_sample, .. } => self.events.push(Event::Idle { at: at_sample }),
            Output::Commit { at_sample, .. } => self.events.push(Event::Commit { at: at_sample }),
            other => panic!("unexpected output {other:?}"),
        }
    }

    pub fn forwarded(&self) -> usize {
        self.segments.iter().map(|(_, s)| s.len()).sum()
    }

    pub fn openings(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Opened { .. }))
            .count()
    }
}

/// Gates `pcm` in chunks of `chunk` samples, then finishes; checks the accounting identity
/// after every chunk.
pub fn run_gate(gate: &mut Gate, pcm: &[i16], chunk: usize) -> Run {
    let mut run = Run::default();
    for piece in pcm.chunks(chunk) {
        gate.process(piece, |o| run.record(o));
        let c = gate.counters();
        assert_eq!(
            c.captured_samples,
            c.forwarded_samples + c.gated_samples + c.held_samples,
            "{c:?}"
        );
        assert_eq!(c.forwarded_samples, run.forwarded() as u64);
    }
    gate.finish(|o| run.record(o));
    run
}
