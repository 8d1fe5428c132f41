//! The Ogg writer against known CRCs and the reference tools; `OpusStream` through the
//! emulator's strict reader (code of its own: a checker that shared the writer's code would
//! share its mistakes) and through `opusdec` (opus-tools, the Xiph reference decoder), which
//! these tests require on PATH.

use super::ogg::{self, PageBuilder};
use super::{OpusConfig, OpusError, OpusStream, Pages};
use qwen_asr_emulator::ogg_opus::{ogg_crc, OggOpusReader, ReadError};
use std::path::Path;

// The integration tests' comparison of a decode with its source and their runner of the
// reference tools (both std only), shared rather than copied.
#[path = "../../tests/common/opus_tools.rs"]
mod opus_tools;
#[path = "../../tests/common/signal.rs"]
mod signal;
use opus_tools::{opusdec_to_wav, opusinfo_is_clean, run_tool, Scratch};
use signal::assert_matches_source;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/audio/hello_16k.wav");

fn fixture() -> Vec<i16> {
    let mut r = crate::audio::wav::WavReader::open(FIXTURE).expect("open fixture");
    assert_eq!(r.spec().sample_rate, 16_000);
    let mut pcm = vec![0i16; r.len_samples().expect("length") as usize];
    let mut at = 0;
    while at < pcm.len() {
        let n = r.read_samples(&mut pcm[at..]).expect("read");
        assert!(n > 0, "fixture shorter than its header says");
        at += n;
    }
    pcm
}

/// Decodes an Ogg Opus file with the reference decoder at `rate` Hz, after checking it with
/// opusinfo.
fn opusdec(file: &Path, rate: u32) -> Vec<i16> {
    opusinfo_is_clean(file);
    let wav = file.with_extension("dec.wav");
    opusdec_to_wav(file, rate, &wav);
    let mut r = crate::audio::wav::WavReader::open(&wav).expect("opusdec wrote a WAV");
    assert_eq!(r.spec().sample_rate, rate);
    assert_eq!(r.spec().channels, 1);
    let mut pcm = Vec::new();
    let mut buf = [0i16; 4096];
    loop {
        let n = r.read_samples(&mut buf).expect("read decoded");
        if n == 0 {
            break;
        }
        pcm.extend_from_slice(&buf[..n]);
    }
    pcm
}

/// Adds each of `pages` to `appends` as an append of its own; returns the audio samples they
/// say they hold.
fn take_pages(pages: &Pages<'_>, appends: &mut Vec<Vec<u8>>) -> u64 {
    pages
        .iter()
        .map(|page| {
            appends.push(page.bytes().to_vec());
            u64::from(page.audio_samples())
        })
        .sum()
}

/// Everything one stream sends: the header pages, then the pages of `pcm` pushed in
/// `chunk`-sample pieces, then the final pages. Each element is one append.
fn encode(config: &OpusConfig, rate: u32, serial: u32, pcm: &[i16], chunk: usize) -> Vec<Vec<u8>> {
    let mut stream = OpusStream::new(config, rate, serial).expect("stream");
    let mut appends = Vec::new();
    // The headers hold no audio: counted all the same, so that a header claiming some shows.
    let mut audio_samples = take_pages(&stream.headers(), &mut appends);
    for piece in pcm.chunks(chunk) {
        audio_samples += take_pages(&stream.push_pcm(piece).expect("push"), &mut appends);
    }
    let last = stream.finish().expect("finish");
    audio_samples += take_pages(&last, &mut appends);
    assert!(last.get(last.len() - 1).expect("a final page").is_eos());
    assert_eq!(
        audio_samples,
        pcm.len() as u64,
        "the pages' audio adds up to what was pushed"
    );
    appends
}

fn write_file(path: &Path, appends: &[Vec<u8>]) {
    std::fs::write(path, appends.concat()).expect("write stream");
}

#[test]
fn ogg_crc_has_the_check_value_of_its_definition() {
    // CRC-32 with polynomial 0x04c11db7, MSB first, init 0, no final XOR: the catalogued check
    // value of "123456789" (zlib's reflected CRC-32 gives 0xcbf43926 instead).
    assert_eq!(ogg::crc32(b"123456789"), 0x89a1_897f);
    assert_eq!(ogg_crc(b"123456789"), 0x89a1_897f);
    assert_eq!(ogg::crc32(b""), 0);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    assert_eq!(
        ogg::crc32(&bytes),
        ogg_crc(&bytes),
        "table and bitwise CRC agree"
    );
    let (a, b) = bytes.split_at(1234);
    assert_eq!(ogg::crc32_update(ogg::crc32(a), b), ogg::crc32(&bytes));
}

#[test]
fn ogg_crc_matches_the_pages_opusenc_writes() {
    let scratch = Scratch::new("opusenc");
    let file = scratch.path("ref.opus");
    run_tool(
        "opusenc",
        &["--quiet".as_ref(), FIXTURE.as_ref(), file.as_os_str()],
    );
    let bytes = std::fs::read(&file).expect("opusenc output");
    let mut at = 0;
    let mut pages = 0;
    while at < bytes.len() {
        let p = &bytes[at..];
        assert_eq!(&p[..4], b"OggS");
        let segments = p[26] as usize;
        let len = 27
            + segments
            + p[27..27 + segments]
                .iter()
                .map(|&l| l as usize)
                .sum::<usize>();
        let mut page = p[..len].to_vec();
        let stored = u32::from_le_bytes(page[22..26].try_into().unwrap());
        page[22..26].fill(0);
        assert_eq!(ogg::crc32(&page), stored, "page {pages}");
        at += len;
        pages += 1;
    }
    assert!(pages > 3, "opusenc wrote {pages} pages");
    // And the reader takes the reference encoder's stream as a whole.
    let mut reader = OggOpusReader::new(16_000);
    reader.push(&bytes).expect("opusenc stream reads");
    reader.finish().expect("opusenc stream ends");
}

#[test]
fn pages_lace_packets_of_every_boundary_length() {
    let mut b = PageBuilder::new(0x1234_5678);
    let lens = [0usize, 1, 254, 255, 256, 510, 600];
    for &len in &lens {
        assert!(b.fits(len));
        b.push_packet(&vec![len as u8; len]);
    }
    let mut out = Vec::new();
    let n = b.write_page(ogg::FLAG_BOS, 42, &mut out);
    assert_eq!(n, out.len());
    let lacing: &[u8] = &[0, 1, 254, 255, 0, 255, 1, 255, 255, 0, 255, 255, 90];
    assert_eq!(out[26] as usize, lacing.len());
    assert_eq!(&out[27..27 + lacing.len()], lacing);
    assert_eq!(&out[..6], b"OggS\x00\x02");
    assert_eq!(u64::from_le_bytes(out[6..14].try_into().unwrap()), 42);
    assert_eq!(
        u32::from_le_bytes(out[14..18].try_into().unwrap()),
        0x1234_5678
    );
    assert_eq!(u32::from_le_bytes(out[18..22].try_into().unwrap()), 0);
    let body: usize = lens.iter().sum();
    assert_eq!(out.len(), 27 + lacing.len() + body);
    let stored = u32::from_le_bytes(out[22..26].try_into().unwrap());
    out[22..26].fill(0);
    assert_eq!(ogg_crc(&out), stored);
    // The next page continues the sequence and the builder starts empty.
    assert!(b.is_empty());
    assert_eq!(b.next_sequence(), 1);
    // 255 segments is the limit: 255 one-segment packets fit, the 256th does not.
    for _ in 0..255 {
        b.push_packet(&[7]);
    }
    assert!(!b.fits(1));
}

#[test]
fn stream_headers_are_rfc7845_and_alone_on_their_pages() {
    let stream = OpusStream::new(&OpusConfig::default(), 16_000, 99).expect("stream");
    let headers = stream.headers();
    assert_eq!(headers.len(), 2);
    let head = headers.get(0).unwrap();
    let tags = headers.get(1).unwrap();
    assert!(head.is_bos() && !tags.is_bos());
    assert_eq!((head.granule(), tags.granule()), (0, 0));
    assert_eq!((head.audio_ms(), tags.audio_ms()), (0, 0));
    let h = head.bytes();
    assert_eq!(h[26], 1, "OpusHead is the only packet of the first page");
    let packet = &h[28..];
    assert_eq!(packet.len(), 19);
    assert_eq!(&packet[..8], b"OpusHead");
    assert_eq!(packet[8], 1, "version");
    assert_eq!(packet[9], 1, "mono");
    let pre_skip = u16::from_le_bytes([packet[10], packet[11]]);
    assert_eq!(pre_skip, stream.pre_skip());
    assert_eq!(pre_skip, 312, "libopus 1.6 at 16 kHz: 6.5 ms of lookahead");
    assert_eq!(
        u32::from_le_bytes(packet[12..16].try_into().unwrap()),
        16_000
    );
    assert_eq!(&packet[16..19], &[0, 0, 0], "gain 0, mapping family 0");
    assert_eq!(
        u32::from_le_bytes(h[18..22].try_into().unwrap()),
        0,
        "sequence 0"
    );
    assert_eq!(
        u32::from_le_bytes(tags.bytes()[18..22].try_into().unwrap()),
        1
    );
    // The reader agrees.
    let mut reader = OggOpusReader::new(16_000);
    for page in headers.iter() {
        reader.push(page.bytes()).expect("header page");
    }
    assert_eq!(reader.head().unwrap().input_sample_rate, 16_000);
    assert!(reader.vendor().unwrap().contains("libopus"));
    assert_eq!(reader.serial(), Some(99));
}

#[test]
fn stream_round_trips_through_the_reader_one_whole_page_per_append() {
    let source = fixture();
    // Uneven pieces: frames and pages must be cut from them, not from the caller's chunks.
    let appends = encode(&OpusConfig::default(), 16_000, 1, &source, 1_234);
    let mut reader = OggOpusReader::new(16_000).keep_page_log();
    for (i, append) in appends.iter().enumerate() {
        reader.push(append).expect("page reads");
        assert!(
            !reader.has_partial_page(),
            "append {i} is not one whole page"
        );
        assert_eq!(
            reader.pages(),
            i as u64 + 1,
            "append {i} holds exactly one page"
        );
    }
    reader.finish().expect("stream ends with EOS");
    assert!(reader.is_ended());
    let pages = reader.page_log();
    assert_eq!(pages.len(), appends.len());
    let audio_packets: usize = pages[2..].iter().map(|p| p.packets).sum();
    assert_eq!(reader.audio_packets(), audio_packets as u64);
    // Whole 20 ms frames until the audio and the 104 samples of encoder lookahead are out.
    assert_eq!(audio_packets, (source.len() + 104).div_ceil(320));
    // 100 ms pages of 20 ms packets, granule positions in 48 kHz samples.
    assert_eq!(pages[2].packets, 5);
    assert_eq!(pages[2].granule, 4_800);
    assert_eq!(pages[3].granule, 9_600);
    let last = pages.last().unwrap();
    assert_eq!(
        last.granule,
        312 + source.len() as u64 * 3,
        "pre-skip + audio at 48 kHz"
    );
    assert_matches_source(reader.pcm(), &source, 16_000);
}

/// `flush` completes a short page with the frames encoded so far (the audio committed goes
/// out now), keeps a partial frame for the next push, and the stream stays one valid stream
/// whose pages still add up to what was pushed.
#[test]
fn flush_completes_a_short_page_and_keeps_the_partial_frame() {
    let source = fixture();
    let mut stream = OpusStream::new(&OpusConfig::default(), 16_000, 9).unwrap();
    let mut appends = Vec::new();
    // The headers hold no audio: counted all the same, so that a header claiming some shows.
    let mut audio_samples = take_pages(&stream.headers(), &mut appends);
    // 130 ms: one full page, one frame, and 10 ms that is no whole frame.
    let (first, rest) = source.split_at(2_080);
    audio_samples += take_pages(&stream.push_pcm(first).unwrap(), &mut appends);
    assert_eq!(appends.len(), 3);
    let flushed = stream.flush().unwrap();
    assert_eq!(flushed.len(), 1, "the page being filled");
    let short = flushed.get(0).unwrap();
    assert_eq!(
        short.audio_samples(),
        320,
        "its one whole frame, not the 10 ms after it"
    );
    assert_eq!(short.granule(), 6 * 960);
    audio_samples += u64::from(short.audio_samples());
    appends.push(short.bytes().to_vec());
    assert!(
        stream.flush().unwrap().is_empty(),
        "nothing more to complete"
    );
    audio_samples += take_pages(&stream.push_pcm(rest).unwrap(), &mut appends);
    audio_samples += take_pages(&stream.finish().unwrap(), &mut appends);
    assert_eq!(audio_samples, source.len() as u64);
    assert!(matches!(stream.flush(), Err(OpusError::Finished)));
    let mut reader = OggOpusReader::new(16_000).keep_page_log();
    for append in &appends {
        reader.push(append).unwrap();
    }
    reader.finish().unwrap();
    assert_eq!(reader.page_log()[3].packets, 1);
    assert_matches_source(reader.pcm(), &source, 16_000);
}

#[test]
fn opusdec_decodes_a_stream_back_to_the_source() {
    let source = fixture();
    let scratch = Scratch::new("plain");
    let file = scratch.path("plain.opus");
    write_file(
        &file,
        &encode(&OpusConfig::default(), 16_000, 7, &source, 1_600),
    );
    assert_matches_source(&opusdec(&file, 16_000), &source, 16_000);
}

#[test]
fn opusdec_decodes_both_streams_of_a_session_split_by_a_reconnect() {
    let source = fixture();
    // The first session ends after 2.37 s (mid-frame, mid-page); the second is a new logical
    // stream with its own serial, headers and granule positions from zero.
    let cut = 37_920;
    let (first, second) = source.split_at(cut);
    let config = OpusConfig::default();
    let a = encode(&config, 16_000, 0x0a0a_0a0a, first, 800);
    let b = encode(&config, 16_000, 0x0b0b_0b0b, second, 800);
    assert_eq!(
        u64::from_le_bytes(b[2][6..14].try_into().unwrap()),
        4_800,
        "the second stream's first audio page counts from zero"
    );
    let scratch = Scratch::new("reconnect");
    let (fa, fb, chained) = (
        scratch.path("a.opus"),
        scratch.path("b.opus"),
        scratch.path("ab.opus"),
    );
    write_file(&fa, &a);
    write_file(&fb, &b);
    write_file(&chained, &[a.concat(), b.concat()]);
    assert_matches_source(&opusdec(&fa, 16_000), first, 16_000);
    assert_matches_source(&opusdec(&fb, 16_000), second, 16_000);
    // Recorded back to back, the two are a chained Ogg file, which the reference decoder plays
    // as one: the whole source, in order.
    assert_matches_source(&opusdec(&chained, 16_000), &source, 16_000);
    // The reader takes each stream on its own and refuses the second one inside the first.
    let mut reader = OggOpusReader::new(16_000);
    reader.push(&a.concat()).expect("first stream");
    reader.finish().expect("first stream ends");
    assert!(matches!(reader.push(&b[0]), Err(ReadError::AfterEos)));
}

#[test]
fn opusdec_decodes_an_8khz_stream_and_other_frame_sizes() {
    let source = fixture();
    // 8 kHz: every other sample (the fixture has little energy above 4 kHz).
    let narrow: Vec<i16> = source.iter().step_by(2).copied().collect();
    let scratch = Scratch::new("narrow");
    let file = scratch.path("narrow.opus");
    write_file(
        &file,
        &encode(&OpusConfig::default(), 8_000, 3, &narrow, 333),
    );
    assert_matches_source(&opusdec(&file, 8_000), &narrow, 8_000);
    for (frame_ms, page_ms) in [(10, 20), (40, 200), (60, 960)] {
        let config = OpusConfig::default().frame_ms(frame_ms).page_ms(page_ms);
        let file = scratch.path(&format!("f{frame_ms}.opus"));
        write_file(&file, &encode(&config, 16_000, 4, &source, 1_000));
        assert_matches_source(&opusdec(&file, 16_000), &source, 16_000);
    }
}

#[test]
fn finish_pads_the_last_frame_and_says_how_much() {
    let mut stream = OpusStream::new(&OpusConfig::default(), 16_000, 5).expect("stream");
    // 137.5 ms: one 100 ms page, then 37.5 ms waiting (one whole frame and 280 samples).
    let pages = stream.push_pcm(&[100i16; 2_200]).expect("push");
    assert_eq!(pages.len(), 1);
    assert_eq!(pages.get(0).unwrap().audio_ms(), 100);
    assert_eq!(stream.unpaged_samples(), 600);
    let last = stream.finish().expect("finish");
    assert_eq!(last.len(), 1);
    let page = last.get(0).unwrap();
    assert!(page.is_eos());
    assert_eq!(page.audio_samples(), 600);
    assert_eq!(page.audio_ms(), 37, "rounded down");
    // The partial frame's 40 samples of silence, then a whole frame more: the encoder's 104
    // samples (6.5 ms) of lookahead do not fit in those 40.
    assert_eq!(last.padded_samples(), 40 + 320);
    assert_eq!(page.granule(), 312 + 2_200 * 3);
    assert_eq!(stream.unpaged_samples(), 0);
    assert!(matches!(
        stream.push_pcm(&[0; 10]),
        Err(OpusError::Finished)
    ));
    assert!(matches!(stream.finish(), Err(OpusError::Finished)));
    // An empty stream still ends with an EOS page that decodes to nothing.
    let mut empty = OpusStream::new(&OpusConfig::default(), 16_000, 6).expect("stream");
    let mut reader = OggOpusReader::new(16_000);
    for p in empty.headers().iter() {
        reader.push(p.bytes()).expect("header");
    }
    let last = empty.finish().expect("finish");
    assert_eq!(last.get(0).unwrap().audio_samples(), 0);
    reader
        .push(last.get(0).unwrap().bytes())
        .expect("final page");
    reader.finish().expect("ended");
    assert!(reader.pcm().is_empty());
}

#[test]
fn the_reader_refuses_broken_streams() {
    let source = fixture();
    let appends = encode(&OpusConfig::default(), 16_000, 11, &source[..16_000], 1_600);
    let read = |appends: &[Vec<u8>]| -> Result<(), ReadError> {
        let mut r = OggOpusReader::new(16_000);
        for a in appends {
            r.push(a)?;
        }
        r.finish()
    };
    read(&appends).expect("the intact stream reads");

    let mut flipped = appends.clone();
    flipped[3][40] ^= 0x10;
    assert!(matches!(
        read(&flipped),
        Err(ReadError::Crc { sequence: 3, .. })
    ));

    assert!(matches!(
        read(&appends[1..]),
        Err(ReadError::Bos { sequence: 1 })
    ));

    let mut gap = appends.clone();
    gap.remove(4);
    assert!(matches!(
        read(&gap),
        Err(ReadError::Sequence {
            expected: 4,
            found: 5
        })
    ));

    let other = encode(&OpusConfig::default(), 16_000, 12, &source[..16_000], 1_600);
    let mut mixed = appends.clone();
    mixed[3] = other[3].clone();
    assert!(matches!(
        read(&mixed),
        Err(ReadError::Serial {
            expected: 11,
            found: 12
        })
    ));

    assert!(matches!(
        read(&appends[..appends.len() - 1]),
        Err(ReadError::Unfinished(_))
    ));
    let mut cut = appends.clone();
    let last = cut.last_mut().unwrap();
    last.truncate(last.len() - 1);
    assert!(matches!(read(&cut), Err(ReadError::Unfinished(_))));

    let mut garbage = appends.clone();
    garbage[2] = b"not a page".to_vec();
    assert!(matches!(read(&garbage), Err(ReadError::NotAPage { .. })));
}

#[test]
fn config_ranges_are_checked() {
    assert!(OpusConfig::default().validate().is_ok());
    let bad = [
        (OpusConfig::default().bitrate_bps(5_999), "opus.bitrate_bps"),
        (
            OpusConfig::default().bitrate_bps(128_001),
            "opus.bitrate_bps",
        ),
        (OpusConfig::default().complexity(11), "opus.complexity"),
        (OpusConfig::default().frame_ms(30), "opus.frame_ms"),
        (OpusConfig::default().page_ms(110), "opus.page_ms"),
        (OpusConfig::default().page_ms(1_020), "opus.page_ms"),
    ];
    for (config, field) in bad {
        match OpusStream::new(&config, 16_000, 0) {
            Err(OpusError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert!(matches!(
        OpusStream::new(&OpusConfig::default(), 44_100, 0),
        Err(OpusError::UnsupportedSampleRate(44_100))
    ));
}

#[test]
fn the_reader_survives_any_corruption_without_panicking() {
    // The reader checks what clients send the emulator: every outcome must be Ok or an error.
    let source = fixture();
    let stream = encode(&OpusConfig::default(), 16_000, 21, &source[..8_000], 1_600).concat();
    // A fixed linear congruential sequence: the same mutations on every run.
    let mut seed = 0x2545_f491_u32;
    let mut next = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        seed
    };
    let (mut ok, mut refused, mut unchecked_ok) = (0, 0, 0);
    for _ in 0..2_000 {
        let mut bytes = stream.clone();
        for _ in 0..1 + next() % 3 {
            let at = next() as usize % bytes.len();
            bytes[at] = next() as u8;
        }
        if next() % 4 == 0 {
            bytes.truncate(next() as usize % bytes.len());
        }
        // Half the time the CRCs are made right again, so that the mutation reaches the
        // structure checks, the header parsers and the decoder behind them.
        let fixed = next() % 2 == 0;
        if fixed {
            fix_crcs(&mut bytes);
        }
        let mut r = OggOpusReader::new(16_000);
        // Pieces of random sizes, as appends might cut them.
        let mut rest = &bytes[..];
        let mut result = Ok(());
        while !rest.is_empty() && result.is_ok() {
            let n = (1 + next() as usize % 700).min(rest.len());
            result = r.push(&rest[..n]);
            rest = &rest[n..];
        }
        match (result.and_then(|()| r.finish()), fixed) {
            (Ok(()), true) => ok += 1,
            (Err(_), true) => refused += 1,
            (Ok(()), false) => unchecked_ok += 1,
            (Err(_), false) => {}
        }
    }
    // Without the CRC fix-up only a mutation that rewrites a byte with its own value reads;
    // with it, mutated audio decodes (to other audio) and mutated structure is refused.
    assert!(
        unchecked_ok < 20,
        "{unchecked_ok} corrupted streams passed the CRC"
    );
    assert!(ok > 0 && refused > 0, "{ok} read, {refused} refused");
}

/// Rewrites the CRC of every whole page in `bytes` to match its (mutated) contents.
fn fix_crcs(bytes: &mut [u8]) {
    let mut at = 0;
    while at + 27 <= bytes.len() && &bytes[at..at + 4] == b"OggS" {
        let segments = bytes[at + 26] as usize;
        if at + 27 + segments > bytes.len() {
            return;
        }
        let body: usize = bytes[at + 27..at + 27 + segments]
            .iter()
            .map(|&l| l as usize)
            .sum();
        let len = 27 + segments + body;
        if at + len > bytes.len() {
            return;
        }
        bytes[at + 22..at + 26].fill(0);
        let crc = ogg::crc32(&bytes[at..at + len]);
        bytes[at + 22..at + 26].copy_from_slice(&crc.to_le_bytes());
        at += len;
    }
}
