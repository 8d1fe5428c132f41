//! The client events this library writes: ids, `commit`, `finish`, and append frames with
//! their base64 written straight into the frame's buffer.

use std::mem::MaybeUninit;

/// A fresh `event_id` as both official SDKs make them: `event_` + 32 lowercase hex digits.
pub(crate) fn new_event_id() -> String {
    let mut s = String::with_capacity(38);
    s.push_str("event_");
    push_random_hex(&mut s, 32);
    s
}

/// Appends `digits` random lowercase hex digits (see [`fill_random_hex`]).
pub(crate) fn push_random_hex(s: &mut String, digits: usize) {
    let mut buf = [0u8; 16];
    let mut left = digits;
    while left > 0 {
        let n = left.min(16);
        fill_random_hex(&mut buf[..n]);
        s.push_str(std::str::from_utf8(&buf[..n]).unwrap_or_default());
        left -= n;
    }
}

/// Fills `out` with random lowercase hex digits. The randomness comes from std's per-process
/// random SipHash keys mixed with a counter: unique ids, no extra dependency.
fn fill_random_hex(out: &mut [u8]) {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for sixteen in out.chunks_mut(16) {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let n = h.finish();
        for (i, d) in sixteen.iter_mut().enumerate() {
            *d = HEX[((n >> (60 - 4 * i)) & 15) as usize];
        }
    }
}

/// `{"event_id":…,"type":…}` for the events that carry nothing else (commit, finish), with
/// its event id.
fn simple_client_event(event_type: &str) -> (String, String) {
    let id = new_event_id();
    (
        format!(r#"{{"event_id":"{id}","type":"{event_type}"}}"#),
        id,
    )
}

/// `input_audio_buffer.commit`, and its event id.
pub(crate) fn commit_json() -> (String, String) {
    simple_client_event("input_audio_buffer.commit")
}

/// `session.finish`, and its event id.
pub(crate) fn finish_json() -> (String, String) {
    simple_client_event("session.finish")
}

/// The bytes an append frame adds around its base64 payload; used to split audio so that no
/// frame exceeds the gateway's cap.
pub(crate) const APPEND_OVERHEAD_BYTES: usize =
    r#"{"event_id":"event_00000000000000000000000000000000","type":"input_audio_buffer.append","audio":""}"#
        .len();

#[cfg(any(test, feature = "fuzzing", feature = "opus"))]
/// Writes an `input_audio_buffer.append` frame with the base64 of `pcm` into `out`, reusing its
/// allocation. Written by hand rather than through a JSON tree: this is the hot path.
pub(crate) fn write_append_json(out: &mut String, pcm: &[u8]) {
    let audio = AppendAudio::Pcm(pcm);
    let len = audio.frame_len();
    out.clear();
    // SAFETY: `fill_append` writes only ASCII, so the String stays valid UTF-8, and it writes
    // all `len` bytes, so they are initialised.
    unsafe {
        let v = out.as_mut_vec();
        v.reserve(len);
        fill_append(&mut v.spare_capacity_mut()[..len], audio);
        v.set_len(len);
    }
}

/// The audio of one append frame: PCM to encode, or base64 the caller already has (checked to
/// be standard padded base64, so ASCII).
#[derive(Clone, Copy)]
pub(crate) enum AppendAudio<'a> {
    Pcm(&'a [u8]),
    Base64(&'a str),
}

impl AppendAudio<'_> {
    /// The length of its append frame in bytes.
    pub fn frame_len(self) -> usize {
        APPEND_OVERHEAD_BYTES
            + match self {
                AppendAudio::Pcm(pcm) => pcm.len().div_ceil(3) * 4,
                AppendAudio::Base64(b64) => b64.len(),
            }
    }

    /// The bytes of audio it carries.
    pub fn audio_bytes(self) -> u64 {
        match self {
            AppendAudio::Pcm(pcm) => pcm.len() as u64,
            AppendAudio::Base64(b64) => (b64.len() / 4 * 3 - base64_padding(b64)) as u64,
        }
    }
}

/// The `=` that pad the end of standard base64: none, one or two.
pub(crate) fn base64_padding(b64: &str) -> usize {
    b64.bytes().rev().take(2).take_while(|&c| c == b'=').count()
}

/// Writes the `input_audio_buffer.append` frame of `audio` into `dst`, which is exactly
/// `audio.frame_len()` bytes long, and initialises all of it. Only ASCII is written: the
/// template, hex digits, and base64 (encoded here, or the caller's, which is checked).
pub(crate) fn fill_append(dst: &mut [MaybeUninit<u8>], audio: AppendAudio<'_>) {
    const HEAD: &[u8] = b"{\"event_id\":\"event_";
    const TYPE: &[u8] = b"\",\"type\":\"input_audio_buffer.append\",\"audio\":\"";
    const TAIL: &[u8] = b"\"}";
    // Every byte is written once, in order; a length mismatch would be a bug here, and the
    // slice indexing turns it into a panic rather than uninitialised bytes.
    assert_eq!(dst.len(), audio.frame_len(), "append frame length");
    let (head, rest) = dst.split_at_mut(HEAD.len());
    put(head, HEAD);
    let (id, rest) = rest.split_at_mut(32);
    let mut hex = [0u8; 32];
    fill_random_hex(&mut hex);
    put(id, &hex);
    let (ty, rest) = rest.split_at_mut(TYPE.len());
    put(ty, TYPE);
    let (payload, tail) = rest.split_at_mut(rest.len() - TAIL.len());
    match audio {
        AppendAudio::Pcm(pcm) => base64_into(payload, pcm),
        AppendAudio::Base64(b64) => put(payload, b64.as_bytes()),
    }
    put(tail, TAIL);
}

/// Copies `src` into `dst`, which has its length.
fn put(dst: &mut [MaybeUninit<u8>], src: &[u8]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Every 12-bit value as its two base64 characters, the first in the low byte: 8 KiB.
static BASE64_PAIRS: [u16; 4096] = {
    let mut t = [0u16; 4096];
    let mut i = 0;
    while i < 4096 {
        t[i] = (BASE64_ALPHABET[i >> 6] as u16) | ((BASE64_ALPHABET[i & 63] as u16) << 8);
        i += 1;
    }
    t
};

/// Writes the standard, padded base64 of `bytes` into `dst`, which is exactly its length. This
/// is most of what an append costs, so it is done here rather than with the `base64` crate,
/// whose `encode_string` goes through a scratch buffer and a UTF-8 check of each piece: six
/// bytes at a time as one load, four lookups of two characters and one store, it takes under
/// half the time on the benchmark machine.
pub(crate) fn base64_into(dst: &mut [MaybeUninit<u8>], bytes: &[u8]) {
    assert_eq!(dst.len(), bytes.len().div_ceil(3) * 4, "base64 length");
    let pair = |n: u64| u64::from(BASE64_PAIRS[(n & 0xfff) as usize]);
    // Six bytes make eight characters. Eight are loaded, so this stops while two more follow.
    let sixes = bytes.len().saturating_sub(2) / 6;
    for (i, d) in dst[..sixes * 8].chunks_exact_mut(8).enumerate() {
        let eight: [u8; 8] = bytes[i * 6..i * 6 + 8].try_into().unwrap_or_default();
        let n = u64::from_be_bytes(eight) >> 16;
        let chars = pair(n >> 36) | pair(n >> 24) << 16 | pair(n >> 12) << 32 | pair(n) << 48;
        put(d, &chars.to_le_bytes());
    }
    // The last one to seven bytes, three at a time, the last group padded with '='.
    let char_at = |n: u32, shift: u32| BASE64_ALPHABET[((n >> shift) & 63) as usize];
    let rest = bytes[sixes * 6..].chunks(3);
    for (s, d) in rest.zip(dst[sixes * 8..].chunks_exact_mut(4)) {
        let byte = |i: usize| u32::from(s.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        let c = [
            char_at(n, 18),
            char_at(n, 12),
            if s.len() > 1 { char_at(n, 6) } else { b'=' },
            if s.len() > 2 { char_at(n, 0) } else { b'=' },
        ];
        put(d, &c);
    }
}
