//! The replay buffer driven by arbitrary sequences of appends, commits, server events with
//! hostile offsets and item ids, loss reports and reconnects (see `check_replay`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwen_asr_realtime_fuzz::{check_replay, TrackingAlloc};

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc;

fuzz_target!(|data: &[u8]| {
    check_replay(data);
});
