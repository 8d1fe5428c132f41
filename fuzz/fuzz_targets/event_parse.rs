//! `Event::parse` on arbitrary text (the input, lossily decoded) and on JSON built from the
//! input (known `type` values, known and random fields, any value types, deep nesting).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwen_asr_realtime_fuzz::{check_event_bytes, check_event_structured, TrackingAlloc};

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc;

fuzz_target!(|data: &[u8]| {
    check_event_bytes(data);
    check_event_structured(data);
});
