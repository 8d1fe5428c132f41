//! [`AudioSender`]: the cloneable handle that feeds audio into a conversation from any thread.

use std::sync::Arc;

use crate::error::{Error, Result, TryAppendError};
use crate::io::outbox::{Command, Shared};
use crate::protocol::{Event, EventKind};

/// A cheap, cloneable handle that feeds audio (and client events) into one conversation,
/// for example from a capture thread. It writes a frame to the socket itself when nothing has
/// to go first, and queues it for the I/O thread otherwise; only the blocking appends wait,
/// and only while the link is backed up.
#[derive(Clone)]
pub struct AudioSender {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AudioSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioSender")
            .field("closed", &self.shared.is_closed())
            .finish()
    }
}

impl AudioSender {
    pub(super) fn new(shared: Arc<Shared>) -> AudioSender {
        AudioSender { shared }
    }

    /// Sends 16-bit PCM samples, waiting only while the link is backed up (the socket full,
    /// or the bounded outgoing queue full). Refused in an Opus session, unless the library
    /// encodes it (`SessionConfig::opus`, feature `opus`): then the samples are encoded into
    /// the session's Ogg Opus stream on the I/O thread.
    pub fn append_pcm(&self, samples: &[i16]) -> Result<()> {
        self.check_pcm_session()?;
        with_le_bytes(samples, |b| self.shared.append(b, true)).map_err(into_error)
    }

    /// Sends 16-bit PCM samples if that needs no waiting: straight to the socket, or into the
    /// queue if it has room for all of them, and no other thread is in the middle of an
    /// append. On [`TryAppendError::Full`] nothing was taken.
    pub fn try_append_pcm(&self, samples: &[i16]) -> Result<(), TryAppendError> {
        self.check_pcm_session()?;
        with_le_bytes(samples, |b| self.shared.append(b, false))
    }

    /// Sends raw audio bytes like [`append_pcm`](Self::append_pcm) (s16le for PCM; an odd
    /// length is refused; Opus bytes pass through untouched). Refused in a session whose
    /// PCM the library encodes to Opus (`SessionConfig::opus`): bytes encoded elsewhere,
    /// spliced into the Ogg stream it writes, would make the stream invalid; for them,
    /// configure Opus without the library's encoder.
    pub fn append_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.check_not_encoding()?;
        self.shared.append(bytes, true).map_err(into_error)
    }

    /// Like [`append_bytes`](Self::append_bytes) but never waits (see
    /// [`try_append_pcm`](Self::try_append_pcm)).
    pub fn try_append_bytes(&self, bytes: &[u8]) -> Result<(), TryAppendError> {
        self.check_not_encoding()?;
        self.shared.append(bytes, false)
    }

    /// Sends audio that is already standard padded base64 (checked, not decoded), like
    /// [`append_bytes`](Self::append_bytes), and refused where it is.
    pub fn append_base64(&self, b64: &str) -> Result<()> {
        self.check_not_encoding()?;
        self.shared.append_base64(b64, true).map_err(into_error)
    }

    /// Like [`append_base64`](Self::append_base64) but never waits (see
    /// [`try_append_pcm`](Self::try_append_pcm)).
    pub fn try_append_base64(&self, b64: &str) -> Result<(), TryAppendError> {
        self.check_not_encoding()?;
        self.shared.append_base64(b64, false)
    }

    /// Commits the audio appended since the last commit as one utterance (manual mode only),
    /// as [`Conversation::commit`](crate::Conversation::commit).
    pub fn commit(&self) -> Result<()> {
        if !self.shared.is_manual() {
            return Err(Error::CommitInVadMode);
        }
        self.shared.commit()
    }

    /// Delivers a client event into the conversation's event stream, in order with the rest;
    /// waits while the outgoing queue is full. Not public: only the library raises `client.*`
    /// events (a user could otherwise fake `client.closed`).
    #[cfg_attr(not(feature = "gate"), allow(dead_code))]
    pub(crate) fn notify(&self, kind: EventKind) -> Result<()> {
        self.shared.enqueue(Command::Notify(Event::client(kind)))
    }

    /// Asks the I/O thread to end the session because the speech gate has been closed for
    /// `idle_ms` of audio; in order with the audio, so everything appended before it is
    /// sent and transcribed first. Waits while the outgoing queue is full.
    #[cfg_attr(not(feature = "gate"), allow(dead_code))]
    pub(crate) fn idle(&self, idle_ms: u64) -> Result<()> {
        self.shared.enqueue(Command::Idle { idle_ms })
    }

    /// Like [`idle`](Self::idle) but never waits: on [`TryAppendError::Full`] nothing was
    /// queued. For the gate in front of a capture thread.
    #[cfg(all(feature = "gate", feature = "alsa"))]
    pub(crate) fn try_idle(&self, idle_ms: u64) -> Result<(), TryAppendError> {
        self.shared.try_enqueue(Command::Idle { idle_ms })
    }

    /// The conversation's accounting (see [`Conversation::stats`](crate::Conversation::stats)).
    pub fn stats(&self) -> crate::Stats {
        self.shared.stats()
    }

    /// Like [`notify`](Self::notify) but never waits: on [`TryAppendError::Full`] nothing
    /// was taken. A capture thread reports a loss exactly when the queue is full, so it must
    /// not wait for room.
    #[cfg_attr(not(feature = "alsa"), allow(dead_code))]
    pub(crate) fn try_notify(&self, kind: EventKind) -> Result<(), TryAppendError> {
        self.shared
            .try_enqueue(Command::Notify(Event::client(kind)))
    }

    /// Like [`commit`](Self::commit) but never waits: on [`TryAppendError::Full`] nothing
    /// was queued. For the gate in front of a capture thread, which must not wait.
    #[cfg(all(feature = "gate", feature = "alsa"))]
    pub(crate) fn try_commit(&self) -> Result<(), TryAppendError> {
        if !self.shared.is_manual() {
            return Err(TryAppendError::Other(Error::CommitInVadMode));
        }
        self.shared.try_commit()
    }

    /// The session's sample rate (16000 or 8000), as last configured.
    pub fn sample_rate(&self) -> u32 {
        self.shared.sample_rate()
    }

    /// True once the conversation no longer takes audio.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    fn check_not_encoding(&self) -> Result<()> {
        if self.shared.encodes() {
            Err(Error::InvalidAudio(
                "pre-encoded bytes into a session whose PCM this library encodes to Opus; \
                 append PCM samples instead"
                    .into(),
            ))
        } else {
            Ok(())
        }
    }

    fn check_pcm_session(&self) -> Result<()> {
        if self.shared.is_pcm() {
            Ok(())
        } else {
            Err(Error::InvalidAudio(
                "PCM samples into a session configured for Opus; append Opus bytes instead".into(),
            ))
        }
    }
}

fn into_error(e: TryAppendError) -> Error {
    match e {
        TryAppendError::Other(e) => e,
        // Blocking appends wait instead of reporting Full.
        TryAppendError::Full => Error::Internal("queue full on a blocking append".into()),
    }
}

/// Runs `f` on the samples as s16le bytes: the samples' own memory on little-endian targets
/// (every Pi), a converted copy elsewhere.
fn with_le_bytes<R>(samples: &[i16], f: impl FnOnce(&[u8]) -> R) -> R {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: i16 has no padding and u8 has alignment 1; on a little-endian target the
        // in-memory bytes are exactly the wire's s16le, and the slice borrows `samples`.
        let bytes =
            unsafe { std::slice::from_raw_parts(samples.as_ptr().cast::<u8>(), samples.len() * 2) };
        f(bytes)
    }
    #[cfg(target_endian = "big")]
    {
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        f(&bytes)
    }
}

/// A conversation's sender takes chunks without waiting (`try_append_pcm`) and reports
/// [`TryAppendError::Full`] when its outgoing queue is full.
#[cfg(feature = "alsa")]
impl crate::capture::AudioSink for AudioSender {
    fn try_append(&self, samples: &[i16]) -> std::result::Result<(), TryAppendError> {
        self.try_append_pcm(samples)
    }

    fn try_notify(&self, kind: &EventKind) -> std::result::Result<(), TryAppendError> {
        AudioSender::try_notify(self, kind.clone())
    }
}
