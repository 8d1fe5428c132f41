//! Ogg pages (RFC 3533), just the writing side the uplink needs.
//!
//! A page is a 27-byte header, a segment table (one "lacing value" per 255-byte segment of the
//! packets it carries), and the packets' bytes. A packet of `n` bytes takes `n / 255` segments of
//! 255 followed by one of `n % 255` (so a packet of exactly 255 bytes ends with a 0), which is how
//! a reader finds where one packet ends and the next begins. Every page this writer makes ends on
//! a packet boundary: no packet is split across pages, so the "continued" flag is never set.
//!
//! Header layout (all integers little-endian):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | capture pattern `OggS` |
//! | 4 | 1 | stream structure version, 0 |
//! | 5 | 1 | header type: 0x01 continued packet, 0x02 beginning of stream, 0x04 end of stream |
//! | 6 | 8 | granule position (codec-defined; Opus: 48 kHz samples) |
//! | 14 | 4 | bitstream serial number |
//! | 18 | 4 | page sequence number, from 0 per logical stream |
//! | 22 | 4 | CRC-32 of the whole page with this field zeroed |
//! | 26 | 1 | number of segments (0..=255) |
//! | 27 | n | segment table |

/// Header type flag: the page's first packet continues one from the previous page.
pub const FLAG_CONTINUED: u8 = 0x01;
/// Header type flag: first page of a logical stream.
pub const FLAG_BOS: u8 = 0x02;
/// Header type flag: last page of a logical stream.
pub const FLAG_EOS: u8 = 0x04;

/// Bytes of a page header before the segment table.
pub const HEADER_BYTES: usize = 27;
/// Most segments one page can list.
pub const MAX_SEGMENTS: usize = 255;

/// CRC-32 of Ogg: polynomial 0x04c11db7 applied MSB first ("direct", not bit-reflected like
/// zlib's), initial value 0, no final XOR. The check value of `b"123456789"` is 0x89a1897f.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32_update(0, bytes)
}

/// Continues a [`crc32`] over more bytes.
pub fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = (crc << 8) ^ CRC_TABLE[((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

/// The byte-at-a-time table of [`crc32`], built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04c1_1db7
            } else {
                r << 1
            };
            bit += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
};

/// The lacing values a packet of `len` bytes needs.
pub fn segments_for(len: usize) -> usize {
    len / 255 + 1
}

/// Collects whole packets into one page and writes it out.
///
/// Holds its buffers between pages, so a stream that keeps its packets and pages below the
/// sizes seen so far does not allocate.
#[derive(Debug)]
pub struct PageBuilder {
    serial: u32,
    sequence: u32,
    lacing: Vec<u8>,
    body: Vec<u8>,
}

impl PageBuilder {
    /// A builder for the logical stream `serial`, whose next page gets sequence number 0.
    pub fn new(serial: u32) -> Self {
        PageBuilder {
            serial,
            sequence: 0,
            lacing: Vec::with_capacity(MAX_SEGMENTS),
            body: Vec::new(),
        }
    }

    /// Makes room for pages of up to `body_bytes` of packets, so that they do not allocate.
    pub fn reserve(&mut self, body_bytes: usize) {
        self.body
            .reserve(body_bytes.saturating_sub(self.body.len()));
    }

    /// The sequence number the next page will get.
    pub fn next_sequence(&self) -> u32 {
        self.sequence
    }

    /// Segments the pending packets take.
    pub fn segments(&self) -> usize {
        self.lacing.len()
    }

    /// True when a packet of `len` bytes still fits on the pending page.
    pub fn fits(&self, len: usize) -> bool {
        self.lacing.len() + segments_for(len) <= MAX_SEGMENTS
    }

    /// True when no packet is pending.
    pub fn is_empty(&self) -> bool {
        self.lacing.is_empty()
    }

    /// Adds a whole packet to the pending page. The caller checks [`fits`](Self::fits) first;
    /// a packet too large for any page (over 64,770 bytes) is a caller bug, never produced by an
    /// Opus encoder (at most 1,275 bytes per frame).
    pub fn push_packet(&mut self, packet: &[u8]) {
        debug_assert!(self.fits(packet.len()), "packet does not fit the page");
        let mut left = packet.len();
        while left >= 255 {
            self.lacing.push(255);
            left -= 255;
        }
        self.lacing.push(left as u8);
        self.body.extend_from_slice(packet);
    }

    /// Appends the pending packets as one page to `out` with the given header type flags and
    /// granule position, and starts a new empty page. Returns the page's length in bytes.
    pub fn write_page(&mut self, flags: u8, granule: u64, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(b"OggS");
        out.push(0);
        out.push(flags);
        out.extend_from_slice(&granule.to_le_bytes());
        out.extend_from_slice(&self.serial.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(self.lacing.len() as u8);
        out.extend_from_slice(&self.lacing);
        out.extend_from_slice(&self.body);
        let crc = crc32(&out[start..]);
        out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
        self.sequence = self.sequence.wrapping_add(1);
        self.lacing.clear();
        self.body.clear();
        out.len() - start
    }
}
