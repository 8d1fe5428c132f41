//! Ogg Opus encoding of the uplink (feature `opus`): a tenth of PCM's bytes on the wire.
//!
//! PCM costs 43,750 bytes per audio second on the wire (16 kHz 16-bit mono, base64 inside the
//! append's JSON). With [`OpusStream`] at its defaults the speech fixture costs about 4,000.
//!
//! # The framing, and how sure we are of it
//!
//! The service documents `input_audio_format: "opus"` next to `"pcm"` and says nothing more about
//! the framing. What this module sends, and why:
//!
//! - **Ogg encapsulation (RFC 7845), not raw packets.** Alibaba's sibling real-time recognition
//!   services document that Opus "must use Ogg encapsulation"; Alibaba's own sample for one of
//!   them sends what `ffmpeg -f opus` writes (Ogg Opus, 16 kHz mono); third-party clients of
//!   `qwen3-asr-flash-realtime` send an Ogg Opus stream.
//! - **Headers first, whole pages per append.** The `OpusHead` page (beginning of stream) and the
//!   `OpusTags` page are the session's first two appends ([`OpusStream::headers`]); after them
//!   every append is one whole page ([`OpusStream::push_pcm`]); the last is flagged end of
//!   stream ([`OpusStream::finish`]), to send before `session.finish`.
//! - **One logical stream per session.** After a reconnect, or for each new session, a new
//!   [`OpusStream`] with a new serial: fresh headers, granule positions from zero, page sequence
//!   numbers from zero. Audio replayed into the new session is re-encoded (or its packets
//!   re-muxed) into that new stream, never continued from the old one.
//! - **Mono, `sample_rate` 16000 (or 8000)** in `session.update` and the same value as the
//!   `OpusHead` input rate; VoIP application, 20 ms frames, about 24 kbit/s VBR.
//!
//! Verified: every stream written here decodes with the Xiph reference decoder (`opusdec` from
//! opus-tools) back to audio that matches the source, including two streams made across a
//! reconnect, and the page CRCs match the ones `opusenc` writes. **Not verified against the live
//! service**: whether it wants pages split per append exactly like this, whether it accepts the
//! headers on their own appends, and how it reacts to an end-of-stream page, are inferred from
//! the sources above, not observed.
//!
//! # Granule positions and the padding at the end
//!
//! Opus counts time at 48 kHz whatever the input rate. The encoder runs `pre_skip` samples
//! (6.5 ms: 312 at 48 kHz) behind its input, and the header tells a decoder to drop that many
//! at the start. A page's granule position is the 48 kHz samples decodable through its last
//! packet, pre-skip included. At the end, the partial last frame is filled with silence and more
//! silence is encoded until the lookahead has come out; the final page's granule position is
//! pre-skip plus the real audio only, so a decoder cuts the padding off again (RFC 7845 section
//! 4.4), and [`Pages::padded_samples`] says how much was added.
//!
//! # Replay after a reconnect: re-encode, or re-mux with a pre-roll
//!
//! Opus packets lean on the decoder state the packets before them built up. Handed to a fresh
//! decoder from the middle of speech (what re-muxing the replay window's packets into a new
//! stream would do), the first 100 ms came out at a median SNR of 0.7, 3.6, 5.4, 7.7 and 13 dB
//! per 20 ms against the continuous decode (libopus, 24 kbit/s, complexity 5, nine cut points
//! in the speech fixture); decoding four packets (80 ms) before the cut and dropping their
//! output brought that to 31..49 dB, as RFC 7845 section 4.6's 80 ms decoder pre-roll
//! suggests. So a re-muxed replay must start 80 ms early and grow the new header's pre-skip by
//! 3,840 to cover it, which only works if the service honours pre-skip (unverified), while
//! re-encoding the replay window's PCM into the new stream is always a valid stream at a cost
//! of about 5 ms of x86 CPU per replayed audio second.
//!
//! # In a conversation
//!
//! `SessionConfig::opus` makes a conversation encode the PCM that `append_pcm`,
//! `try_append_pcm` and capture take. The conversation's I/O thread owns the one encoder and
//! makes one [`OpusStream`] per server session, started with the session's first audio; its
//! replay window keeps the PCM, which is re-encoded into the new stream after a reconnect (the
//! choice above). A manual commit first completes the page being filled
//! ([`OpusStream::flush`]); `session.finish` follows the end-of-stream page.
//!
//! # The encoder
//!
//! libopus 1.6 (the reference implementation), built from source and linked statically: the
//! device needs no libopus, the build machine needs cmake and a C compiler for the target. On
//! 32-bit ARM without NEON as a target feature (the armv7 and ARMv6 Raspberry Pi targets) it is
//! built without intrinsics: its cmake build of the NEON files fails there.
//! Measured on the speech fixture at the defaults (x86-64, release): about 46 M instructions
//! and 5 ms of CPU per audio second.

mod config;
pub mod ogg;
mod stream;

#[cfg(test)]
mod tests;

pub use config::OpusConfig;
pub use stream::{OpusStream, Page, Pages};

/// Why an Opus stream could not be made or fed.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpusError {
    /// A setting is outside its range.
    InvalidConfig {
        /// The setting, for example `opus.bitrate_bps`.
        field: &'static str,
        /// What was given.
        value: u32,
        /// What is valid.
        expected: &'static str,
    },
    /// The service takes Opus at 16,000 or 8,000 Hz only.
    UnsupportedSampleRate(u32),
    /// libopus refused a call.
    Encoder {
        /// The libopus call or request.
        call: &'static str,
        /// libopus's error.
        source: libopus::Error,
    },
    /// The stream has ended ([`OpusStream::finish`]); a new session needs a new stream.
    Finished,
}

impl std::fmt::Display for OpusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpusError::InvalidConfig {
                field,
                value,
                expected,
            } => write!(f, "{field} = {value} is invalid: expected {expected}"),
            OpusError::UnsupportedSampleRate(rate) => write!(
                f,
                "Opus input at {rate} Hz is not supported: the service takes 16000 or 8000"
            ),
            OpusError::Encoder { call, .. } => write!(f, "the Opus encoder failed in {call}"),
            OpusError::Finished => write!(f, "the Opus stream has already ended"),
        }
    }
}

impl std::error::Error for OpusError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpusError::Encoder { source, .. } => Some(source),
            _ => None,
        }
    }
}
