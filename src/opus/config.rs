//! The encoder's settings.

use super::OpusError;

/// How the uplink's Opus encoder runs. Every field has a builder method of the same name;
/// [`validate`](Self::validate) checks the ranges (the stream does so too when it is made).
///
/// ```
/// use qwen_asr_realtime::opus::OpusConfig;
/// let config = OpusConfig::default().bitrate_bps(32_000).complexity(8);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpusConfig {
    /// Target bitrate of the Opus packets, in bits per second, before Ogg and base64 overhead.
    /// Default 24,000: speech-recognition guidance for Opus puts the floor near 20 kbit/s and
    /// recommends about 28; at 24 kbit/s VBR the speech fixture averages about 16 kbit/s of
    /// packets, because pauses cost almost nothing. Valid 6,000..=128,000.
    pub bitrate_bps: u32,
    /// libopus complexity, 0 (cheapest) ..= 10. Default 5: on the speech fixture it costs about
    /// two thirds of the instructions of libopus's own default 9 (46 M against 68 M per audio
    /// second on x86) with the same size within 1 % and the same waveform correlation after
    /// decoding (0.968 against 0.969), which matters on a Raspberry Pi Zero or 1.
    pub complexity: u8,
    /// Audio per Opus packet, in milliseconds: 10, 20, 40 or 60. Default 20, the usual choice for
    /// speech: shorter frames cost more header bits, longer ones add latency.
    pub frame_ms: u32,
    /// Audio per Ogg page, in milliseconds: a multiple of `frame_ms`, 20..=1000. Default 100. Each
    /// page is one append on the wire, so this sets the uplink's batching: one page per
    /// packet would spend more on the page header and the append's JSON than on the audio.
    pub page_ms: u32,
    /// Variable bitrate (default true): pauses and steady sounds take fewer bytes. With
    /// `false` every packet has the same size (constant bitrate).
    pub vbr: bool,
}

impl Default for OpusConfig {
    fn default() -> Self {
        OpusConfig {
            bitrate_bps: 24_000,
            complexity: 5,
            frame_ms: 20,
            page_ms: 100,
            vbr: true,
        }
    }
}

impl OpusConfig {
    /// Sets [`bitrate_bps`](Self::bitrate_bps).
    pub fn bitrate_bps(mut self, bps: u32) -> Self {
        self.bitrate_bps = bps;
        self
    }

    /// Sets [`complexity`](Self::complexity).
    pub fn complexity(mut self, complexity: u8) -> Self {
        self.complexity = complexity;
        self
    }

    /// Sets [`frame_ms`](Self::frame_ms).
    pub fn frame_ms(mut self, ms: u32) -> Self {
        self.frame_ms = ms;
        self
    }

    /// Sets [`page_ms`](Self::page_ms).
    pub fn page_ms(mut self, ms: u32) -> Self {
        self.page_ms = ms;
        self
    }

    /// Sets [`vbr`](Self::vbr).
    pub fn vbr(mut self, vbr: bool) -> Self {
        self.vbr = vbr;
        self
    }

    /// Checks every field against its valid range.
    pub fn validate(&self) -> Result<(), OpusError> {
        let bad = |field: &'static str, value: u32, expected: &'static str| {
            Err(OpusError::InvalidConfig {
                field,
                value,
                expected,
            })
        };
        if !(6_000..=128_000).contains(&self.bitrate_bps) {
            return bad("opus.bitrate_bps", self.bitrate_bps, "6000..=128000");
        }
        if self.complexity > 10 {
            return bad("opus.complexity", self.complexity.into(), "0..=10");
        }
        if ![10, 20, 40, 60].contains(&self.frame_ms) {
            return bad("opus.frame_ms", self.frame_ms, "10, 20, 40 or 60");
        }
        if !(20..=1000).contains(&self.page_ms) || self.page_ms % self.frame_ms != 0 {
            return bad(
                "opus.page_ms",
                self.page_ms,
                "a multiple of frame_ms in 20..=1000",
            );
        }
        Ok(())
    }
}
