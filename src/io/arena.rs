//! The memory append frames are written in, reused from chunk to chunk.
//!
//! tungstenite takes every message as an owned `Bytes`, so a frame cannot simply be written
//! into one reused buffer and lent out. Frames are instead cut from a larger buffer: each is
//! a counted view of it (`BytesMut::split`), and once every frame cut from the buffer has been
//! sent, and let go of by the replay window if there is one, the whole buffer is taken back
//! (`try_reclaim`) and filled again from its start. Streaming with reconnect off, that is
//! one buffer for the whole conversation and no allocation per chunk; with the replay window
//! holding 30 s of frames, a new buffer every `ARENA_BYTES` of frames, and each old one is
//! freed with the last of its frames.

use bytes::{Bytes, BytesMut};
use tungstenite::Utf8Bytes;

use crate::protocol::{fill_append, AppendAudio};

/// 64 KiB: fifteen 100 ms frames of 16 kHz PCM (4,367 bytes each). One allocation of it now
/// and then, and at most this much held beyond the frames still in use.
const ARENA_BYTES: usize = 64 * 1024;

/// Frames above this get a buffer of their own rather than crowding the arena: long appends
/// are split into frames of up to `max_frame_bytes`, far more than a chunk of live audio.
const OWN_BUFFER_ABOVE: usize = ARENA_BYTES / 4;

/// Where one conversation's append frames are written; used under the append lock.
pub(crate) struct FrameArena {
    buf: BytesMut,
}

impl FrameArena {
    pub fn new() -> FrameArena {
        FrameArena {
            buf: BytesMut::with_capacity(ARENA_BYTES),
        }
    }

    /// The append frame of `audio`, ready to send.
    pub fn frame(&mut self, audio: AppendAudio<'_>) -> Utf8Bytes {
        let len = audio.frame_len();
        if len > OWN_BUFFER_ABOVE {
            let mut own = BytesMut::with_capacity(len);
            fill(&mut own, audio);
            return ascii(own.freeze());
        }
        // Reclaiming succeeds, without copying, when no frame cut from the buffer is left (the
        // arena itself is empty between frames); otherwise start a new buffer and let the old
        // one go with its last frame.
        if self.buf.capacity() < len && !self.buf.try_reclaim(len) {
            self.buf = BytesMut::with_capacity(ARENA_BYTES);
        }
        fill(&mut self.buf, audio);
        ascii(self.buf.split().freeze())
    }
}

/// Writes the frame of `audio` at the end of `buf`, which has room for it.
fn fill(buf: &mut BytesMut, audio: AppendAudio<'_>) {
    let (start, len) = (buf.len(), audio.frame_len());
    // SAFETY: `fill_append` initialises all `len` bytes after the buffer's end; the slice
    // indexing checks that there is room for them.
    unsafe {
        fill_append(&mut buf.spare_capacity_mut()[..len], audio);
        buf.set_len(start + len);
    }
}

/// A frame as tungstenite's text payload, without a second pass to check its UTF-8.
fn ascii(frame: Bytes) -> Utf8Bytes {
    // SAFETY: frames are written by `fill_append`, which writes only ASCII.
    unsafe { Utf8Bytes::from_bytes_unchecked(frame) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7) as u8).collect()
    }

    #[test]
    fn frames_are_the_public_writer_s_frames() {
        let mut arena = FrameArena::new();
        for n in [0, 1, 2, 3, 3200, 20_000] {
            let audio = pcm(n);
            let frame = arena.frame(AppendAudio::Pcm(&audio));
            let mut expected = String::new();
            crate::protocol::write_append_json(&mut expected, &audio);
            // Equal but for the random event id.
            assert_eq!(frame.len(), expected.len(), "{n} bytes");
            assert_eq!(frame[51..], expected[51..], "{n} bytes");
            let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
            assert_eq!(v["type"], "input_audio_buffer.append");
        }
        let frame = arena.frame(AppendAudio::Base64("AQD/fw=="));
        assert!(frame.ends_with(r#""audio":"AQD/fw=="}"#), "{frame}");
    }

    #[test]
    fn the_buffer_is_reused_once_its_frames_are_gone() {
        let mut arena = FrameArena::new();
        let audio = pcm(3200);
        let first = arena.frame(AppendAudio::Pcm(&audio));
        let start = first.as_ptr();
        drop(first);
        // Many times the arena's size, each frame dropped after use as a sent frame is: all
        // of it lands in the one buffer.
        for _ in 0..100 {
            let frame = arena.frame(AppendAudio::Pcm(&audio));
            let offset = frame.as_ptr() as usize - start as usize;
            assert!(offset + frame.len() <= ARENA_BYTES, "offset {offset}");
        }
    }

    #[test]
    fn frames_still_held_are_never_overwritten() {
        let mut arena = FrameArena::new();
        let held: Vec<(Vec<u8>, Utf8Bytes)> = (0..100)
            .map(|i| {
                let audio = pcm(3200 + i * 6);
                let frame = arena.frame(AppendAudio::Pcm(&audio));
                (audio, frame)
            })
            .collect();
        for (audio, frame) in &held {
            let mut expected = String::new();
            crate::protocol::write_append_json(&mut expected, audio);
            assert_eq!(frame[51..], expected[51..]);
        }
    }
}
