//! Audio accounting: a byte count and a CRC-32 per stretch of audio, so tests can prove that
//! every sample arrived exactly once and in order, and the fake transcripts made from them.

/// The CRC-32 lookup table (IEEE 802.3, reflected polynomial 0xEDB88320, as zlib), built at
/// compile time.
static CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// The size and CRC-32 (IEEE, the zlib/PNG variant) of a stretch of audio.
///
/// Digests are built incrementally: [`update`](AudioDigest::update) with consecutive pieces
/// gives the same digest as [`of`](AudioDigest::of) over their concatenation, so a test can
/// compare what it sent, however it was chunked, with what the emulator received.
///
/// ```
/// use qwen_asr_emulator::AudioDigest;
/// let mut d = AudioDigest::default();
/// d.update(b"1234");
/// d.update(b"56789");
/// assert_eq!(d, AudioDigest::of(b"123456789"));
/// assert_eq!(d.crc32, 0xcbf4_3926);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AudioDigest {
    /// Number of bytes.
    pub bytes: u64,
    /// CRC-32 of those bytes (0 for none).
    pub crc32: u32,
}

impl AudioDigest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        let mut d = AudioDigest::default();
        d.update(data);
        d
    }

    /// Extends the digest with `data`, which follows everything digested so far.
    pub fn update(&mut self, data: &[u8]) {
        // The stored value is the finished CRC (inverted register); undo the final inversion
        // to resume, which also makes the all-zero Default the correct digest of nothing.
        let mut c = !self.crc32;
        for &b in data {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.crc32 = !c;
        self.bytes += data.len() as u64;
    }

    /// Seconds of 16-bit mono audio at `sample_rate` (0 when the rate is 0).
    pub fn seconds(&self, sample_rate: u32) -> f64 {
        if sample_rate == 0 {
            return 0.0;
        }
        self.bytes as f64 / 2.0 / f64::from(sample_rate)
    }
}

/// The transcript the emulator gives an utterance: its duration, size and CRC-32, e.g.
/// `[1.84 s · 58880 bytes · crc32 9a3f12c0]` (seconds of 16-bit mono audio at `sample_rate`,
/// two decimals). A test can compute the transcript it expects from the audio it sent.
pub fn transcript_for(digest: AudioDigest, sample_rate: u32) -> String {
    format!(
        "[{:.2} s · {} bytes · crc32 {:08x}]",
        digest.seconds(sample_rate),
        digest.bytes,
        digest.crc32
    )
}
