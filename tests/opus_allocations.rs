//! `OpusStream::push_pcm` allocates nothing per chunk once its buffers have grown: a global
//! allocator counts this thread's heap allocations (Rust's; libopus itself encodes on the
//! stack). Counts, not times. The pages are checked too, so a path that skipped the work
//! could not pass.
#![cfg(feature = "opus")]

use qwen_asr_realtime::opus::{OpusConfig, OpusStream};

mod counting_alloc;
use counting_alloc::allocations_here;

#[test]
fn push_pcm_allocates_nothing_per_chunk_after_warm_up() {
    // Uneven 70 ms chunks of a tone with a changing level: frames and pages are cut across
    // chunk boundaries, and VBR packets vary in size.
    let chunk_samples = 1_120;
    let chunks: Vec<Vec<i16>> = (0..8)
        .map(|k| {
            (0..chunk_samples)
                .map(|i| {
                    let t = i as f64 / 16_000.0;
                    ((t * 440.0 * std::f64::consts::TAU).sin() * 2_000.0 * (k + 1) as f64) as i16
                })
                .collect()
        })
        .collect();
    let mut stream = OpusStream::new(&OpusConfig::default(), 16_000, 1).unwrap();
    let (mut pages, mut audio_samples, mut bytes) = (0u64, 0u64, 0u64);
    let mut push = |stream: &mut OpusStream, i: usize| {
        let out = stream.push_pcm(&chunks[i % chunks.len()]).unwrap();
        for page in out.iter() {
            pages += 1;
            audio_samples += u64::from(page.audio_samples());
            bytes += page.bytes().len() as u64;
            assert_eq!(&page.bytes()[..4], b"OggS");
        }
    };
    const WARM_UP: usize = 100;
    const COUNTED: usize = 1_000;
    for i in 0..WARM_UP {
        push(&mut stream, i);
    }
    let before = allocations_here();
    for i in WARM_UP..WARM_UP + COUNTED {
        push(&mut stream, i);
    }
    let counted = allocations_here() - before;
    assert_eq!(counted, 0, "allocations in {COUNTED} chunks after warm-up");
    // 1,100 chunks of 70 ms: 770 pages of 100 ms, all of it on pages.
    assert_eq!(pages, 770);
    assert_eq!(audio_samples, ((WARM_UP + COUNTED) * chunk_samples) as u64);
    assert_eq!(stream.unpaged_samples(), 0);
    assert!(bytes > 770 * 100, "pages carry audio: {bytes} bytes");
}
