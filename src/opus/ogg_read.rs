//! A strict reader of one Ogg Opus logical stream (RFC 3533 pages, RFC 7845 mapping), decoding
//! it to PCM with libopus: what a test, or a server that behaves like the service, uses to check
//! what a client sent.
//!
//! Self-contained on purpose (std and the libopus bindings only, nothing from the client): a
//! checker that shared the writer's code would share its mistakes.
//!
//! Checks: the capture pattern and version of every page, its CRC, one serial for the whole
//! stream, page sequence numbers without gaps, the first page flagged beginning of stream and
//! holding only `OpusHead` (mono, mapping family 0), `OpusTags` next with no audio after it on
//! its page, no second beginning of stream, nothing after the end of stream, granule positions
//! that never go backwards, and packet continuation flags that match. Decodes the audio packets,
//! drops the pre-skip, and at the end of stream trims to the final granule position.

use std::fmt;

/// Page flag: the first packet continues from the previous page.
const FLAG_CONTINUED: u8 = 0x01;
/// Page flag: beginning of stream.
const FLAG_BOS: u8 = 0x02;
/// Page flag: end of stream.
const FLAG_EOS: u8 = 0x04;
/// Opus granule positions count 48 kHz samples.
const GRANULE_RATE_HZ: u64 = 48_000;
/// Largest decoded packet: 120 ms at 48 kHz.
const MAX_PACKET_SAMPLES: usize = 5_760;
/// A packet larger than this is not Opus (RFC 6716 allows at most 120 ms of 1,275-byte frames).
const MAX_PACKET_BYTES: usize = 61_440;

/// What is wrong with a stream. `sequence` is the page sequence number the reader expected.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadError {
    /// A page does not start with `OggS` (or its version is not 0).
    NotAPage { offset: u64 },
    /// A page's CRC does not match its bytes.
    Crc {
        sequence: u32,
        stored: u32,
        computed: u32,
    },
    /// The first page is not flagged beginning of stream, or a later one is.
    Bos { sequence: u32 },
    /// A page belongs to another logical stream.
    Serial { expected: u32, found: u32 },
    /// Page sequence numbers skip or repeat.
    Sequence { expected: u32, found: u32 },
    /// A page comes after the end of stream.
    AfterEos,
    /// A continued-packet flag does not match whether a packet was left open.
    Continuation { sequence: u32 },
    /// A header packet is malformed or out of place.
    Header(&'static str),
    /// A page's granule position is lower than an earlier one's.
    GranuleBackwards {
        sequence: u32,
        previous: u64,
        found: u64,
    },
    /// A packet grew beyond what Opus can produce.
    PacketTooLarge,
    /// libopus could not decode a packet.
    Decode(libopus::Error),
    /// The stream ended (or was closed) without an end-of-stream page, or with a partial page.
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
                write!(f, "page of stream {found} inside stream {expected}")
            }
            ReadError::Sequence { expected, found } => {
                write!(f, "page sequence {found}, expected {expected}")
            }
            ReadError::AfterEos => write!(f, "page after the end of stream"),
            ReadError::Continuation { sequence } => {
                write!(f, "page {sequence}: continued-packet flag does not match")
            }
            ReadError::Header(what) => write!(f, "bad Opus header: {what}"),
            ReadError::GranuleBackwards {
                sequence,
                previous,
                found,
            } => write!(
                f,
                "page {sequence}: granule position {found} after {previous}"
            ),
            ReadError::PacketTooLarge => write!(f, "packet too large for Opus"),
            ReadError::Decode(e) => write!(f, "Opus decode failed: {e}"),
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

/// CRC-32 as Ogg defines it: polynomial 0x04c11db7, MSB first, initial 0, no final XOR.
/// Bitwise rather than by table: this side favours being obviously right over speed.
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
    pub version: u8,
    pub channels: u8,
    pub pre_skip: u16,
    pub input_sample_rate: u32,
    pub output_gain: i16,
    pub mapping_family: u8,
}

/// One page as it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageInfo {
    pub flags: u8,
    pub granule: u64,
    pub serial: u32,
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

/// Reads one logical stream, fed in pieces of any size, and decodes it.
pub struct OggOpusReader {
    output_rate: u32,
    buf: Vec<u8>,
    consumed: u64,
    serial: Option<u32>,
    next_sequence: u32,
    last_granule: u64,
    state: State,
    open_packet: Vec<u8>,
    head: Option<OpusHead>,
    vendor: Option<String>,
    decoder: Option<libopus::Decoder>,
    /// Output samples still to drop for the pre-skip.
    skip_left: usize,
    pcm: Vec<i16>,
    pages: Vec<PageInfo>,
    packets: usize,
}

impl OggOpusReader {
    /// A reader that decodes to mono at `output_rate` Hz (8000, 12000, 16000, 24000 or 48000).
    pub fn new(output_rate: u32) -> Self {
        OggOpusReader {
            output_rate,
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
            pcm: Vec::new(),
            pages: Vec::new(),
            packets: 0,
        }
    }

    /// Reads all complete pages in what has arrived so far; a trailing partial page waits.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ReadError> {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while let Some(len) = self.page_len(&self.buf[at..], self.consumed + at as u64)? {
            let page = self.buf[at..at + len].to_vec();
            self.read_page(&page)?;
            at += len;
        }
        self.buf.drain(..at);
        self.consumed += at as u64;
        Ok(())
    }

    /// Checks that the stream ended properly: end of stream seen, no partial page left over.
    pub fn finish(&self) -> Result<(), ReadError> {
        if !self.buf.is_empty() {
            return Err(ReadError::Unfinished("a partial page is left over"));
        }
        if self.state != State::Ended {
            return Err(ReadError::Unfinished("no end-of-stream page"));
        }
        Ok(())
    }

    /// True when bytes of an incomplete page are waiting.
    pub fn has_partial_page(&self) -> bool {
        !self.buf.is_empty()
    }

    /// True once the end-of-stream page has been read.
    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// The identification header, once read.
    pub fn head(&self) -> Option<&OpusHead> {
        self.head.as_ref()
    }

    /// The vendor string of `OpusTags`, once read.
    pub fn vendor(&self) -> Option<&str> {
        self.vendor.as_deref()
    }

    /// The serial number of the stream, once its first page was read.
    pub fn serial(&self) -> Option<u32> {
        self.serial
    }

    /// The decoded audio so far, pre-skip dropped (and trimmed at the end of stream).
    pub fn pcm(&self) -> &[i16] {
        &self.pcm
    }

    /// The pages read so far.
    pub fn pages(&self) -> &[PageInfo] {
        &self.pages
    }

    /// Audio packets decoded so far.
    pub fn audio_packets(&self) -> usize {
        self.packets
    }

    /// The length of the page at the start of `b`, or None while it is incomplete.
    fn page_len(&self, b: &[u8], offset: u64) -> Result<Option<usize>, ReadError> {
        if b.len() < 4 {
            if !b"OggS".starts_with(b) {
                return Err(ReadError::NotAPage { offset });
            }
            return Ok(None);
        }
        if &b[..4] != b"OggS" || b.len() > 4 && b[4] != 0 {
            return Err(ReadError::NotAPage { offset });
        }
        if b.len() < 27 {
            return Ok(None);
        }
        let segments = b[26] as usize;
        if b.len() < 27 + segments {
            return Ok(None);
        }
        let body: usize = b[27..27 + segments].iter().map(|&l| l as usize).sum();
        let len = 27 + segments + body;
        Ok(if b.len() < len { None } else { Some(len) })
    }

    fn read_page(&mut self, page: &[u8]) -> Result<(), ReadError> {
        let flags = page[5];
        let granule = u64::from_le_bytes(page[6..14].try_into().unwrap_or([0; 8]));
        let serial = u32::from_le_bytes(page[14..18].try_into().unwrap_or([0; 4]));
        let sequence = u32::from_le_bytes(page[18..22].try_into().unwrap_or([0; 4]));
        let stored = u32::from_le_bytes(page[22..26].try_into().unwrap_or([0; 4]));
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

        let segments = page[26] as usize;
        let lacing = &page[27..27 + segments];
        let mut body = &page[27 + segments..];
        let in_audio = self.state == State::Audio;
        let mut completed = 0;
        let mut packet_ended = false;
        for (i, &l) in lacing.iter().enumerate() {
            let (seg, rest) = body.split_at(l as usize);
            body = rest;
            self.open_packet.extend_from_slice(seg);
            if self.open_packet.len() > MAX_PACKET_BYTES {
                return Err(ReadError::PacketTooLarge);
            }
            if l < 255 {
                let packet = std::mem::take(&mut self.open_packet);
                let last_on_page = i + 1 == lacing.len();
                self.packet(&packet, last_on_page)?;
                completed += 1;
                packet_ended = true;
            }
        }
        // A page on which no packet ends carries granule position -1 and sets no time.
        if packet_ended {
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
                    "header page with a nonzero granule position",
                ));
            }
        }
        if sequence == 0 && (completed != 1 || !self.open_packet.is_empty()) {
            return Err(ReadError::Header("the first page must hold OpusHead alone"));
        }
        self.pages.push(PageInfo {
            flags,
            granule,
            serial,
            sequence,
            packets: completed,
            bytes: page.len(),
        });
        if flags & FLAG_EOS != 0 {
            if !self.open_packet.is_empty() {
                return Err(ReadError::Unfinished("end of stream inside a packet"));
            }
            if self.state != State::Audio {
                return Err(ReadError::Header("end of stream before the headers ended"));
            }
            self.trim_to(granule)?;
            self.state = State::Ended;
        }
        Ok(())
    }

    fn packet(&mut self, packet: &[u8], last_on_page: bool) -> Result<(), ReadError> {
        match self.state {
            State::Head => {
                let head = parse_head(packet)?;
                self.decoder = Some(
                    libopus::Decoder::new(self.output_rate, libopus::Channels::Mono)
                        .map_err(ReadError::Decode)?,
                );
                self.skip_left = (u64::from(head.pre_skip) * u64::from(self.output_rate)
                    / GRANULE_RATE_HZ) as usize;
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
                let mut out = [0i16; MAX_PACKET_SAMPLES];
                let decoder = self
                    .decoder
                    .as_mut()
                    .ok_or(ReadError::Header("audio before OpusHead"))?;
                let n = decoder
                    .decode(packet, &mut out, false)
                    .map_err(ReadError::Decode)?;
                let skip = self.skip_left.min(n);
                self.skip_left -= skip;
                self.pcm.extend_from_slice(&out[skip..n]);
                self.packets += 1;
            }
            State::Ended => return Err(ReadError::AfterEos),
        }
        Ok(())
    }

    /// Cuts the decoded audio to what the final granule position says (end trimming).
    fn trim_to(&mut self, granule: u64) -> Result<(), ReadError> {
        let pre_skip = self.head.map(|h| u64::from(h.pre_skip)).unwrap_or(0);
        let audio_48k = granule.checked_sub(pre_skip).ok_or(ReadError::Header(
            "final granule position below the pre-skip",
        ))?;
        // In u128: the granule is the peer's number, and may be anything up to 2^64 - 1.
        let keep =
            u128::from(audio_48k) * u128::from(self.output_rate) / u128::from(GRANULE_RATE_HZ);
        if keep > self.pcm.len() as u128 {
            // Claiming more audio than the packets hold: refused here, as a strict server would.
            return Err(ReadError::Header("final granule position beyond the audio"));
        }
        self.pcm.truncate(keep as usize);
        Ok(())
    }
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
        return Err(ReadError::Header("not mono"));
    }
    if head.mapping_family != 0 || p.len() != 19 {
        return Err(ReadError::Header("channel mapping family is not 0"));
    }
    Ok(head)
}

fn parse_tags(p: &[u8]) -> Result<String, ReadError> {
    const BAD: ReadError = ReadError::Header("the second packet is not a valid OpusTags");
    if p.len() < 16 || &p[..8] != b"OpusTags" {
        return Err(BAD);
    }
    let u32_at = |at: usize| -> Result<usize, ReadError> {
        let b = p.get(at..at + 4).ok_or(BAD)?;
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
