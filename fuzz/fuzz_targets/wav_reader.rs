//! `WavReader` on arbitrary bytes: the first 4 bytes choose the read sizes, the source's short
//! reads, interruptions and an I/O error; the rest is the file. The first 10 bytes are also
//! parameters for `wav::header`, whose output must read back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwen_asr_realtime_fuzz::{check_wav, check_wav_header, TrackingAlloc};

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc;

fuzz_target!(|data: &[u8]| {
    check_wav(data);
    if let Some(p) = data.get(..10) {
        check_wav_header(
            u32::from_le_bytes([p[0], p[1], p[2], p[3]]),
            u16::from_le_bytes([p[4], p[5]]),
            u32::from_le_bytes([p[6], p[7], p[8], p[9]]),
        );
    }
});
