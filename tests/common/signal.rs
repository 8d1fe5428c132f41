//! Comparing decoded audio with its source through a lossy codec: by correlation of the
//! waveforms and of the RMS envelopes, not by bytes. Std only, so that the library's own unit
//! tests can include this file too.

/// Pearson correlation of two equally long signals.
pub fn correlation(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        ab += (x - ma) * (y - mb);
        aa += (x - ma) * (x - ma);
        bb += (y - mb) * (y - mb);
    }
    ab / (aa * bb).sqrt()
}

/// RMS per window of `window_samples` (the last window may be shorter).
pub fn rms_envelope(pcm: &[i16], window_samples: usize) -> Vec<f64> {
    pcm.chunks(window_samples)
        .map(|c| (c.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
        .collect()
}

/// The decoded audio (at `rate` Hz) has the source's length (pre-skip and end trim honoured)
/// and, through a lossy codec, its shape: the 20 ms envelopes correlate above 0.98 and the
/// waveforms, time-aligned by the pre-skip, above 0.85. Through libopus at the defaults the
/// speech fixture gives about 0.999 and 0.91 (also through opusdec, which decodes at 48 kHz
/// and resamples); the same decode one pre-skip (6.5 ms) off gives 0.02 and 0.65..0.87.
pub fn assert_matches_source(decoded: &[i16], source: &[i16], rate: u32) {
    assert_eq!(
        decoded.len(),
        source.len(),
        "decoded length (pre-skip and end trim)"
    );
    let window = (rate / 50) as usize;
    let env = correlation(
        &rms_envelope(decoded, window),
        &rms_envelope(source, window),
    );
    let wave = correlation(
        &decoded.iter().map(|&s| f64::from(s)).collect::<Vec<_>>(),
        &source.iter().map(|&s| f64::from(s)).collect::<Vec<_>>(),
    );
    assert!(env > 0.98, "envelope correlation {env:.3}");
    assert!(wave > 0.85, "waveform correlation {wave:.3}");
}
