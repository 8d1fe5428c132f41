//! The reader against streams made here with libopus and a small Ogg writer of the tests' own
//! (the emulator cannot use the client's writer: the client depends on the emulator), intact,
//! split in every way, and broken in every way a strict server must refuse.

use super::*;

/// 48 kHz samples per 20 ms frame.
const FRAME_48K: u64 = 960;
const FRAMES_PER_PAGE: usize = 5;

/// One Ogg page holding `packets` whole (each under 255 * 255 bytes).
pub(crate) fn page(
    flags: u8,
    granule: u64,
    serial: u32,
    sequence: u32,
    packets: &[&[u8]],
) -> Vec<u8> {
    let mut lacing = Vec::new();
    let mut body = Vec::new();
    for p in packets {
        let mut left = p.len();
        while left >= 255 {
            lacing.push(255u8);
            left -= 255;
        }
        lacing.push(left as u8);
        body.extend_from_slice(p);
    }
    assert!(lacing.len() <= 255, "too many segments for one page");
    let mut page = Vec::with_capacity(27 + lacing.len() + body.len());
    page.extend_from_slice(b"OggS");
    page.push(0);
    page.push(flags);
    page.extend_from_slice(&granule.to_le_bytes());
    page.extend_from_slice(&serial.to_le_bytes());
    page.extend_from_slice(&sequence.to_le_bytes());
    page.extend_from_slice(&[0; 4]);
    page.push(lacing.len() as u8);
    page.extend_from_slice(&lacing);
    page.extend_from_slice(&body);
    let crc = ogg_crc(&page);
    page[22..26].copy_from_slice(&crc.to_le_bytes());
    page
}

/// An `OpusHead` packet.
pub(crate) fn head_packet(channels: u8, pre_skip: u16, rate: u32) -> Vec<u8> {
    let mut p = b"OpusHead".to_vec();
    p.push(1);
    p.push(channels);
    p.extend_from_slice(&pre_skip.to_le_bytes());
    p.extend_from_slice(&rate.to_le_bytes());
    p.extend_from_slice(&0i16.to_le_bytes());
    p.push(0);
    p
}

/// An `OpusTags` packet with a vendor string and no comments.
pub(crate) fn tags_packet() -> Vec<u8> {
    let vendor = b"emulator tests";
    let mut p = b"OpusTags".to_vec();
    p.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    p.extend_from_slice(vendor);
    p.extend_from_slice(&0u32.to_le_bytes());
    p
}

/// A whole Ogg Opus stream of `pcm` (mono at `rate`), one page per element: OpusHead,
/// OpusTags, then pages of five 20 ms packets, the last flagged end of stream with the
/// granule position that trims the padding.
pub(crate) fn stream(pcm: &[i16], rate: u32, serial: u32) -> Vec<Vec<u8>> {
    let mut enc = opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip).unwrap();
    enc.set_bitrate(opus::Bitrate::Bits(24_000)).unwrap();
    let lookahead = enc.get_lookahead().unwrap() as usize;
    let ratio = (48_000 / rate) as usize;
    let pre_skip = (lookahead * ratio) as u16;
    let frame = rate as usize / 50;
    let mut pages = vec![
        page(FLAG_BOS, 0, serial, 0, &[&head_packet(1, pre_skip, rate)]),
        page(0, 0, serial, 1, &[&tags_packet()]),
    ];
    // The input plus silence until the lookahead has come out, in whole frames.
    let mut input = pcm.to_vec();
    let total = (pcm.len() + lookahead).div_ceil(frame) * frame;
    input.resize(total, 0);
    let packets: Vec<Vec<u8>> = input
        .chunks(frame)
        .map(|f| enc.encode_vec(f, 4000).unwrap())
        .collect();
    let chunks: Vec<&[Vec<u8>]> = packets.chunks(FRAMES_PER_PAGE).collect();
    let mut frames = 0u64;
    for (i, chunk) in chunks.iter().enumerate() {
        frames += chunk.len() as u64;
        let last = i + 1 == chunks.len();
        let granule = if last {
            u64::from(pre_skip) + (pcm.len() * ratio) as u64
        } else {
            frames * FRAME_48K
        };
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        let flags = if last { FLAG_EOS } else { 0 };
        pages.push(page(flags, granule, serial, pages.len() as u32, &refs));
    }
    pages
}

/// A voice-like test signal: two tones under a slow envelope, with pauses.
pub(crate) fn signal(rate: u32, ms: u64) -> Vec<i16> {
    let n = (u64::from(rate) * ms / 1000) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let env = (std::f64::consts::PI * t * 1.5).sin().abs();
            let s = (2.0 * std::f64::consts::PI * 220.0 * t).sin() * 0.6
                + (2.0 * std::f64::consts::PI * 660.0 * t).sin() * 0.3;
            (s * env * 12_000.0) as i16
        })
        .collect()
}

/// Normalised cross-correlation at the best lag in ±`max_lag` samples.
fn correlation(a: &[i16], b: &[i16], max_lag: usize) -> f64 {
    let mut best = f64::MIN;
    for lag in 0..=2 * max_lag {
        let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
        for (i, &x) in a.iter().enumerate() {
            let j = i as isize + lag as isize - max_lag as isize;
            let Some(&y) = usize::try_from(j).ok().and_then(|j| b.get(j)) else {
                continue;
            };
            let (x, y) = (f64::from(x), f64::from(y));
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        if aa > 0.0 && bb > 0.0 {
            best = best.max(ab / (aa * bb).sqrt());
        }
    }
    best
}

fn read_all(pages: &[Vec<u8>]) -> Result<Vec<i16>, ReadError> {
    OggOpusReader::decode_all(&pages.concat(), 16_000)
}

#[test]
fn crc_matches_the_ogg_check_value() {
    // CRC-32/MPEG-2 without its initial inversion and final XOR: the Ogg variant's check
    // value over "123456789".
    assert_eq!(ogg_crc(b"123456789"), 0x89a1_897f);
}

#[test]
fn a_stream_decodes_to_its_source_trimmed_to_the_sample() {
    for rate in [16_000, 8_000] {
        let source = signal(rate, 1_530);
        let pages = stream(&source, rate, 42);
        let mut reader = OggOpusReader::new(rate).expect_input_rate(rate);
        reader.push(&pages.concat()).expect("stream reads");
        reader.finish().expect("stream ends");
        assert_eq!(reader.serial(), Some(42));
        assert_eq!(reader.vendor(), Some("emulator tests"));
        assert_eq!(reader.pages(), pages.len() as u64);
        let pcm = reader.take_pcm();
        assert_eq!(pcm.len(), source.len(), "{rate} Hz: pre-skip and end trim");
        assert_eq!(reader.decoded_samples(), source.len() as u64);
        let c = correlation(&source, &pcm, 8);
        assert!(c > 0.9, "{rate} Hz: correlation {c}");
    }
}

#[test]
fn pages_split_anyhow_or_together_decode_the_same() {
    let pages = stream(&signal(16_000, 700), 16_000, 7);
    let whole = read_all(&pages).unwrap();
    let bytes = pages.concat();
    for chunk in [1, 7, 26, 27, 28, 300, 1000] {
        let mut reader = OggOpusReader::new(16_000);
        let mut pcm = Vec::new();
        for piece in bytes.chunks(chunk) {
            reader.push(piece).expect("piece reads");
            pcm.extend(reader.take_pcm());
        }
        reader.finish().expect("ends");
        assert_eq!(pcm, whole, "chunks of {chunk} bytes");
    }
    // A page and a half, then the rest with the next page: partial pages wait.
    let mut reader = OggOpusReader::new(16_000);
    let split = pages[0].len() + pages[1].len() / 2;
    reader.push(&bytes[..split]).unwrap();
    assert!(reader.has_partial_page());
    assert!(reader.head().is_some() && reader.vendor().is_none());
    reader.push(&bytes[split..]).unwrap();
    reader.finish().unwrap();
    assert_eq!(reader.take_pcm(), whole);
}

#[test]
fn audio_comes_out_page_by_page() {
    let source = signal(16_000, 1_000);
    let pages = stream(&source, 16_000, 1);
    let mut reader = OggOpusReader::new(16_000);
    reader.push(&pages[..3].concat()).unwrap();
    // The first audio page: five 20 ms packets, less the pre-skip.
    let first = reader.take_pcm();
    let pre_skip = usize::from(reader.head().unwrap().pre_skip) / 3;
    assert_eq!(first.len(), 5 * 320 - pre_skip);
    assert!(reader.take_pcm().is_empty(), "taken once");
}

#[test]
fn the_page_log_holds_every_page_only_when_asked_for() {
    let pages = stream(&signal(16_000, 1_000), 16_000, 5);
    let mut plain = OggOpusReader::new(16_000);
    plain.push(&pages.concat()).unwrap();
    assert!(plain.page_log().is_empty(), "no log unless asked for");
    let mut reader = OggOpusReader::new(16_000).keep_page_log();
    // Pushed in pieces that end inside pages: a page is logged once, when whole.
    for piece in pages.concat().chunks(100) {
        reader.push(piece).unwrap();
    }
    reader.finish().unwrap();
    let log = reader.page_log();
    assert_eq!(log.len(), pages.len());
    for (i, (info, page)) in log.iter().zip(&pages).enumerate() {
        assert_eq!(info.sequence, i as u32);
        assert_eq!(info.serial, 5);
        assert_eq!(info.bytes, page.len());
        let granule = u64::from_le_bytes(page[6..14].try_into().unwrap());
        assert_eq!(info.granule, granule, "page {i}");
    }
    assert_eq!((log[0].flags, log[0].packets), (FLAG_BOS, 1));
    assert_eq!(log[2].packets, FRAMES_PER_PAGE);
    assert_eq!(log.last(), reader.last_page());
    assert_eq!(
        log.iter().skip(2).map(|p| p.packets as u64).sum::<u64>(),
        reader.audio_packets()
    );
}

/// Feeds `bytes` and returns the error, checking that the stream stays refused.
fn refused(bytes: &[u8]) -> ReadError {
    let mut reader = OggOpusReader::new(16_000).expect_input_rate(16_000);
    let e = reader.push(bytes).expect_err("a broken stream is refused");
    assert!(reader.is_refused());
    assert!(reader.push(&[]).is_err(), "refused for good");
    assert!(reader.finish().is_err());
    e
}

#[test]
fn broken_streams_are_refused_with_the_reason() {
    let pages = stream(&signal(16_000, 600), 16_000, 5);
    let all = pages.concat();

    let mut bad_crc = pages.clone();
    let last = bad_crc[3].len() - 1;
    bad_crc[3][last] ^= 0x40;
    assert!(matches!(
        refused(&bad_crc.concat()),
        ReadError::Crc { sequence: 3, .. }
    ));

    assert!(matches!(
        refused(b"RIFF\x24\x00\x00\x00WAVEfmt "),
        ReadError::NotAPage { offset: 0 }
    ));
    let mut garbage_after = all[..pages[0].len() + pages[1].len()].to_vec();
    garbage_after.extend_from_slice(&[0x55; 40]);
    assert!(matches!(
        refused(&garbage_after),
        ReadError::NotAPage { .. }
    ));
    let mut version = pages[0].clone();
    version[4] = 1;
    assert!(matches!(
        refused(&version),
        ReadError::NotAPage { offset: 0 }
    ));

    // Audio before the headers: the first page is not flagged, or holds no OpusHead.
    assert!(matches!(refused(&pages[2]), ReadError::Bos { sequence: 2 }));
    let audio_first = page(FLAG_BOS, 0, 5, 0, &[&[0xfc, 0xff, 0xfe]]);
    assert!(matches!(refused(&audio_first), ReadError::Header(_)));
    // OpusTags skipped: the first audio packet is not OpusTags.
    let mut no_tags = pages[0].clone();
    no_tags.extend_from_slice(&page(0, 4800, 5, 1, &[&[0xfc, 0xff, 0xfe]]));
    assert!(matches!(refused(&no_tags), ReadError::Header(_)));

    for (what, head) in [
        ("stereo", head_packet(2, 312, 16_000)),
        ("version 16", {
            let mut h = head_packet(1, 312, 16_000);
            h[8] = 16;
            h
        }),
        ("truncated", head_packet(1, 312, 16_000)[..15].to_vec()),
    ] {
        let p = page(FLAG_BOS, 0, 5, 0, &[&head]);
        assert!(matches!(refused(&p), ReadError::Header(_)), "{what}");
    }
    let wrong_rate = page(FLAG_BOS, 0, 5, 0, &[&head_packet(1, 312, 8_000)]);
    assert!(matches!(
        refused(&wrong_rate),
        ReadError::InputRate {
            expected: 16_000,
            found: 8_000
        }
    ));

    // A second beginning of stream: another stream's headers in the same session.
    let second = stream(&signal(16_000, 200), 16_000, 6);
    let mut two = all[..pages[0].len() + pages[1].len() + pages[2].len()].to_vec();
    two.extend_from_slice(&second[0]);
    assert!(matches!(
        refused(&two),
        ReadError::Serial {
            expected: 5,
            found: 6
        }
    ));
    let mut rebos = pages.clone();
    rebos[2] = page(FLAG_BOS, 4800, 5, 2, &[&[0xfc, 0xff, 0xfe]]);
    assert!(matches!(
        refused(&rebos[..3].concat()),
        ReadError::Bos { sequence: 2 }
    ));

    // Sequence gap, repeat.
    let gap = [pages[0].clone(), pages[1].clone(), pages[3].clone()].concat();
    assert!(matches!(
        refused(&gap),
        ReadError::Sequence {
            expected: 2,
            found: 3
        }
    ));
    let repeat = [pages[0].clone(), pages[1].clone(), pages[1].clone()].concat();
    assert!(matches!(
        refused(&repeat),
        ReadError::Sequence {
            expected: 2,
            found: 1
        }
    ));

    // Audio after the end of stream.
    let mut after = all.clone();
    after.extend_from_slice(&page(
        0,
        u64::MAX / 2,
        5,
        pages.len() as u32,
        &[&[0xfc, 0xff, 0xfe]],
    ));
    let mut reader = OggOpusReader::new(16_000);
    assert!(matches!(reader.push(&after), Err(ReadError::AfterEos)));
    assert!(reader.is_ended());
}

#[test]
fn hostile_granule_positions_and_packets_are_refused() {
    let pages = stream(&signal(16_000, 600), 16_000, 9);
    let n = pages.len();
    let headers = pages[..2].concat();
    let packets = |s: &[u8]| -> Vec<Vec<u8>> {
        // Re-reads a page's packets (all shorter than 255 bytes at this bitrate).
        let segs = s[26] as usize;
        let mut at = 27 + segs;
        s[27..27 + segs]
            .iter()
            .map(|&l| {
                let p = s[at..at + l as usize].to_vec();
                at += l as usize;
                p
            })
            .collect()
    };
    let rebuilt = |flags, granule, seq, pk: &[Vec<u8>]| {
        let refs: Vec<&[u8]> = pk.iter().map(Vec::as_slice).collect();
        page(flags, granule, 9, seq, &refs)
    };
    // Going backwards.
    let p2 = packets(&pages[2]);
    let p3 = packets(&pages[3]);
    let back = [
        headers.clone(),
        rebuilt(0, 9_600, 2, &p2),
        rebuilt(0, 4_800, 3, &p3),
    ]
    .concat();
    assert!(matches!(
        refused(&back),
        ReadError::GranuleBackwards { sequence: 3, .. }
    ));
    // A final granule position claiming more than the packets hold, or u64::MAX (-1).
    let body = pages[2..n - 1].concat();
    let last = packets(&pages[n - 1]);
    let ending = |granule| {
        [
            headers.clone(),
            body.clone(),
            rebuilt(FLAG_EOS, granule, n as u32 - 1, &last),
        ]
        .concat()
    };
    for granule in [u64::MAX, 10_000_000] {
        assert!(
            matches!(refused(&ending(granule)), ReadError::Header(_)),
            "final granule {granule}"
        );
    }
    assert!(matches!(
        refused(&ending(4_801)),
        ReadError::GranuleBackwards { .. }
    ));
    // Earlier pages that understate their audio (granule 0 is not going backwards), and a final
    // granule position that would cut into their audio, or lies below the pre-skip.
    let pre_skip = u64::from(u16::from_le_bytes([pages[0][38], pages[0][39]]));
    let understated: Vec<u8> = (2..n - 1)
        .flat_map(|i| rebuilt(0, 0, i as u32, &packets(&pages[i])))
        .collect();
    for granule in [pre_skip + 300, pre_skip - 1] {
        let bytes = [
            headers.clone(),
            understated.clone(),
            rebuilt(FLAG_EOS, granule, n as u32 - 1, &last),
        ]
        .concat();
        assert!(
            matches!(refused(&bytes), ReadError::Header(_)),
            "final granule {granule}"
        );
    }
    // An empty audio packet (libopus would invent audio for it).
    let empty = [headers.clone(), rebuilt(0, 960, 2, &[Vec::new()])].concat();
    assert!(matches!(refused(&empty), ReadError::BadPacket(_)));
    // A packet libopus refuses: a code 3 packet claiming 63 frames of 60 ms.
    let bad = [headers.clone(), rebuilt(0, 960, 2, &[vec![0xfb, 0x3f]])].concat();
    assert!(matches!(refused(&bad), ReadError::Decode(_)));
    // A continuation flag with nothing open.
    let mut cont = rebuilt(0, 4_800, 2, &p2);
    cont[5] = 1;
    let crc_free = {
        cont[22..26].fill(0);
        let c = ogg_crc(&cont);
        cont[22..26].copy_from_slice(&c.to_le_bytes());
        cont
    };
    assert!(matches!(
        refused(&[headers, crc_free].concat()),
        ReadError::Continuation { sequence: 2 }
    ));
}

#[test]
fn a_stream_without_end_is_unfinished_but_its_audio_counts() {
    let pages = stream(&signal(16_000, 600), 16_000, 3);
    let mut reader = OggOpusReader::new(16_000);
    reader.push(&pages[..pages.len() - 1].concat()).unwrap();
    assert!(matches!(reader.finish(), Err(ReadError::Unfinished(_))));
    assert!(!reader.take_pcm().is_empty());
    let mut reader = OggOpusReader::new(16_000);
    reader.push(&pages.concat()[..100]).unwrap();
    assert!(matches!(reader.finish(), Err(ReadError::Unfinished(_))));
}

#[test]
fn push_each_hands_out_one_page_at_a_time_and_keeps_nothing() {
    let pages = stream(&signal(16_000, 900), 16_000, 21);
    let whole = read_all(&pages).unwrap();
    let mut reader = OggOpusReader::new(16_000);
    let mut calls = Vec::new();
    reader
        .push_each(&pages.concat(), |pcm| calls.push(pcm.to_vec()))
        .expect("reads");
    reader.finish().expect("ends");
    assert_eq!(calls.len(), pages.len() - 2, "one call per audio page");
    assert_eq!(calls.concat(), whole);
    assert!(reader.pcm().is_empty(), "push_each keeps nothing");

    // Many pages of 255 one-byte packets (each a 60 ms frame with no data: libopus conceals
    // it) in one push: each page's audio comes out on its own, never all of them at once.
    let frame_60ms: &[u8] = &[0x18];
    let mut bomb = pages[..2].concat();
    for seq in 0..40u32 {
        let packets = vec![frame_60ms; 255];
        let granule = u64::from(seq + 1) * 255 * 2_880;
        bomb.extend_from_slice(&page(0, granule, 21, seq + 2, &packets));
    }
    let mut reader = OggOpusReader::new(16_000);
    let (mut largest, mut total) = (0usize, 0usize);
    reader
        .push_each(&bomb, |pcm| {
            largest = largest.max(pcm.len());
            total += pcm.len();
        })
        .expect("valid, if silly, pages");
    assert!(largest <= 255 * 960, "one page's audio at most: {largest}");
    assert!(
        total > 30 * largest,
        "{total} samples in {largest}-sample pieces"
    );
}
