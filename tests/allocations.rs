//! The hot path allocates nothing per chunk: a global allocator counts the heap allocations of
//! each thread, and the caller's thread is checked while it streams audio to the emulator.
//! Counts, not times, so the machine's load cannot move them. Every test here also checks
//! that the server got the audio, so a path that skipped the work could not pass.

mod common;

use common::*;
use qwen_asr_emulator::{Emulator, EmulatorConfig, TlsIdentity};
use qwen_asr_realtime::{ConnectParams, Conversation, ReconnectPolicy, SessionConfig};

mod counting_alloc;
use counting_alloc::allocations_here;

/// 100 ms of 16 kHz audio: the chunk the examples and the capture thread send.
const CHUNK: usize = 1600;
const WARM_UP: usize = 50;
const COUNTED: usize = 1000;

/// Streams `WARM_UP + COUNTED` chunks in a manual-mode session, then commits and ends it;
/// returns the allocations on this thread during the counted chunks.
fn allocations_for_counted_chunks(params: ConnectParams, emu: &Emulator) -> u64 {
    let conv = Conversation::start(params, &SessionConfig::manual()).unwrap();
    // Not silence: the emulator's digest must see each chunk's own bytes.
    let chunk: Vec<i16> = (0..CHUNK as i16).map(|i| i.wrapping_mul(37)).collect();
    for _ in 0..WARM_UP {
        conv.append_pcm(&chunk).unwrap();
    }
    let before = allocations_here();
    for _ in 0..COUNTED {
        conv.append_pcm(&chunk).unwrap();
    }
    let counted = allocations_here() - before;
    conv.commit().unwrap();
    conv.end_session(WAIT).unwrap();
    drop(conv);
    let sent: Vec<i16> = chunk.repeat(WARM_UP + COUNTED);
    assert_eq!(
        emu.sessions()[0].audio,
        digest(&sent),
        "the server got every chunk, in order"
    );
    counted
}

#[test]
fn appends_allocate_nothing_per_chunk() {
    let emu = start_emulator(EmulatorConfig::default());
    // The kernel's send buffer left to autotune, so that the socket always has room: see
    // the test below for the capped buffer.
    let n = allocations_for_counted_chunks(params_for(&emu).send_buffer_bytes(None), &emu);
    assert_eq!(
        n, 0,
        "allocations on the caller's thread for {COUNTED} appends"
    );
}

#[test]
fn appends_into_a_full_socket_allocate_a_bounded_amount() {
    // With the send buffer capped (the default), this sender, as fast as the CPU goes, keeps
    // running into a full socket: then frames wait in the queue for the I/O thread, and the
    // frame arena takes a fresh 64 KiB buffer while they hold the old one (its memory and its
    // reference count: two allocations per ~15 frames at most), and tungstenite's write
    // buffer grows now and then. Bounded by the buffers, never one per chunk.
    let emu = start_emulator(EmulatorConfig::default());
    let n = allocations_for_counted_chunks(params_for(&emu), &emu);
    eprintln!("allocations on the caller's thread for {COUNTED} appends into a full socket: {n}");
    assert!(
        n <= (COUNTED / 15 * 2 + 20) as u64,
        "{n} allocations for {COUNTED} appends"
    );
}

#[test]
fn appends_over_tls_allocate_nothing_per_chunk() {
    let (cert, key) = self_signed_cert();
    let emu = start_emulator(EmulatorConfig {
        tls: Some(TlsIdentity {
            cert_pem: cert.clone(),
            key_pem: key,
        }),
        ..Default::default()
    });
    // The kernel's send buffer left to autotune: the path where the socket has room.
    let params = params_for(&emu)
        .root_certificate(cert)
        .send_buffer_bytes(None);
    let n = allocations_for_counted_chunks(params, &emu);
    assert_eq!(
        n, 0,
        "allocations on the caller's thread for {COUNTED} appends"
    );
}

#[test]
fn with_a_replay_window_frames_share_buffers() {
    // The replay window keeps every frame for 30 s here (nothing is transcribed before the
    // commit), so buffers cannot be reused; they are shared by many frames instead.
    let emu = start_emulator(EmulatorConfig::default());
    let params = params_for(&emu).reconnect(ReconnectPolicy::default());
    let n = allocations_for_counted_chunks(params, &emu);
    eprintln!("allocations on the caller's thread for {COUNTED} appends with replay: {n}");
    // A 4.4 KB frame each: fifteen to a 64 KiB buffer, two allocations a buffer (its memory
    // and its reference count), plus the replay window's queue doubling now and then.
    assert!(
        n <= (COUNTED / 15 * 2 + 20) as u64,
        "{n} allocations for {COUNTED} appends"
    );
}
