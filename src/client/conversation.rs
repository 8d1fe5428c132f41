//! [`Conversation`]: one conversation with the service (the SDKs'
//! `OmniRealtimeConversation`), its event stream, and its end.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{bounded, Receiver};

use crate::callback::{Callback, CallbackThread};
#[cfg(feature = "alsa")]
use crate::capture::{Capture, CaptureConfig};
use crate::events::{Events, RecvTimeoutError, TryRecvError};

use crate::client::sender::AudioSender;
use crate::config::{ApiKey, ConnectParams, SessionConfig};
use crate::error::{Error, Phase, Result, TryAppendError};
use crate::io;
use crate::io::outbox::{Command, Shared, Stats};
use crate::net;
use crate::protocol::{self, Event, Session};
use crate::sys::lock;

/// One conversation with the service: a WebSocket, its I/O thread, and the event stream.
///
/// ```no_run
/// use qwen_asr_realtime::{Conversation, ConnectParams, SessionConfig, EventKind};
/// # fn main() -> qwen_asr_realtime::Result<()> {
/// let conv = Conversation::start(ConnectParams::new(), &SessionConfig::vad())?;
/// conv.append_pcm(&[0i16; 1600])?; // 100 ms of silence at 16 kHz
/// conv.end_session_async()?;
/// for event in conv.iter() {
///     if let EventKind::Completed(c) = &event.kind {
///         println!("{}", c.transcript);
///     }
/// }
/// # Ok(()) }
/// ```
///
/// Dropping it closes the connection and joins the I/O thread.
pub struct Conversation {
    shared: Arc<Shared>,
    events: Events,
    /// [`take_events`](Self::take_events) has been called.
    events_taken: AtomicBool,
    io: Mutex<Option<JoinHandle<()>>>,
    params: ConnectParams,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation")
            .field("session_id", &self.session_id())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Conversation {
    /// Connects and returns once `session.created` has arrived (it is also the first event
    /// in the event stream), after checking that the session serves the model asked
    /// for. The API key is `params.api_key`, else it is resolved from the environment
    /// ([`ApiKey::from_env`]).
    pub fn connect(params: ConnectParams) -> Result<Conversation> {
        let key = match &params.api_key {
            Some(k) => k.clone(),
            None => ApiKey::from_env()?,
        };
        let opened = net::open(&params, &key, None)?;
        let io::Started { shared, events, io } = io::start(&params, key, opened)?;
        Ok(Conversation {
            shared,
            events: Events::new(events),
            events_taken: AtomicBool::new(false),
            io: Mutex::new(Some(io)),
            params,
        })
    }
    /// [`connect`](Self::connect), then [`update_session`](Self::update_session): a
    /// conversation ready for audio.
    pub fn start(params: ConnectParams, config: &SessionConfig) -> Result<Conversation> {
        config.validate()?;
        let conv = Self::connect(params)?;
        conv.update_session(config)?;
        Ok(conv)
    }

    /// Sends `session.update` and waits for `session.updated` (returned) or an `error`
    /// ([`Error::Server`]). Values are checked first; a bad one is refused before anything is
    /// sent. Send it before the first audio: the gateway closes the socket on a late update.
    pub fn update_session(&self, config: &SessionConfig) -> Result<Session> {
        config.validate()?;
        let (tx, rx) = bounded(1);
        let event_id = protocol::new_event_id();
        let text = config.to_update_json(&event_id);
        self.shared.enqueue(Command::Update {
            text,
            event_id,
            reply: Some(tx),
        })?;
        let limit = self.params.timeouts.session_updated;
        let session = self.wait_reply(rx, limit, Phase::SessionUpdated)?;
        self.shared.apply_config(config);
        Ok(session)
    }

    /// Sends `session.update` without waiting for the reply (the SDKs' behaviour). Audio sent
    /// before `session.updated` arrives may be taken with the old settings.
    pub fn update_session_async(&self, config: &SessionConfig) -> Result<()> {
        config.validate()?;
        let event_id = protocol::new_event_id();
        let text = config.to_update_json(&event_id);
        self.shared.enqueue(Command::Update {
            text,
            event_id,
            reply: None,
        })?;
        self.shared.apply_config(config);
        Ok(())
    }

    fn wait_reply<T>(&self, rx: Receiver<Result<T>>, limit: Duration, phase: Phase) -> Result<T> {
        match rx.recv_timeout(limit) {
            Ok(r) => r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(Error::Timeout {
                phase,
                after: limit,
            }),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(self.closed_reason()),
        }
    }

    fn closed_reason(&self) -> Error {
        match self.shared.peer_close() {
            Some((code, reason)) => Error::Closed {
                code: Some(code),
                reason,
            },
            None => Error::closed(),
        }
    }

    /// Sends 16-bit mono PCM samples: written to the socket from this thread when nothing has
    /// to go first, else queued for the I/O thread. Waits only while the link is backed up
    /// (the socket full, or the bounded outgoing queue full). Long buffers are split so that
    /// no frame exceeds `max_frame_bytes`.
    pub fn append_pcm(&self, samples: &[i16]) -> Result<()> {
        self.audio_sender().append_pcm(samples)
    }

    /// Sends raw audio bytes like [`append_pcm`](Self::append_pcm) (s16le for PCM; an odd
    /// length is refused).
    pub fn append_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.audio_sender().append_bytes(bytes)
    }

    /// Like [`append_bytes`](Self::append_bytes) but never waits (see
    /// [`try_append_pcm`](Self::try_append_pcm)).
    pub fn try_append_bytes(&self, bytes: &[u8]) -> Result<(), TryAppendError> {
        self.audio_sender().try_append_bytes(bytes)
    }

    /// Sends audio that is already standard padded base64 (checked, not decoded), like
    /// [`append_pcm`](Self::append_pcm).
    pub fn append_base64(&self, b64: &str) -> Result<()> {
        self.audio_sender().append_base64(b64)
    }

    /// Like [`append_base64`](Self::append_base64) but never waits (see
    /// [`try_append_pcm`](Self::try_append_pcm)).
    pub fn try_append_base64(&self, b64: &str) -> Result<(), TryAppendError> {
        self.audio_sender().try_append_base64(b64)
    }

    /// Like [`append_pcm`](Self::append_pcm) but never waits: on
    /// [`TryAppendError::Full`] (no room in the queue, or another thread in the middle of an
    /// append) nothing was taken.
    pub fn try_append_pcm(&self, samples: &[i16]) -> Result<(), TryAppendError> {
        self.audio_sender().try_append_pcm(samples)
    }

    /// Commits the audio appended since the last commit as one utterance (manual mode only).
    /// In a session the library encodes to Opus, the page being filled goes out first; less
    /// than one Opus frame (20 ms by default) cannot be encoded without padding silence into
    /// the stream, so it stays in the encoder and goes with the next audio (the next
    /// utterance, or the last page before `session.finish`).
    pub fn commit(&self) -> Result<()> {
        if !self.shared.is_manual() {
            return Err(Error::CommitInVadMode);
        }
        self.shared.commit()
    }

    /// Sends `session.finish` and waits for `session.finished`; every event before it has been
    /// delivered by then. Returns early with an error if an `error` event arrives or the
    /// connection closes first, or [`Error::Timeout`] after `timeout`. Then closes the
    /// connection (code 1000; 1011 after a timeout, as the Java SDK does) and joins the I/O
    /// thread. The events, ending with `client.closed`, stay readable.
    pub fn end_session(&self, timeout: Duration) -> Result<()> {
        let (tx, rx) = bounded(1);
        let (text, event_id) = protocol::finish_json();
        self.shared.enqueue(Command::Finish {
            text,
            event_id,
            reply: Some(tx),
        })?;
        let result = self.wait_reply(rx, timeout, Phase::EndSession);
        match &result {
            Err(Error::Timeout { .. }) => self.close_with(
                1011,
                format!("session.finished not received within {timeout:?}"),
            ),
            _ => self.close_with(1000, "bye".into()),
        }
        result
    }

    /// [`end_session`](Self::end_session) with the default timeout from
    /// [`Timeouts::end_session`](crate::Timeouts).
    pub fn end_session_default(&self) -> Result<()> {
        self.end_session(self.params.timeouts.end_session)
    }

    /// Sends `session.finish` and returns; `session.finished` arrives as an event, after which
    /// [`close`](Self::close).
    pub fn end_session_async(&self) -> Result<()> {
        let (text, event_id) = protocol::finish_json();
        self.shared.enqueue(Command::Finish {
            text,
            event_id,
            reply: None,
        })
    }

    /// Closes the connection (code 1000) and joins the I/O thread. Audio still queued is
    /// reported as `client.audio_dropped`. Closing twice is fine.
    pub fn close(&self) {
        self.close_with(1000, "bye".into());
    }

    fn close_with(&self, code: u16, reason: String) {
        self.shared.cancel.cancel();
        // Fails only if the I/O thread is already on its way out.
        let _ = self
            .shared
            .enqueue_unordered(Command::Close { code, reason });
        if let Some(handle) = lock(&self.io).take() {
            if handle.join().is_err() {
                log::error!("the I/O thread panicked");
            }
        }
    }

    /// True once the connection is closed (by either side).
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// The audio accounting so far: appended, dropped, replayed, and how far the link is
    /// behind. Cheap: a few atomic loads.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// The session id from `session.created` (`sess_…`).
    pub fn session_id(&self) -> Option<String> {
        self.shared.session_id()
    }

    /// Always `None`: responses are an Omni concept; ASR sessions have none (as in the SDKs).
    pub fn response_id(&self) -> Option<String> {
        None
    }

    /// A handle that feeds audio into this conversation from another thread.
    pub fn audio_sender(&self) -> AudioSender {
        AudioSender::new(Arc::clone(&self.shared))
    }

    /// Takes the event stream, to read it on another thread: the one consumer of every
    /// event, ending after `client.closed`. Once it is taken, this conversation's own
    /// [`recv`](Self::recv), [`recv_timeout`](Self::recv_timeout),
    /// [`try_recv`](Self::try_recv) and [`iter`](Self::iter) see no more events: a stream
    /// read from two places would give each event to one of them, silently.
    /// [`Error::EventsTaken`] the second time.
    pub fn take_events(&self) -> Result<Events> {
        if self.events_taken.swap(true, Ordering::SeqCst) {
            return Err(Error::EventsTaken);
        }
        Ok(Events::new(self.events.receiver().clone()))
    }

    fn own_events(&self) -> Option<&Events> {
        (!self.events_taken.load(Ordering::SeqCst)).then_some(&self.events)
    }

    /// The next event, waiting for it; `None` once the stream has ended (or was taken).
    pub fn recv(&self) -> Option<Event> {
        self.own_events()?.recv()
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> std::result::Result<Event, RecvTimeoutError> {
        match self.own_events() {
            Some(e) => e.recv_timeout(timeout),
            None => Err(RecvTimeoutError::Disconnected),
        }
    }

    /// The next event if one is ready.
    pub fn try_recv(&self) -> std::result::Result<Event, TryRecvError> {
        match self.own_events() {
            Some(e) => e.try_recv(),
            None => Err(TryRecvError::Disconnected),
        }
    }

    /// Events waiting to be read (0 once the stream was taken).
    pub fn pending_events(&self) -> usize {
        self.own_events().map_or(0, Events::len)
    }

    /// Iterates over events until the stream ends (after `client.closed`).
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(move || self.recv())
    }

    /// Runs `callback` on a thread of ours with this conversation's events, as the official
    /// SDKs do (it takes the event stream, see [`take_events`](Self::take_events)). Keep the
    /// returned handle: dropping it stops the callbacks.
    pub fn spawn_callback(&self, callback: impl Callback) -> Result<CallbackThread> {
        CallbackThread::spawn(self.take_events()?, callback)
    }

    /// Starts capturing from a microphone into this conversation, at the session's rate
    /// (`config.sample_rate` is replaced by it). The capture runs until
    /// [`Capture::stop`], until the [`Capture`] is dropped, until the conversation closes,
    /// or until the device fails (reported as [`EventKind::CaptureError`] in this
    /// conversation's events).
    ///
    /// ```no_run
    /// use qwen_asr_realtime::capture::CaptureConfig;
    /// use qwen_asr_realtime::{ConnectParams, Conversation, SessionConfig};
    ///
    /// let conv = Conversation::start(ConnectParams::new(), &SessionConfig::vad())?;
    /// let mic = conv.stream_from_microphone(CaptureConfig::default().device("plughw:1,0"))?;
    /// eprintln!("{}", mic.negotiated());
    /// for event in conv.iter() {
    ///     println!("{}", event.to_json_line());
    /// }
    /// # Ok::<(), qwen_asr_realtime::Error>(())
    /// ```
    ///
    /// [`EventKind::CaptureError`]: crate::EventKind::CaptureError
    #[cfg(feature = "alsa")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alsa")))]
    pub fn stream_from_microphone(&self, config: CaptureConfig) -> Result<Capture> {
        let sender = self.audio_sender();
        let config = config.sample_rate(sender.sample_rate());
        Capture::start(config, sender)
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        self.close();
    }
}
