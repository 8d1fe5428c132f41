//! A blocking, thread-based client for Alibaba Cloud's Qwen-ASR-Realtime speech recognition
//! service (`qwen3-asr-flash-realtime`), for embedded Linux: a Raspberry Pi voice terminal
//! streams its microphone to the service and gets live transcripts back. No async runtime.
//!
//! ```no_run
//! use qwen_asr_realtime::{ConnectParams, Conversation, EventKind, SessionConfig};
//! # fn main() -> qwen_asr_realtime::Result<()> {
//! let conv = Conversation::start(ConnectParams::new(), &SessionConfig::vad())?;
//! conv.append_pcm(&[0i16; 1600])?; // 100 ms of 16 kHz mono PCM
//! conv.end_session_async()?;
//! for event in conv.iter() {
//!     if let EventKind::Completed(c) = &event.kind {
//!         println!("{}", c.transcript);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Threads, and who owns what
//! - **The caller's threads** hold a [`Conversation`] and any number of [`AudioSender`]s.
//!   They never touch the socket but through the link's one send operation.
//! - **One I/O thread per conversation** owns the connection: it sleeps in `poll(2)` on the
//!   socket and a wake-up eventfd (the keepalive deadline is its only timeout, so an idle
//!   conversation costs no CPU), reads and parses server events, writes what was queued,
//!   keeps the link alive, and replaces it when it dies. It is joined on
//!   [`close`](Conversation::close), [`end_session`](Conversation::end_session) and drop.
//! - **One capture thread per microphone** ([`capture`], feature `alsa`), joined when the
//!   [`Capture`] stops or is dropped; optionally **one callback thread** ([`CallbackThread`]).
//!
//! # The way of a chunk
//! [`Conversation::append_pcm`] → [`AudioSender::append_pcm`] → the outbox cuts it into
//! frames (base64 written straight into one reused buffer, under the append lock so that two
//! threads' audio never interleaves) → `Link::try_send`: if nothing has to go first and the
//! socket has room, the caller's own thread writes it (`send(2)`); otherwise it is queued and
//! the I/O thread writes it with the same call. The queue is bounded, and so is the kernel's
//! send buffer ([`ConnectParams::send_buffer_bytes`]): a blocking append waits while the link
//! is backed up, a `try_` append returns [`TryAppendError::Full`], and with
//! [`ConnectParams::max_backlog`] the oldest queued audio is dropped, reported, instead.
//! In a session that the library encodes to Opus (`SessionConfig::opus`, feature `opus`) every
//! frame is queued: the I/O thread owns the encoder, and sends the Ogg pages it completes.
//!
//! # Guarantees
//! - **Order**: events arrive in the order the server sent them, on one stream with one
//!   consumer ([`Events`], [`Conversation::take_events`]); the library's own events
//!   (`client.*`, see [`EventKind`]) take their place among them.
//! - **No silent loss**: every millisecond of audio handed to an append is transcribed, or
//!   reported in a `client.audio_dropped` event ([`EventKind::AudioDropped`]), however the
//!   conversation ends: a close by the caller, `end_session` failing or timing out, the server
//!   going away, a reconnect giving up, even a panic on the I/O thread. Audio sent but without
//!   a result is kept in a replay window (in milliseconds) and sent again after a reconnect;
//!   what falls out of it is reported. [`Conversation::stats`] shows the accounting.
//! - **`client.closed` is always the last event**, and the stream ends after it.
//! - **Hostile input**: nothing the server sends can panic the client; numbers are saturated
//!   or ignored, malformed frames become `client.malformed` events.
//! - **Secrets**: the API key, header values and proxy credentials never appear in `Debug`
//!   output, errors or logs.
//!
//! # Features
//! `native-tls` (default; `wss://` through the system OpenSSL), `native-tls-vendored`,
//! `alsa` (default; microphone capture), `gate` (an on-device speech gate), `opus` (an Ogg
//! Opus encoder). The emulator of the service that the tests use is its own crate,
//! `qwen-asr-emulator`.
#![warn(missing_docs, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod audio;
pub mod callback;
#[cfg(feature = "alsa")]
#[cfg_attr(docsrs, doc(cfg(feature = "alsa")))]
pub mod capture;
mod client;
pub mod config;
pub mod error;
mod events;
#[cfg(feature = "gate")]
#[cfg_attr(docsrs, doc(cfg(feature = "gate")))]
pub mod gate;
mod io;
mod net;
#[cfg(feature = "opus")]
#[cfg_attr(docsrs, doc(cfg(feature = "opus")))]
pub mod opus;
mod protocol;
mod sys;

/// Crate-private parts that the fuzz targets and the benchmark drive: not a public API, and
/// only there with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::io::replay::{Accounting, FrameAudio, Replay};

    /// An `input_audio_buffer.append` frame for `pcm`, as this library writes it.
    pub fn write_append_json(out: &mut String, pcm: &[u8]) {
        crate::protocol::write_append_json(out, pcm)
    }

    /// The `session.update` text this library sends for `config`.
    pub fn session_update_json(config: &crate::SessionConfig, event_id: &str) -> String {
        config.to_update_json(event_id)
    }
}

pub use callback::{Callback, CallbackThread};
#[cfg(feature = "alsa")]
#[cfg_attr(docsrs, doc(cfg(feature = "alsa")))]
pub use capture::{Capture, CaptureConfig};
pub use client::{AudioSender, Conversation, Stats};
pub use config::{
    ApiKey, AudioFormat, ConnectParams, Keepalive, Proxy, ReconnectPolicy, SessionConfig, Timeouts,
    TurnDetection,
};
pub use error::{Cause, Error, Phase, Result, TryAppendError};
pub use events::{Events, IntoIter, RecvTimeoutError, TryRecvError};

// The README's code blocks are compiled as doc tests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
pub use protocol::{Completed, Event, EventKind, Failed, Partial, ServerError, Session, Usage};
