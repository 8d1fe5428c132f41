//! One error type for the whole crate, naming the phase that failed and, where there is one,
//! the remedy.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::protocol::ServerError;

/// The phase of a conversation in which a timeout fired. Each has its own field in
/// [`Timeouts`](crate::Timeouts), named in the error so the right knob can be turned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// The TCP connect (`Timeouts::connect`).
    Connect,
    /// The TLS and WebSocket handshakes (`Timeouts::handshake`).
    Handshake,
    /// Waiting for `session.created` after the handshake (`Timeouts::session_created`).
    SessionCreated,
    /// Waiting for `session.updated` after `session.update` (`Timeouts::session_updated`).
    SessionUpdated,
    /// Waiting for `session.finished` after `session.finish` (`end_session`'s timeout).
    EndSession,
}

impl Phase {
    /// The name of the [`Timeouts`](crate::Timeouts) field (or argument) that bounds this phase.
    pub fn field(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Handshake => "handshake",
            Phase::SessionCreated => "session_created",
            Phase::SessionUpdated => "session_updated",
            Phase::EndSession => "end_session",
        }
    }
}

/// Everything that can go wrong, with enough context to act on.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No API key was given and none was found in the environment or key files.
    NoApiKey,
    /// A configuration value is outside what the service accepts; nothing was sent.
    InvalidConfig {
        /// The field, in the wire's dotted form (for example `turn_detection.threshold`).
        field: &'static str,
        /// What was given and what is valid.
        message: String,
    },
    /// The URL cannot be used (bad syntax, wrong scheme, or `ws://` to a host that is not loopback).
    InvalidUrl {
        /// The offending URL, with any query removed.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// Audio handed to an append call is not in the expected shape (odd byte count, bad base64).
    InvalidAudio(String),
    /// A phase did not finish in time.
    Timeout {
        /// Which phase.
        phase: Phase,
        /// The limit that was hit.
        after: Duration,
    },
    /// Network I/O failed in a phase (DNS, connect, read, write).
    Io {
        /// Which phase.
        phase: Phase,
        /// The underlying error.
        source: io::Error,
    },
    /// TLS could not be set up (bad root certificate, handshake failure, unverifiable
    /// certificate); the TLS library's error is the [`source`](std::error::Error::source).
    Tls(Cause),
    /// The server refused the API key during the handshake (HTTP 401 or 403).
    Authentication {
        /// The HTTP status.
        status: u16,
        /// The response body, if any (lossy UTF-8).
        body: String,
    },
    /// The HTTP proxy refused the tunnel for want of valid credentials (HTTP 407). The API key
    /// was not sent yet: the user and password of the proxy URL (`Proxy::Url`, or
    /// `HTTPS_PROXY` and its kin) are at fault, not the key.
    ProxyAuthentication {
        /// The proxy, `host:port`.
        proxy: String,
        /// Whether credentials were sent (a proxy URL with `user:password@`).
        credentials_sent: bool,
        /// The proxy's status line and `Proxy-Authenticate` challenges, as it sent them
        /// (lossy UTF-8): which schemes it accepts. Only Basic is sent.
        response: String,
    },
    /// The WebSocket handshake failed for another reason (other HTTP status, protocol error);
    /// the WebSocket library's error, if one, is the [`source`](std::error::Error::source).
    Handshake(Cause),
    /// The server answered with a session for a different model than the one asked for. The
    /// service silently serves another model for a misspelled name.
    ModelMismatch {
        /// The model asked for.
        requested: String,
        /// The model the server reported in `session.created`.
        served: String,
    },
    /// The server sent an `error` event in reply to a request we were waiting on.
    Server(ServerError),
    /// The first frame after the handshake was not a `session.created` event.
    UnexpectedEvent {
        /// What we were waiting for.
        expected: &'static str,
        /// The frame received instead (truncated).
        got: String,
    },
    /// `commit` in server-VAD mode: the server commits by itself there.
    CommitInVadMode,
    /// `commit` with no audio appended since the last commit.
    EmptyCommit,
    /// The conversation is closed (by `close`, `end_session`, or the peer), or the connection
    /// closed while a request waited for its reply; nothing more was sent.
    Closed {
        /// The close code of the connection's end, when it is known (1006 when the socket just
        /// ended); `None` when the conversation had been closed before this call.
        code: Option<u16>,
        /// The close reason, if any.
        reason: String,
    },
    /// [`Conversation::take_events`](crate::Conversation::take_events) was called before: the
    /// event stream has one consumer, and it is taken.
    EventsTaken,
    /// A local resource could not be set up (thread, wake-up socket).
    Internal(String),
    /// ALSA capture failed (feature `alsa`).
    #[cfg(feature = "alsa")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alsa")))]
    Capture {
        /// The device name.
        device: String,
        /// The ALSA call that failed (for example `snd_pcm_open`).
        call: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The Opus encoder of the uplink failed (feature `opus`); its error is the
    /// [`source`](std::error::Error::source). A new connection starts a new encoder.
    #[cfg(feature = "opus")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opus")))]
    Opus(crate::opus::OpusError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoApiKey => write!(
                f,
                "no API key: set DASHSCOPE_API_KEY (or DASHSCOPE_API_KEY_FILE_PATH, or write it to \
                 ~/.dashscope/api_key), or pass one explicitly"
            ),
            Error::InvalidConfig { field, message } => write!(f, "invalid {field}: {message}"),
            Error::InvalidUrl { url, reason } => write!(f, "invalid URL {url}: {reason}"),
            Error::InvalidAudio(m) => write!(f, "invalid audio: {m}"),
            Error::Timeout { phase, after } => write!(
                f,
                "timed out after {:.1} s in phase {} (raise Timeouts::{})",
                after.as_secs_f64(),
                phase.field(),
                phase.field()
            ),
            Error::Io { phase, source } => write!(f, "I/O error during {}: {source}", phase.field()),
            Error::Tls(c) => write!(f, "TLS error: {c}"),
            Error::Authentication { status, body } => write!(
                f,
                "authentication failed (HTTP {status}): check the API key and that it belongs to \
                 this region's endpoint{}{}",
                if body.is_empty() { "" } else { ": " },
                body
            ),
            Error::ProxyAuthentication {
                proxy,
                credentials_sent,
                response,
            } => {
                if *credentials_sent {
                    write!(
                        f,
                        "the proxy {proxy} refused its credentials: check the user and password \
                         in the proxy URL"
                    )?;
                } else {
                    write!(
                        f,
                        "the proxy {proxy} wants credentials: put user:password@ in the proxy URL"
                    )?;
                }
                write!(f, " (the proxy answered: {response})")
            }
            Error::Handshake(c) => write!(f, "WebSocket handshake failed: {c}"),
            Error::ModelMismatch { requested, served } => write!(
                f,
                "asked for model {requested:?} but the server serves {served:?}: check the model name"
            ),
            Error::Server(e) => write!(f, "server error: {e}"),
            Error::UnexpectedEvent { expected, got } => {
                write!(f, "expected {expected}, got {got}")
            }
            Error::CommitInVadMode => write!(
                f,
                "commit is only for manual mode (turn_detection: null); in server-VAD mode the \
                 server commits by itself"
            ),
            Error::EmptyCommit => write!(f, "commit with no audio appended since the last commit"),
            Error::Closed { code: None, .. } => write!(f, "the conversation is closed"),
            Error::Closed {
                code: Some(code),
                reason,
            } => {
                write!(f, "the connection closed (code {code}")?;
                if !reason.is_empty() {
                    write!(f, ", {reason}")?;
                }
                write!(f, ")")
            }
            Error::EventsTaken => write!(
                f,
                "the event stream was taken by take_events: read the events there"
            ),
            Error::Internal(m) => write!(f, "internal error: {m}"),
            #[cfg(feature = "alsa")]
            Error::Capture { device, call, message } => {
                write!(f, "ALSA {call} on device {device:?} failed: {message}")
            }
            #[cfg(feature = "opus")]
            Error::Opus(e) => write!(f, "Opus encoding failed: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Tls(c) | Error::Handshake(c) => c.source(),
            #[cfg(feature = "opus")]
            Error::Opus(e) => Some(e),
            _ => None,
        }
    }
}

impl Error {
    /// The conversation was closed before this call.
    pub(crate) fn closed() -> Error {
        Error::Closed {
            code: None,
            reason: String::new(),
        }
    }

    pub(crate) fn handshake(message: impl Into<String>) -> Error {
        Error::Handshake(Cause::new(message, None))
    }

    pub(crate) fn handshake_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Handshake(Cause::new(message, Some(Box::new(source))))
    }

    #[cfg_attr(feature = "native-tls", allow(dead_code))]
    pub(crate) fn tls(message: impl Into<String>) -> Error {
        Error::Tls(Cause::new(message, None))
    }

    #[cfg_attr(not(feature = "native-tls"), allow(dead_code))]
    pub(crate) fn tls_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Tls(Cause::new(message, Some(Box::new(source))))
    }

    /// Whether trying again (a new connection, later) may succeed: true for network
    /// failures, timeouts and closed connections; false for what the same request would meet
    /// again (a refused key or proxy credentials, a wrong model, a bad URL or configuration,
    /// bad audio, a misuse of the API). The reconnect logic follows the same rule.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. }
            | Error::Io { .. }
            | Error::Tls(_)
            | Error::Handshake(_)
            | Error::Server(_)
            | Error::UnexpectedEvent { .. }
            | Error::Internal(_) => true,
            #[cfg(feature = "opus")]
            Error::Opus(_) => true,
            Error::Closed { code, .. } => code.is_some(),
            _ => false,
        }
    }
}

/// What went wrong, in words, and the error behind it when there is one: the cause of
/// [`Error::Tls`] and [`Error::Handshake`], reached through `source()`.
#[derive(Debug)]
pub struct Cause {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Cause {
    fn new(
        message: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Cause {
        Cause {
            message: message.into(),
            source,
        }
    }

    /// The words, without the cause's.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a non-blocking append did not take the audio. The audio is handed back untouched
/// (nothing was queued), so the caller decides what to keep.
#[derive(Debug)]
pub enum TryAppendError {
    /// The outgoing queue is full: the network is slower than the audio. Retry later.
    Full,
    /// Any other error (closed conversation, invalid audio).
    Other(Error),
}

impl fmt::Display for TryAppendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryAppendError::Full => write!(f, "the outgoing audio queue is full"),
            TryAppendError::Other(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TryAppendError {}

impl From<Error> for TryAppendError {
    fn from(e: Error) -> Self {
        TryAppendError::Other(e)
    }
}
