//! A streaming reader for 16-bit PCM WAV files: the header is parsed, then samples are read
//! chunk by chunk, so an hour-long file costs no more memory than a second of it.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

/// Why a WAV file cannot be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum WavError {
    /// Reading failed.
    Io(io::Error),
    /// The file is not a 16-bit PCM WAV we can read; the message says what it is.
    Format(String),
}

impl fmt::Display for WavError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WavError::Io(e) => write!(f, "reading the WAV file failed: {e}"),
            WavError::Format(m) => write!(f, "unsupported WAV file: {m}"),
        }
    }
}

impl std::error::Error for WavError {}

impl From<io::Error> for WavError {
    fn from(e: io::Error) -> Self {
        WavError::Io(e)
    }
}

/// The format of a WAV file's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavSpec {
    /// Samples per second.
    pub sample_rate: u32,
    /// Interleaved channels.
    pub channels: u16,
    /// Bits per sample (always 16 for a file this reader opens).
    pub bits_per_sample: u16,
}

/// Reads the samples of a 16-bit PCM WAV, streaming.
#[derive(Debug)]
pub struct WavReader<R> {
    inner: R,
    spec: WavSpec,
    /// Bytes of sample data left, or `None` when the header gives no usable size (a file
    /// written while streaming): then until end of file.
    remaining: Option<u64>,
    /// A byte of a sample split across two reads.
    carry: Option<u8>,
    /// Bytes of sample data the header announced that the file did not hold, once its end
    /// was reached early.
    truncated: Option<u64>,
}

impl WavReader<BufReader<File>> {
    /// Opens a file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WavError> {
        WavReader::new(BufReader::new(File::open(path)?))
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// WAVE_FORMAT_PCM and WAVE_FORMAT_EXTENSIBLE.
const FORMAT_PCM: u16 = 1;
const FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// A `fmt ` chunk larger than this is not a real one.
const MAX_FMT_BYTES: u32 = 1024;

impl<R: Read> WavReader<R> {
    /// Parses the header up to the start of the sample data.
    pub fn new(mut inner: R) -> Result<Self, WavError> {
        let bad = |m: &str| WavError::Format(m.to_owned());
        let mut riff = [0u8; 12];
        read_header(&mut inner, &mut riff)?;
        if &riff[0..4] != b"RIFF" || &riff[8..12] != b"WAVE" {
            return Err(bad("not a RIFF/WAVE file"));
        }
        let mut spec = None;
        loop {
            let mut head = [0u8; 8];
            read_header(&mut inner, &mut head)?;
            let size = u32_at(&head, 4);
            match &head[0..4] {
                b"fmt " => {
                    if !(16..=MAX_FMT_BYTES).contains(&size) {
                        return Err(bad("the fmt chunk has an impossible size"));
                    }
                    let mut fmt = vec![0u8; size as usize + (size as usize & 1)];
                    read_header(&mut inner, &mut fmt)?;
                    let mut tag = u16_at(&fmt, 0);
                    if tag == FORMAT_EXTENSIBLE && size >= 26 {
                        tag = u16_at(&fmt, 24); // the sub-format GUID starts with the tag
                    }
                    let s = WavSpec {
                        channels: u16_at(&fmt, 2),
                        sample_rate: u32_at(&fmt, 4),
                        bits_per_sample: u16_at(&fmt, 14),
                    };
                    if tag != FORMAT_PCM {
                        return Err(WavError::Format(format!(
                            "format tag {tag} is not integer PCM"
                        )));
                    }
                    if s.bits_per_sample != 16 {
                        return Err(WavError::Format(format!(
                            "{} bits per sample; 16 is needed",
                            s.bits_per_sample
                        )));
                    }
                    if s.channels == 0 || s.sample_rate == 0 {
                        return Err(bad("zero channels or zero sample rate"));
                    }
                    spec = Some(s);
                }
                b"data" => {
                    let spec = spec.ok_or_else(|| bad("the data chunk comes before fmt"))?;
                    // 0 and 0xFFFFFFFF are what streaming writers leave behind.
                    let remaining = (size != 0 && size != u32::MAX).then_some(u64::from(size));
                    return Ok(WavReader {
                        inner,
                        spec,
                        remaining,
                        carry: None,
                        truncated: None,
                    });
                }
                _ => {
                    // LIST, fact, …: skip, with the RIFF pad byte for odd sizes.
                    let skip = u64::from(size) + u64::from(size & 1);
                    let copied = io::copy(&mut (&mut inner).take(skip), &mut io::sink())?;
                    if copied < skip {
                        return Err(bad("the file ends inside a chunk before any audio"));
                    }
                }
            }
        }
    }

    /// The audio format.
    pub fn spec(&self) -> WavSpec {
        self.spec
    }

    /// The number of samples (all channels) the header announces, if it gives one.
    pub fn len_samples(&self) -> Option<u64> {
        self.remaining.map(|b| b / 2)
    }

    /// `Some(bytes)` once reading reached the end of the file before the end of the sample
    /// data its header announced (a copy cut short, a recording that was killed): that many
    /// bytes of audio were announced and never delivered. What the file does hold was read
    /// normally, and the end is still a read of 0; this tells the caller that the end came
    /// early, which is also logged as a warning when it happens. `None` while the end has not
    /// been reached, when the data ended where the header said, or when the header gave no
    /// size.
    pub fn truncated(&self) -> Option<u64> {
        self.truncated
    }

    /// Reads up to `out.len()` interleaved samples; 0 at the end of the data.
    pub fn read_samples(&mut self, out: &mut [i16]) -> Result<usize, WavError> {
        let mut done = 0;
        let mut buf = [0u8; 1024];
        while done < out.len() {
            let want = ((out.len() - done) * 2).min(buf.len());
            let n = self.read_bytes(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            for (o, b) in out[done..].iter_mut().zip(buf[..n].chunks_exact(2)) {
                *o = i16::from_le_bytes([b[0], b[1]]);
            }
            done += n / 2;
        }
        Ok(done)
    }

    /// Reads up to `out.len()` bytes of s16le sample data, always a whole number of samples
    /// (so `out` should have an even length); 0 at the end of the data.
    pub fn read_bytes(&mut self, out: &mut [u8]) -> Result<usize, WavError> {
        let want = out.len() & !1;
        let want = match self.remaining {
            Some(r) => want.min(usize::try_from(r).unwrap_or(usize::MAX) & !1),
            None => want,
        };
        let mut n = 0;
        if let (Some(b), true) = (self.carry, want > 0) {
            out[0] = b;
            self.carry = None;
            n = 1;
        }
        let mut at_end = false;
        while n < want {
            match self.inner.read(&mut out[n..want]) {
                Ok(0) => {
                    at_end = true;
                    break;
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if n % 2 == 1 {
            // Keep half a sample for the next call rather than hand out a broken sample.
            self.carry = Some(out[n - 1]);
            n -= 1;
        }
        if let Some(r) = &mut self.remaining {
            *r -= n as u64;
            // A half sample kept in `carry` at the end is part of what is missing: it is
            // never delivered.
            if at_end && *r > 0 && self.truncated.is_none() {
                log::warn!(
                    "the WAV file ends {} bytes before the end of the audio its header announces \
                     (truncated): the audio up to there was read",
                    *r
                );
                self.truncated = Some(*r);
            }
        }
        Ok(n)
    }
}

fn read_header<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), WavError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => WavError::Format("the file ends inside its header".into()),
        _ => WavError::Io(e),
    })
}

/// Writes a 16-bit mono WAV header for `data_bytes` of samples; for tests and tools.
pub fn header(sample_rate: u32, channels: u16, data_bytes: u32) -> [u8; 44] {
    let mut h = [0u8; 44];
    // Saturating: a streaming header's data size is u32::MAX, and odd parameters must not panic.
    let block = channels.saturating_mul(2);
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data_bytes.saturating_add(36).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&FORMAT_PCM.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&sample_rate.to_le_bytes());
    h[28..32].copy_from_slice(&sample_rate.saturating_mul(u32::from(block)).to_le_bytes());
    h[32..34].copy_from_slice(&block.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, samples: &[i16], extra_chunk: bool) -> Vec<u8> {
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let h = header(rate, 1, data.len() as u32);
        let mut v = h[..36].to_vec();
        if extra_chunk {
            v.extend_from_slice(b"LIST\x03\x00\x00\x00abc\x00");
        }
        v.extend_from_slice(&h[36..]);
        v.extend_from_slice(&data);
        v
    }

    #[test]
    fn reads_samples_in_pieces_and_skips_other_chunks() {
        let samples: Vec<i16> = (0..1000).map(|i| (i * 37 - 9000) as i16).collect();
        let file = wav(16000, &samples, true);
        let mut r = WavReader::new(file.as_slice()).unwrap();
        assert_eq!(
            r.spec(),
            WavSpec {
                sample_rate: 16000,
                channels: 1,
                bits_per_sample: 16
            }
        );
        assert_eq!(r.len_samples(), Some(1000));
        let mut got = Vec::new();
        let mut buf = [0i16; 333];
        for _ in 0..10 {
            let n = r.read_samples(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, samples);
    }

    #[test]
    fn trailing_bytes_after_the_data_chunk_are_not_audio() {
        let mut file = wav(8000, &[1, 2, 3], false);
        file.extend_from_slice(b"LIST\x04\x00\x00\x00junk");
        let mut r = WavReader::new(file.as_slice()).unwrap();
        let mut buf = [0i16; 16];
        assert_eq!(r.read_samples(&mut buf).unwrap(), 3);
        assert_eq!(r.read_samples(&mut buf).unwrap(), 0);
    }

    #[test]
    fn a_file_shorter_than_its_header_says_is_read_and_reported_truncated() {
        let samples: Vec<i16> = (0..1000).map(|i| i as i16).collect();
        let mut file = wav(16000, &samples, false);
        // The header announces 1000 samples; the file holds 600 and half of the 601st.
        file.truncate(44 + 1201);
        let mut r = WavReader::new(file.as_slice()).unwrap();
        assert_eq!(r.truncated(), None, "not before the end is reached");
        let mut got = Vec::new();
        let mut buf = [0i16; 256];
        for _ in 0..20 {
            let n = r.read_samples(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, samples[..600]);
        assert_eq!(r.truncated(), Some(2000 - 1200));
        assert_eq!(r.read_samples(&mut buf).unwrap(), 0);
        assert_eq!(r.truncated(), Some(800), "reported once, unchanged");

        // Whole files, and files whose header gives no size, are not truncated.
        let whole = wav(16000, &samples, false);
        let mut r = WavReader::new(whole.as_slice()).unwrap();
        let mut big = [0i16; 2000];
        assert_eq!(r.read_samples(&mut big).unwrap(), 1000);
        assert_eq!(r.read_samples(&mut big).unwrap(), 0);
        assert_eq!(r.truncated(), None);
        let mut streaming = whole.clone();
        streaming[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = WavReader::new(streaming.as_slice()).unwrap();
        assert_eq!(r.read_samples(&mut big).unwrap(), 1000);
        assert_eq!(r.read_samples(&mut big).unwrap(), 0);
        assert_eq!(r.truncated(), None);
    }

    #[test]
    fn other_formats_get_a_clear_error() {
        let mut eight_bit = wav(16000, &[0; 4], false);
        eight_bit[34] = 8;
        let msg = WavReader::new(eight_bit.as_slice())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("8 bits per sample"), "{msg}");
        let mut float = wav(16000, &[0; 4], false);
        float[20] = 3;
        let msg = WavReader::new(float.as_slice()).unwrap_err().to_string();
        assert!(msg.contains("format tag 3"), "{msg}");
        assert!(WavReader::new(&b"RIFF\x00\x00\x00\x00WAVE"[..]).is_err());
        assert!(WavReader::new(&b"garbage that is no wav"[..]).is_err());
        assert!(WavReader::new(&wav(16000, &[0; 4], false)[..30]).is_err());
    }
}
