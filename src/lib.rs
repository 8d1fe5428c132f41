//! A blocking, thread-based client for Alibaba Cloud's Qwen-ASR-Realtime speech recognition
//! service (`qwen3-asr-flash-realtime`), for embedded Linux. See the README for an overview.
#![warn(missing_docs)]
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
