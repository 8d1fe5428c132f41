//! A blocking, thread-based client for Alibaba Cloud's Qwen-ASR-Realtime speech recognition
//! service (`qwen3-asr-flash-realtime`), for embedded Linux. See the README for an overview.
#![warn(missing_docs)]

mod arena;
pub mod callback;
pub mod config;
pub mod conversation;
pub mod error;
pub mod event;
#[cfg(feature = "gate")]
pub mod gate;
mod io_thread;
mod link;
mod proxy;
mod replay;
#[cfg(feature = "native-tls")]
mod tls;
pub mod transport;
mod wake;
pub mod wav;

#[cfg(feature = "alsa")]
pub mod capture;
pub mod resample;

#[cfg(feature = "emulator")]
pub mod emulator;

pub use callback::{Callback, CallbackThread};
#[cfg(feature = "alsa")]
pub use capture::{Capture, CaptureConfig};
pub use config::{
    ApiKey, AudioFormat, ConnectParams, Keepalive, Proxy, ReconnectPolicy, SessionConfig, Timeouts,
    TurnDetection,
};
pub use conversation::{AudioSender, Conversation};
pub use error::{Error, Phase, Result, TryAppendError};

// The README's code blocks are compiled as doc tests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
pub use event::{Completed, Event, EventKind, Failed, Partial, ServerError, Session, Usage};
