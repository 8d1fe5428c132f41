//! A strict reader of one Ogg Opus logical stream (RFC 3533 pages carrying the RFC 7845
//! mapping), decoding it to 16-bit mono PCM with libopus (feature `opus`).
//!
//! The emulator runs every session whose `input_audio_format` is `"opus"` through one of these,
//! and tests can use it to decode what a session received. It is fed in pieces of any size:
//! pages may be split across appends, or several may come in one.
//!
//! What it checks, as a strict server would:
//! - every page: the capture pattern `OggS`, stream structure version 0, its CRC-32
//!   (polynomial 0x04c11db7, as Ogg defines it);
//! - one logical stream: the serial number of the first page on every page, page sequence
//!   numbers from 0 without gaps or repeats, no second beginning-of-stream page, nothing after
//!   the end-of-stream page;
//! - the first page is flagged beginning of stream and holds exactly one packet, `OpusHead`
//!   (version 0.x, one channel, channel mapping family 0, and the expected input sample rate
//!   if one was set with [`OggOpusReader::expect_input_rate`]); the second packet is
//!   `OpusTags`, with no audio after it on its page;
//! - audio: granule positions that never go backwards, continued-packet flags that match,
//!   packets that are neither empty nor larger than Opus allows, and that libopus decodes;
//! - the end: the final granule position may trim only audio of the last page (RFC 7845
//!   section 4.4: the end-of-stream page may say it holds less audio than its packets decode
//!   to), never more audio than was decoded.
//!
//! The decoded audio drops the header's pre-skip (the encoder's delay) at the start and is
//! trimmed to the final granule position at the end. The header's output gain is not applied
//! (it is 0 in every stream a speech client writes).
//!
//! Memory is bounded: at most one incomplete page (under 64 KiB) waits between pushes, and
//! [`OggOpusReader::push_each`] hands out each page's audio as it is decoded (what a server
//! does); [`OggOpusReader::push`] keeps it until [`OggOpusReader::take_pcm`] takes it (what a
//! test does). A log of every page is kept only when asked for
//! ([`OggOpusReader::keep_page_log`], a test's tool).

use std::fmt;

#[cfg(test)]
mod tests;

/// Page flag: the first packet continues from the previous page.
const FLAG_CONTINUED: u8 = 0x01;
/// Page flag: beginning of stream.
const FLAG_BOS: u8 = 0x02;
/// Page flag: end of stream.
const FLAG_EOS: u8 = 0x04;
/// Opus granule positions count 48 kHz samples, whatever the rates in and out.
const GRANULE_RATE_HZ: u64 = 48_000;
/// The largest decoded packet: 120 ms at 48 kHz.
const MAX_PACKET_SAMPLES_48K: usize = 5_760;
/// A packet larger than this is not Opus (RFC 6716: at most 120 ms of 1,275-byte frames, plus
/// framing).
const MAX_PACKET_BYTES: usize = 61_440;
/// Bytes of a page header before its lacing values.
const PAGE_HEADER_BYTES: usize = 27;

/// What is wrong with a stream. `sequence` is the sequence number the page carried.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadError {
    /// Bytes that do not start with `OggS`, or a stream structure version other than 0.
    NotAPage {
        /// Where the bad page starts, in bytes from the start of the stream.
        offset: u64,
    },
    /// A page's CRC does not match its bytes.
    Crc {
        /// The page's sequence number.
        sequence: u32,
        /// The CRC the page carries.
        stored: u32,
        /// The CRC of its bytes.
        computed: u32,
    },
    /// The first page is not flagged beginning of stream, or a later one is.
    Bos {
        /// The page's sequence number.
        sequence: u32,
    },
    /// A page belongs to another logical stream.
    Serial {
        /// The serial number of the stream's first page.
        expected: u32,
        /// The serial number this page carries.
        found: u32,
    },
    /// Page sequence numbers skip or repeat.
    Sequence {
        /// The number that comes next.
        expected: u32,
        /// The number the page carries.
        found: u32,
    },
    /// A page comes after the end-of-stream page.
    AfterEos,
    /// A continued-packet flag does not match whether a packet was left open.
    Continuation {
        /// The page's sequence number.
        sequence: u32,
    },
    /// A header packet is malformed or out of place, or the stream's structure is wrong.
    Header(&'static str),
    /// The `OpusHead` input sample rate is not the one expected.
    InputRate {
        /// The rate expected ([`OggOpusReader::expect_input_rate`]).
        expected: u32,
        /// The rate in `OpusHead`.
        found: u32,
    },
    /// A page's granule position is lower than an earlier page's.
    GranuleBackwards {
        /// The page's sequence number.
        sequence: u32,
        /// The granule position before it.
        previous: u64,
        /// Its granule position.
        found: u64,
    },
    /// An audio packet is empty, or larger than Opus can produce.
    BadPacket(&'static str),
    /// libopus could not decode a packet (or make a decoder).
    Decode(opus::Error),
    /// The stream ended without an end-of-stream page, or with part of a page.
    Unfinished(&'static str),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NotAPage { offset } => write!(f, "no Ogg page at byte {offset}"),
            ReadError::Crc {
                sequence,
                stored,
                computed,
            } => write!(
                f,
                "page {sequence}: CRC {stored:#010x} stored, {computed:#010x} computed"
            ),
            ReadError::Bos { sequence } => {
                write!(f, "page {sequence}: beginning-of-stream flag out of place")
            }
            ReadError::Serial { expected, found } => {
                write!(f, "a page of stream {found} inside stream {expected}")
            }
            ReadError::Sequence { expected, found } => {
                write!(
                    f,
                    "page sequence number {found} where {expected} comes next"
                )
            }
            ReadError::AfterEos => write!(f, "a page after the end of stream"),
            ReadError::Continuation { sequence } => {
                write!(
                    f,
                    "page {sequence}: the continued-packet flag does not match"
                )
            }
            ReadError::Header(what) => write!(f, "{what}"),
            ReadError::InputRate { expected, found } => write!(
                f,
                "OpusHead input sample rate {found} Hz, but the session's sample_rate is {expected}"
            ),
            ReadError::GranuleBackwards {
                sequence,
                previous,
                found,
            } => write!(
                f,
                "page {sequence}: granule position {found} after {previous}"
            ),
            ReadError::BadPacket(what) => write!(f, "{what}"),
            ReadError::Decode(e) => write!(f, "Opus decoding failed: {e}"),
            ReadError::Unfinished(what) => write!(f, "stream unfinished: {what}"),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Decode(e) => Some(e),
            _ => None,
        }
    }
}

/// CRC-32 as Ogg defines it: polynomial 0x04c11db7, most significant bit first, initial value
/// 0, no final inversion, over the page with its CRC field zeroed. Bitwise rather than by
/// table: a checker favours being obviously right over speed.
pub fn ogg_crc(bytes: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in bytes {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The `OpusHead` fields (RFC 7845 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusHead {
    /// Version: 1 in current streams; any 0.x (0..=15) is read.
    pub version: u8,
    /// Output channels: always 1 here (mono is all the service takes).
    pub channels: u8,
    /// 48 kHz samples to drop at the start of the decode (the encoder's delay).
    pub pre_skip: u16,
    /// The sample rate the encoder was fed, in Hz (informational for a decoder).
    pub input_sample_rate: u32,
    /// Gain to apply on output, in Q7.8 dB (not applied by this reader).
    pub output_gain: i16,
    /// Channel mapping family: always 0 here.
    pub mapping_family: u8,
}

/// One page as it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageInfo {
    /// Header flags (continued packet 0x01, beginning 0x02, end 0x04 of stream).
    pub flags: u8,
    /// Granule position: 48 kHz samples decodable through the last packet ending here.
    pub granule: u64,
    /// The logical stream's serial number.
    pub serial: u32,
    /// Page sequence number.
    pub sequence: u32,
    /// Packets that end on this page.
    pub packets: usize,
    /// Bytes of the page, header included.
    pub bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Tags,
    Audio,
    Ended,
}

/// Reads one logical Ogg Opus stream, fed in pieces of any size, and decodes it to mono PCM.
///
/// ```
/// use qwen_asr_emulator::ogg_opus::{OggOpusReader, ReadError};
/// let mut reader = OggOpusReader::new(16_000);
/// // Not an Ogg page: refused, whatever comes after.
/// assert!(matches!(reader.push(b"RIFF...."), Err(ReadError::NotAPage { offset: 0 })));
/// ```
pub struct OggOpusReader {
    output_rate: u32,
    expected_input_rate: Option<u32>,
    /// Bytes of a page that has not fully arrived.
    buf: Vec<u8>,
    /// Bytes of complete pages read so far.
    consumed: u64,
    serial: Option<u32>,
    next_sequence: u32,
    last_granule: u64,
    state: State,
    open_packet: Vec<u8>,
    head: Option<OpusHead>,
    vendor: Option<String>,
    decoder: Option<opus::Decoder>,
    /// Output samples still to drop for the pre-skip.
    skip_left: u64,
    /// Decode scratch: one packet's output.
    scratch: Vec<i16>,
    /// The current page's decoded audio, held until the page is known not to trim it.
    page_pcm: Vec<i16>,
    /// Decoded audio not yet taken.
    pcm: Vec<i16>,
    /// Output samples released so far (taken or not): the stream's position.
    released_samples: u64,
    pages: u64,
    last_page: Option<PageInfo>,
    /// Every page read, when asked for ([`OggOpusReader::keep_page_log`]).
    page_log: Option<Vec<PageInfo>>,
    packets: u64,
    /// The first error: the stream is refused from then on.
    failed: bool,
}

impl fmt::Debug for OggOpusReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OggOpusReader")
            .field("output_rate", &self.output_rate)
            .field("serial", &self.serial)
            .field("state", &self.state)
            .field("pages", &self.pages)
            .field("released_samples", &self.released_samples)
            .finish_non_exhaustive()
    }
}

impl OggOpusReader {
    /// A reader that decodes to mono at `output_rate` Hz (8000, 12000, 16000, 24000 or 48000,
    /// the rates libopus decodes to; any other fails at the first header).
    pub fn new(output_rate: u32) -> Self {
        OggOpusReader {
            output_rate,
            expected_input_rate: None,
            buf: Vec::new(),
            consumed: 0,
            serial: None,
            next_sequence: 0,
            last_granule: 0,
            state: State::Head,
            open_packet: Vec::new(),
            head: None,
            vendor: None,
            decoder: None,
            skip_left: 0,
            scratch: Vec::new(),
            page_pcm: Vec::new(),
            pcm: Vec::new(),
            released_samples: 0,
            pages: 0,
            last_page: None,
            page_log: None,
            packets: 0,
            failed: false,
        }
    }

    /// Requires `OpusHead`'s input sample rate to be `rate` Hz (a server checks it against the
    /// session's `sample_rate`).
    pub fn expect_input_rate(mut self, rate: u32) -> Self {
        self.expected_input_rate = Some(rate);
        self
    }

    /// Keeps a [`PageInfo`] of every page read, for [`page_log`](Self::page_log): what a test
    /// checks a writer's paging with (packets per page, granule positions, page sizes). Off
    /// by default, because the log grows with the stream (a server keeps only
    /// [`last_page`](Self::last_page)).
    pub fn keep_page_log(mut self) -> Self {
        self.page_log = Some(Vec::new());
        self
    }

    /// Reads every complete page in what has arrived so far; the bytes of a trailing partial
    /// page wait for the next push. After an error every push fails: the stream is refused.
    /// Audio decoded from the pages before the bad one is kept (see [`take_pcm`](Self::take_pcm)).
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ReadError> {
        let mut pcm = std::mem::take(&mut self.pcm);
        let result = self.push_each(bytes, |page| pcm.extend_from_slice(page));
        self.pcm = pcm;
        result
    }

    /// Like [`push`](Self::push), but hands each page's decoded audio to `sink` as soon as
    /// the page is read, instead of keeping it: memory then stays within one page's audio
    /// however much one push holds (a page of 255 tiny packets can decode to 30 s of audio).
    pub fn push_each(
        &mut self,
        bytes: &[u8],
        mut sink: impl FnMut(&[i16]),
    ) -> Result<(), ReadError> {
        if self.failed {
            return Err(ReadError::Header("the stream was refused earlier"));
        }
        let result = self.push_inner(bytes, &mut sink);
        if result.is_err() {
            self.failed = true;
            self.buf = Vec::new();
        }
        result
    }

    fn push_inner(&mut self, bytes: &[u8], sink: &mut dyn FnMut(&[i16])) -> Result<(), ReadError> {
        // Whole pages are read straight from `bytes`; only a page split across pushes is
        // copied, into `buf`, until the rest of it arrives.
        let mut pending = std::mem::take(&mut self.buf);
        let data: &[u8] = if pending.is_empty() {
            bytes
        } else {
            pending.extend_from_slice(bytes);
            &pending
        };
        let mut at = 0;
        while let Some(len) = page_len(&data[at..], self.consumed)? {
            self.read_page(&data[at..at + len])?;
            if !self.page_pcm.is_empty() {
                sink(&self.page_pcm);
            }
            self.consumed += len as u64;
            at += len;
        }
        self.buf = data[at..].to_vec();
        Ok(())
    }

    /// Checks that the stream ended properly: its end-of-stream page read, no partial page
    /// left over, no error.
    pub fn finish(&self) -> Result<(), ReadError> {
        if self.failed {
            return Err(ReadError::Header("the stream was refused"));
        }
        if !self.buf.is_empty() {
            return Err(ReadError::Unfinished("part of a page is left over"));
        }
        if self.state != State::Ended {
            return Err(ReadError::Unfinished("no end-of-stream page"));
        }
        Ok(())
    }

    /// Takes the audio [`push`](Self::push) decoded since the last call (or since the start).
    pub fn take_pcm(&mut self) -> Vec<i16> {
        std::mem::take(&mut self.pcm)
    }

    /// The audio [`push`](Self::push) decoded and not yet taken.
    pub fn pcm(&self) -> &[i16] {
        &self.pcm
    }

    /// Samples of audio decoded so far, taken or not: pre-skip dropped, and trimmed at the end.
    pub fn decoded_samples(&self) -> u64 {
        self.released_samples
    }

    /// True while bytes of an incomplete page wait for the rest of it.
    pub fn has_partial_page(&self) -> bool {
        !self.buf.is_empty()
    }

    /// True once the end-of-stream page has been read.
    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// True once a push has failed: the stream is refused.
    pub fn is_refused(&self) -> bool {
        self.failed
    }

    /// The identification header, once read.
    pub fn head(&self) -> Option<&OpusHead> {
        self.head.as_ref()
    }

    /// The vendor string of `OpusTags`, once read.
    pub fn vendor(&self) -> Option<&str> {
        self.vendor.as_deref()
    }

    /// The stream's serial number, once its first page was read.
    pub fn serial(&self) -> Option<u32> {
        self.serial
    }

    /// Pages read so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The last page read.
    pub fn last_page(&self) -> Option<&PageInfo> {
        self.last_page.as_ref()
    }

    /// Every page read, in order, if [`keep_page_log`](Self::keep_page_log) asked for it;
    /// empty otherwise.
    pub fn page_log(&self) -> &[PageInfo] {
        self.page_log.as_deref().unwrap_or(&[])
    }

    /// Audio packets decoded so far.
    pub fn audio_packets(&self) -> u64 {
        self.packets
    }

    /// Decodes a whole stream, which must end with its end-of-stream page: what a test does
    /// with the bytes a session received.
    pub fn decode_all(bytes: &[u8], output_rate: u32) -> Result<Vec<i16>, ReadError> {
        let mut reader = OggOpusReader::new(output_rate);
        reader.push(bytes)?;
        reader.finish()?;
        Ok(reader.take_pcm())
    }

    fn read_page(&mut self, page: &[u8]) -> Result<(), ReadError> {
        let u32_at =
            |at: usize| u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]]);
        let flags = page[5];
        let granule = u64::from(u32_at(6)) | u64::from(u32_at(10)) << 32;
        let serial = u32_at(14);
        let sequence = u32_at(18);
        let stored = u32_at(22);
        let mut zeroed = page.to_vec();
        zeroed[22..26].fill(0);
        let computed = ogg_crc(&zeroed);
        if stored != computed {
            return Err(ReadError::Crc {
                sequence,
                stored,
                computed,
            });
        }
        if self.state == State::Ended {
            return Err(ReadError::AfterEos);
        }
        match self.serial {
            None => {
                if flags & FLAG_BOS == 0 {
                    return Err(ReadError::Bos { sequence });
                }
                self.serial = Some(serial);
            }
            Some(expected) => {
                if serial != expected {
                    return Err(ReadError::Serial {
                        expected,
                        found: serial,
                    });
                }
                if flags & FLAG_BOS != 0 {
                    return Err(ReadError::Bos { sequence });
                }
            }
        }
        if sequence != self.next_sequence {
            return Err(ReadError::Sequence {
                expected: self.next_sequence,
                found: sequence,
            });
        }
        self.next_sequence = sequence.wrapping_add(1);
        if (flags & FLAG_CONTINUED != 0) == self.open_packet.is_empty() {
            return Err(ReadError::Continuation { sequence });
        }

        let segments = usize::from(page[26]);
        let lacing = &page[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + segments];
        let mut body = &page[PAGE_HEADER_BYTES + segments..];
        let in_audio = self.state == State::Audio;
        let mut completed = 0;
        self.page_pcm.clear();
        for (i, &l) in lacing.iter().enumerate() {
            let (seg, rest) = body.split_at(usize::from(l));
            body = rest;
            self.open_packet.extend_from_slice(seg);
            if self.open_packet.len() > MAX_PACKET_BYTES {
                return Err(ReadError::BadPacket("a packet larger than Opus allows"));
            }
            if l < 255 {
                let packet = std::mem::take(&mut self.open_packet);
                let last_on_page = i + 1 == lacing.len();
                let r = self.packet(&packet, last_on_page);
                self.open_packet = packet;
                self.open_packet.clear();
                r?;
                completed += 1;
            }
        }
        // A page on which no packet ends carries granule position -1 and sets no time.
        if completed > 0 {
            if in_audio || flags & FLAG_EOS != 0 {
                if granule < self.last_granule {
                    return Err(ReadError::GranuleBackwards {
                        sequence,
                        previous: self.last_granule,
                        found: granule,
                    });
                }
                self.last_granule = granule;
            } else if granule != 0 {
                return Err(ReadError::Header(
                    "a header page with a nonzero granule position",
                ));
            }
        }
        if sequence == 0 && (completed != 1 || !self.open_packet.is_empty()) {
            return Err(ReadError::Header(
                "the first page must hold OpusHead and nothing else",
            ));
        }
        if flags & FLAG_EOS != 0 {
            if !self.open_packet.is_empty() {
                return Err(ReadError::Unfinished("the end of stream inside a packet"));
            }
            if self.state != State::Audio {
                return Err(ReadError::Header(
                    "the end of stream before the headers ended",
                ));
            }
            self.trim_to(granule)?;
            self.state = State::Ended;
        }
        let info = PageInfo {
            flags,
            granule,
            serial,
            sequence,
            packets: completed,
            bytes: page.len(),
        };
        self.pages += 1;
        self.last_page = Some(info);
        if let Some(log) = &mut self.page_log {
            log.push(info);
        }
        self.released_samples += self.page_pcm.len() as u64;
        Ok(())
    }

    fn packet(&mut self, packet: &[u8], last_on_page: bool) -> Result<(), ReadError> {
        match self.state {
            State::Head => {
                let head = parse_head(packet)?;
                if let Some(expected) = self.expected_input_rate {
                    if head.input_sample_rate != expected {
                        return Err(ReadError::InputRate {
                            expected,
                            found: head.input_sample_rate,
                        });
                    }
                }
                self.decoder = Some(
                    opus::Decoder::new(self.output_rate, opus::Channels::Mono)
                        .map_err(ReadError::Decode)?,
                );
                self.skip_left =
                    u64::from(head.pre_skip) * u64::from(self.output_rate) / GRANULE_RATE_HZ;
                self.scratch = vec![
                    0;
                    MAX_PACKET_SAMPLES_48K * self.output_rate as usize
                        / GRANULE_RATE_HZ as usize
                ];
                self.head = Some(head);
                self.state = State::Tags;
            }
            State::Tags => {
                self.vendor = Some(parse_tags(packet)?);
                if !last_on_page {
                    return Err(ReadError::Header("audio on the OpusTags page"));
                }
                self.state = State::Audio;
            }
            State::Audio => {
                if packet.is_empty() {
                    // libopus would conceal a loss here, making audio out of nothing.
                    return Err(ReadError::BadPacket("an empty audio packet"));
                }
                let decoder = self
                    .decoder
                    .as_mut()
                    .ok_or(ReadError::Header("audio before OpusHead"))?;
                let n = decoder
                    .decode(packet, &mut self.scratch, false)
                    .map_err(ReadError::Decode)?;
                let n = n.min(self.scratch.len());
                let skip = usize::try_from(self.skip_left).unwrap_or(usize::MAX).min(n);
                self.skip_left -= skip as u64;
                self.page_pcm.extend_from_slice(&self.scratch[skip..n]);
                self.packets += 1;
            }
            State::Ended => return Err(ReadError::AfterEos),
        }
        Ok(())
    }

    /// Cuts the end-of-stream page's decoded audio to what its granule position says.
    fn trim_to(&mut self, granule: u64) -> Result<(), ReadError> {
        let pre_skip = self.head.map_or(0, |h| u64::from(h.pre_skip));
        let audio_48k = granule.checked_sub(pre_skip).ok_or(ReadError::Header(
            "the final granule position is below the pre-skip",
        ))?;
        // In u128: the granule position is the peer's number, anything up to 2^64 - 1.
        let keep =
            u128::from(audio_48k) * u128::from(self.output_rate) / u128::from(GRANULE_RATE_HZ);
        let released = u128::from(self.released_samples);
        let decoded = released + self.page_pcm.len() as u128;
        if keep > decoded {
            return Err(ReadError::Header(
                "the final granule position claims more audio than the packets hold",
            ));
        }
        if keep < released {
            return Err(ReadError::Header(
                "the final granule position cuts audio of pages before the last",
            ));
        }
        // keep - released <= page_pcm.len() by the two checks above.
        self.page_pcm.truncate((keep - released) as usize);
        Ok(())
    }
}

/// The length of the page at the start of `b`, or None while it is incomplete.
fn page_len(b: &[u8], offset: u64) -> Result<Option<usize>, ReadError> {
    let magic = &b[..b.len().min(4)];
    if !b"OggS".starts_with(magic) || b.len() > 4 && b[4] != 0 {
        return Err(ReadError::NotAPage { offset });
    }
    if b.len() < PAGE_HEADER_BYTES {
        return Ok(None);
    }
    let segments = usize::from(b[26]);
    if b.len() < PAGE_HEADER_BYTES + segments {
        return Ok(None);
    }
    let body: usize = b[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + segments]
        .iter()
        .map(|&l| usize::from(l))
        .sum();
    let len = PAGE_HEADER_BYTES + segments + body;
    Ok(if b.len() < len { None } else { Some(len) })
}

fn parse_head(p: &[u8]) -> Result<OpusHead, ReadError> {
    if p.len() < 19 || &p[..8] != b"OpusHead" {
        return Err(ReadError::Header("the first packet is not OpusHead"));
    }
    let head = OpusHead {
        version: p[8],
        channels: p[9],
        pre_skip: u16::from_le_bytes([p[10], p[11]]),
        input_sample_rate: u32::from_le_bytes([p[12], p[13], p[14], p[15]]),
        output_gain: i16::from_le_bytes([p[16], p[17]]),
        mapping_family: p[18],
    };
    if head.version >> 4 != 0 {
        return Err(ReadError::Header("OpusHead version is not 0.x"));
    }
    if head.channels != 1 {
        return Err(ReadError::Header("OpusHead channel count is not 1 (mono)"));
    }
    if head.mapping_family != 0 || p.len() != 19 {
        return Err(ReadError::Header(
            "OpusHead channel mapping family is not 0",
        ));
    }
    Ok(head)
}

fn parse_tags(p: &[u8]) -> Result<String, ReadError> {
    const BAD: ReadError = ReadError::Header("the second packet is not a valid OpusTags");
    if p.len() < 16 || &p[..8] != b"OpusTags" {
        return Err(BAD);
    }
    let u32_at = |at: usize| -> Result<usize, ReadError> {
        let b = p.get(at..at.checked_add(4).ok_or(BAD)?).ok_or(BAD)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let vendor_len = u32_at(8)?;
    let mut at = 12usize.checked_add(vendor_len).ok_or(BAD)?;
    let vendor = p.get(12..at).ok_or(BAD)?;
    let vendor = String::from_utf8(vendor.to_vec()).map_err(|_| BAD)?;
    let comments = u32_at(at)?;
    at += 4;
    for _ in 0..comments {
        let len = u32_at(at)?;
        at = at
            .checked_add(4)
            .and_then(|a| a.checked_add(len))
            .ok_or(BAD)?;
        if at > p.len() {
            return Err(BAD);
        }
    }
    Ok(vendor)
}
