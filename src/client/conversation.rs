//! The conversation: the public handle (the SDKs' `OmniRealtimeConversation`), the
//! cloneable [`AudioSender`] that feeds it, and the command queue between them and the I/O
//! thread.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{
    bounded, unbounded, Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError,
};
use tungstenite::Utf8Bytes;

use crate::config::{ApiKey, AudioFormat, ConnectParams, SessionConfig};
use crate::error::{Error, Phase, Result, TryAppendError};
use crate::io::arena::FrameArena;
use crate::io::link::Link;
use crate::io::replay::Replay;
use crate::io::thread::IoThread;
use crate::net;
use crate::protocol::{self, AppendAudio, Event, EventKind, Session, APPEND_OVERHEAD_BYTES};
use crate::sys::lock;
use crate::sys::wake::Wake;

pub(crate) type Reply<T> = Sender<Result<T>>;

/// What the handles ask of the I/O thread, in order.
pub(crate) enum Command {
    /// An append frame carrying `audio_bytes` of audio.
    Frame { text: Utf8Bytes, audio_bytes: u64 },
    /// `input_audio_buffer.commit`.
    Commit { text: String },
    /// `session.update`, optionally answered by `session.updated` or `error`.
    Update {
        text: String,
        event_id: String,
        reply: Option<Reply<Session>>,
    },
    /// `session.finish`, optionally answered by `session.finished` or `error`.
    Finish {
        text: String,
        event_id: String,
        reply: Option<Reply<()>>,
    },
    /// A client event (capture, for example) to deliver in order with the others.
    Notify(Event),
    /// Close the connection with this code.
    Close { code: u16, reason: String },
}

impl Command {
    pub(crate) fn audio_bytes(&self) -> u64 {
        match self {
            Command::Frame { audio_bytes, .. } => *audio_bytes,
            _ => 0,
        }
    }

    /// Answers a waiting caller when the command will never be sent.
    pub(crate) fn fail(self) {
        match self {
            Command::Update { reply: Some(r), .. } => {
                let _ = r.send(Err(Error::Closed));
            }
            Command::Finish { reply: Some(r), .. } => {
                let _ = r.send(Err(Error::Closed));
            }
            _ => {}
        }
    }
}

/// State shared by the handles and the I/O thread.
pub(crate) struct Shared {
    commands: Sender<Command>,
    /// The socket, for appends that can skip the queue; gone once the I/O thread has ended.
    link: Weak<Mutex<Link>>,
    wake: Arc<Wake>,
    /// Set by a sender that signalled the wake-up, cleared by the I/O thread before it drains
    /// the queue: one wake-up write per batch instead of one per append.
    pub wake_pending: AtomicBool,
    /// No more commands are taken (set by the I/O thread on its way out).
    pub closed: AtomicBool,
    /// The caller asked to close: a reconnect in progress gives up, and a connection being
    /// opened is stopped at once.
    pub cancel: net::Cancel,
    /// Senders between their `closed` check and the end of their send; the I/O thread waits
    /// for zero before counting what is left in the queue, so no audio is lost uncounted.
    pub senders_in_flight: AtomicUsize,
    session_id: Mutex<Option<String>>,
    peer_close: Mutex<Option<(u16, String)>>,
    manual: AtomicBool,
    sample_rate: AtomicU32,
    pcm: AtomicBool,
    /// Audio bytes appended since the last commit; only touched under `append_lock`, so a
    /// commit takes the count and resets it in one step.
    appended_since_commit: AtomicU64,
    max_frame_bytes: usize,
    /// `max_backlog` is set: blocking appends queue rather than wait for room in the socket.
    sheds_backlog: bool,
    /// Seen from outside through [`Conversation::stats`].
    pub counters: Counters,
    /// Held while one append's frames are written and sent or queued, so two threads' audio
    /// never interleaves; it holds the memory the frames are written in.
    append_lock: Mutex<FrameArena>,
}

/// The accounting behind [`Stats`]: written by the senders and the I/O thread, read by
/// anyone.
#[derive(Default)]
pub(crate) struct Counters {
    /// Audio bytes the appends took.
    pub appended_bytes: AtomicU64,
    /// Audio bytes of the frames in the command queue.
    pub queued_bytes: AtomicU64,
    /// Audio reported as `client.audio_dropped`, in ms.
    pub dropped_ms: AtomicU64,
    /// Audio sent again after reconnects, in ms.
    pub replayed_ms: AtomicU64,
    /// The backlog at the I/O thread's last look, and the largest seen, in ms.
    pub backlog_ms: AtomicU64,
    pub max_backlog_ms: AtomicU64,
    pub reconnects: AtomicU32,
    /// When the first audio was appended: the start of the real-time clock that tells a
    /// live source falling behind from a file sent faster than real time.
    pub first_append: OnceLock<Instant>,
}

/// The conversation's audio accounting, as of the moment it is read. Everything appended
/// ends as transcribed, or in `dropped_ms` (each drop also raised as
/// `client.audio_dropped`); until then it is in the backlog or waiting for its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Audio handed to the appends, in ms.
    pub appended_ms: u64,
    /// Audio reported lost (`client.audio_dropped`), in ms, the capture's included.
    pub dropped_ms: u64,
    /// Audio sent a second time after reconnects, in ms.
    pub replayed_ms: u64,
    /// Audio handed over that has not yet left the device (queued, in the socket's buffers
    /// or the kernel's send queue), in ms, as of the I/O thread's last look.
    pub backlog_ms: u64,
    /// The largest `backlog_ms` seen.
    pub max_backlog_ms: u64,
    /// Connections replaced after the link died.
    pub reconnects: u32,
}

impl Shared {
    pub(crate) fn set_session_id(&self, id: &str) {
        *lock(&self.session_id) = Some(id.to_owned());
    }

    pub(crate) fn set_peer_close(&self, code: u16, reason: &str) {
        *lock(&self.peer_close) = Some((code, reason.to_owned()));
    }

    pub(crate) fn peer_close(&self) -> Option<(u16, String)> {
        lock(&self.peer_close).clone()
    }

    pub(crate) fn clear_peer_close(&self) {
        *lock(&self.peer_close) = None;
    }

    pub(crate) fn session_id(&self) -> Option<String> {
        lock(&self.session_id).clone()
    }

    /// How the replay window counts a frame of `bytes` of audio. Opus's duration cannot be
    /// known from its size; until it is, Opus bytes count as PCM bytes would, which keeps the
    /// window's memory bounded, and Opus frames are replayed whole.
    pub(crate) fn frame_audio(&self, bytes: u64) -> crate::io::replay::FrameAudio {
        let sample_rate = self.sample_rate.load(Ordering::Relaxed);
        if self.pcm.load(Ordering::Relaxed) {
            crate::io::replay::FrameAudio::Pcm { bytes, sample_rate }
        } else {
            crate::io::replay::FrameAudio::Coded {
                duration_us: bytes.saturating_mul(500_000) / u64::from(sample_rate.max(1)),
            }
        }
    }

    /// Milliseconds of PCM audio in `bytes` at the session's rate (0 for Opus, whose duration
    /// cannot be known from its size).
    pub(crate) fn bytes_to_ms(&self, bytes: u64) -> u64 {
        if !self.pcm.load(Ordering::Relaxed) {
            return 0;
        }
        bytes * 1000 / (2 * u64::from(self.sample_rate.load(Ordering::Relaxed)))
    }

    /// Counts an `AudioDropped` report in the stats.
    pub(crate) fn count_dropped(&self, ms: u64) {
        self.counters.dropped_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// A frame left the queue (sent, dropped or counted as lost).
    pub(crate) fn dequeued(&self, audio_bytes: u64) {
        self.counters
            .queued_bytes
            .fetch_sub(audio_bytes, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            appended_ms: self.bytes_to_ms(c.appended_bytes.load(Ordering::Relaxed)),
            dropped_ms: c.dropped_ms.load(Ordering::Relaxed),
            replayed_ms: c.replayed_ms.load(Ordering::Relaxed),
            backlog_ms: c.backlog_ms.load(Ordering::Relaxed),
            max_backlog_ms: c.max_backlog_ms.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Runs `send` unless the conversation is closed, tracking it as in flight (see
    /// `senders_in_flight`).
    fn guarded<T, E: From<Error>>(
        &self,
        send: impl FnOnce(&Sender<Command>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.senders_in_flight.fetch_add(1, Ordering::SeqCst);
        let r = if self.closed.load(Ordering::SeqCst) {
            Err(Error::Closed.into())
        } else {
            send(&self.commands)
        };
        self.senders_in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    }

    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            self.wake.signal();
        }
    }

    /// Queues a command behind every append already under way. Every sender but `close`
    /// holds `append_lock` while it queues, so a non-blocking append that found room for its
    /// frames still has it when it pushes them: only the I/O thread takes from the queue.
    fn enqueue(&self, cmd: Command) -> Result<()> {
        let _order = lock(&self.append_lock);
        self.enqueue_unordered(cmd)
    }

    /// Queues without `append_lock`: for `close`, which must not wait behind a blocking
    /// append that waits for a dead link.
    fn enqueue_unordered(&self, cmd: Command) -> Result<()> {
        self.guarded(|tx| tx.send(cmd).map_err(|_| Error::Closed))?;
        self.wake();
        Ok(())
    }

    /// Queues a client event without waiting: `Full` if the queue, or the append lock, is
    /// busy.
    fn try_enqueue(&self, cmd: Command) -> Result<(), TryAppendError> {
        let _order = try_lock(&self.append_lock).ok_or(TryAppendError::Full)?;
        self.guarded(|tx| {
            tx.try_send(cmd).map_err(|e| match e {
                TrySendError::Full(_) => TryAppendError::Full,
                TrySendError::Disconnected(_) => TryAppendError::Other(Error::Closed),
            })
        })?;
        self.wake();
        Ok(())
    }

    /// Takes the count of audio appended since the last commit and resets it, in one step
    /// under `append_lock`, so no append can land between the two; then queues the commit.
    fn commit(&self) -> Result<()> {
        let _order = lock(&self.append_lock);
        if self.appended_since_commit.load(Ordering::SeqCst) == 0 {
            return Err(Error::EmptyCommit);
        }
        self.enqueue_unordered(Command::Commit {
            text: protocol::commit_json().0,
        })?;
        self.appended_since_commit.store(0, Ordering::SeqCst);
        Ok(())
    }

    /// The largest whole number of samples whose base64 fits in one frame, in bytes. A
    /// multiple of 6 so that each frame's base64 has no padding and starts on a sample.
    fn max_pcm_bytes_per_frame(&self) -> usize {
        ((self.max_frame_bytes - APPEND_OVERHEAD_BYTES) / 4 * 3) / 6 * 6
    }

    fn check_audio_len(&self, bytes: usize) -> Result<()> {
        if self.pcm.load(Ordering::Relaxed) && bytes % 2 != 0 {
            return Err(Error::InvalidAudio(format!(
                "{bytes} bytes is not a whole number of 16-bit samples (PCM is s16le mono)"
            )));
        }
        Ok(())
    }

    /// Sends `bytes` as one or more append frames, never interleaved with another append.
    /// Blocking: waits for room. Non-blocking: takes all of it or nothing.
    fn append(&self, bytes: &[u8], blocking: bool) -> Result<(), TryAppendError> {
        self.check_audio_len(bytes.len())?;
        if bytes.is_empty() {
            return Ok(());
        }
        let pieces = bytes.chunks(self.max_pcm_bytes_per_frame());
        self.queue_frames(
            pieces.len(),
            bytes.len() as u64,
            blocking,
            pieces.map(AppendAudio::Pcm),
        )
    }

    fn append_base64(&self, b64: &str, blocking: bool) -> Result<(), TryAppendError> {
        let decoded = base64_decoded_len(b64)?;
        self.check_audio_len(decoded)?;
        if decoded == 0 {
            return Ok(());
        }
        // Whole 8-character groups are whole 6-byte groups: frames split there decode to the
        // same bytes, and each holds whole samples.
        let max_chars = (self.max_frame_bytes - APPEND_OVERHEAD_BYTES) / 8 * 8;
        let pieces = b64.as_bytes().chunks(max_chars).map(|p| {
            // Checked as ASCII base64 above, so any split is valid UTF-8.
            AppendAudio::Base64(std::str::from_utf8(p).unwrap_or_default())
        });
        self.queue_frames(pieces.len(), decoded as u64, blocking, pieces)
    }

    /// Sends one append's frames, written as they go: a single frame straight onto the socket
    /// when it can (`write_direct`), else through the queue, all frames of one append together.
    fn queue_frames<'a>(
        &self,
        count: usize,
        total_audio_bytes: u64,
        blocking: bool,
        pieces: impl Iterator<Item = AppendAudio<'a>>,
    ) -> Result<(), TryAppendError> {
        // Every append holds this lock while it sends, single frames too: otherwise another
        // thread's frame could land between the frames of a long append. A non-blocking
        // append must not wait for a long one to be queued, so it reports Full instead.
        let mut arena = if blocking {
            lock(&self.append_lock)
        } else {
            try_lock(&self.append_lock).ok_or(TryAppendError::Full)?
        };
        let mut frames = pieces.map(|audio| (arena.frame(audio), audio.audio_bytes()));
        let queued = self.guarded(|tx| {
            let mut first = None;
            if count == 1 {
                if let Some((text, audio_bytes)) = frames.next() {
                    match self.write_direct(text, audio_bytes, blocking) {
                        Ok(()) => return Ok(false),
                        Err(text) => first = Some((text, audio_bytes)),
                    }
                }
            }
            if !blocking {
                // Only the I/O thread takes from the queue, so room can only grow meanwhile.
                let room = tx.capacity().unwrap_or(usize::MAX) - tx.len();
                if room < count {
                    return Err(TryAppendError::Full);
                }
            }
            for (text, audio_bytes) in first.into_iter().chain(frames) {
                let cmd = Command::Frame { text, audio_bytes };
                // Counted before the push: the I/O thread may take the frame at once.
                let queued_bytes = &self.counters.queued_bytes;
                queued_bytes.fetch_add(audio_bytes, Ordering::Relaxed);
                let sent = if blocking {
                    tx.send(cmd)
                        .map_err(|_| TryAppendError::Other(Error::Closed))
                } else {
                    // Under `append_lock` only the I/O thread takes from the queue, and only
                    // `close` can take the room checked above (the conversation is ending:
                    // whatever was pushed is reported as dropped with the rest).
                    tx.try_send(cmd).map_err(|e| match e {
                        TrySendError::Full(_) => TryAppendError::Full,
                        TrySendError::Disconnected(_) => TryAppendError::Other(Error::Closed),
                    })
                };
                if let Err(e) = sent {
                    queued_bytes.fetch_sub(audio_bytes, Ordering::Relaxed);
                    return Err(e);
                }
            }
            Ok(true)
        })?;
        // Still under `append_lock`: a commit sees this append whole or not at all.
        self.appended_since_commit
            .fetch_add(total_audio_bytes, Ordering::SeqCst);
        self.counters
            .appended_bytes
            .fetch_add(total_audio_bytes, Ordering::Relaxed);
        if self.counters.first_append.get().is_none() {
            let _ = self.counters.first_append.set(Instant::now());
        }
        drop(arena);
        if queued {
            self.wake();
        }
        Ok(())
    }

    /// Writes one append frame to the socket from the caller's thread, if nothing has to
    /// come first: the I/O thread is asleep (the lock is free), the connection is open, no
    /// command is queued. The caller holds `append_lock`. When the socket is full, a blocking
    /// append waits for room here, as a blocking write would; a non-blocking one, like every
    /// append that cannot go straight out, gets its frame back to queue it instead.
    fn write_direct(
        &self,
        text: Utf8Bytes,
        audio_bytes: u64,
        blocking: bool,
    ) -> Result<(), Utf8Bytes> {
        let Some(shared_link) = self.link.upgrade() else {
            return Err(text);
        };
        let mut waited = false;
        loop {
            let Some(mut link) = try_lock(&shared_link) else {
                return Err(text);
            };
            // Under the lock the queue cannot drain behind our back: the I/O thread takes
            // commands only while holding it.
            if !link.open || !self.commands.is_empty() {
                return Err(text);
            }
            if link.write_blocked && !link.flush() {
                // Still full right after poll said there was room: the write wants something
                // else (a TLS read, say), which only the I/O thread can do.
                // With a backlog bound, queue instead: the I/O thread sheds the oldest queued
                // audio when the link falls too far behind, and a live source must not wait.
                if !blocking || !link.write_blocked || waited || self.sheds_backlog {
                    return Err(text);
                }
                // Waiting here rather than in the queue keeps the sending on this thread:
                // queued, every frame would cost the I/O thread a pass, and this thread a
                // wake-up each time the queue had room again. The I/O thread does not wait
                // for room meanwhile (`room_waiters`), so one of us wakes, not both.
                link.room_waiters += 1;
                // Our own handle on the socket: a reconnect may replace the link's meanwhile,
                // and a bare descriptor number could by then name another file.
                let socket = link.poll_handle();
                drop(link);
                waited = crate::io::link::wait_writable(&socket, ROOM_WAIT);
                lock(&shared_link).room_waiters -= 1;
                continue;
            }
            if link
                .write_audio(text, self.frame_audio(audio_bytes))
                .is_err()
            {
                // The connection failed; the I/O thread finds out on its next read. The
                // frame is in the replay accounting already: it is sent again after a
                // reconnect, or reported as sent without a result when the conversation ends.
                link.open = false;
                drop(link);
                self.wake();
                return Ok(());
            }
            if !link.flush() {
                // The socket is full: the I/O thread waits for room and writes the rest,
                // unless the next append comes first and does.
                drop(link);
                self.wake();
            }
            return Ok(());
        }
    }
}

/// How long a blocking append waits for room in the socket before it looks again at the
/// connection's state (closing, reconnecting).
const ROOM_WAIT: Duration = Duration::from_millis(100);

/// Takes a lock if it is free; a poisoned one is taken too (see `lock`).
fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// The decoded length of standard, padded base64, checking the alphabet without decoding.
fn base64_decoded_len(b64: &str) -> Result<usize> {
    let b = b64.as_bytes();
    if b.len() % 4 != 0 {
        return Err(Error::InvalidAudio(format!(
            "base64 length {} is not a multiple of 4",
            b.len()
        )));
    }
    let pad = protocol::base64_padding(b64);
    let body = &b[..b.len() - pad];
    if let Some(i) = body
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'+' || c == b'/'))
    {
        return Err(Error::InvalidAudio(format!(
            "byte {i} of the base64 is not in the standard alphabet"
        )));
    }
    Ok(b.len() / 4 * 3 - pad)
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

/// A cheap, cloneable handle that feeds audio (and client events) into one conversation,
/// for example from a capture thread. It writes a frame to the socket itself when nothing has
/// to go first, and queues it for the I/O thread otherwise; only the blocking appends wait,
/// and only while the link is backed up.
#[derive(Clone)]
pub struct AudioSender {
    shared: Arc<Shared>,
}

impl AudioSender {
    /// Sends 16-bit PCM samples, waiting only while the link is backed up (the socket full,
    /// or the bounded outgoing queue full). Refused in an Opus session.
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

    /// Delivers a client event into the conversation's event stream, in order with the rest;
    /// waits while the outgoing queue is full.
    pub fn notify(&self, kind: EventKind) -> Result<()> {
        self.shared.enqueue(Command::Notify(Event::client(kind)))
    }

    /// Like [`notify`](Self::notify) but never waits: on [`TryAppendError::Full`] nothing
    /// was taken. A capture thread reports a loss exactly when the queue is full, so it must
    /// not wait for room.
    pub fn try_notify(&self, kind: EventKind) -> Result<(), TryAppendError> {
        self.shared
            .try_enqueue(Command::Notify(Event::client(kind)))
    }

    /// The session's sample rate (16000 or 8000), as last configured.
    pub fn sample_rate(&self) -> u32 {
        self.shared.sample_rate.load(Ordering::Relaxed)
    }

    /// True once the conversation no longer takes audio.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    fn check_pcm_session(&self) -> Result<()> {
        if self.shared.pcm.load(Ordering::Relaxed) {
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
    events: Receiver<Event>,
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
    /// in [`events`](Self::events)), after checking that the session serves the model asked
    /// for. The API key is `params.api_key`, else it is resolved from the environment
    /// ([`ApiKey::from_env`]).
    pub fn connect(params: ConnectParams) -> Result<Conversation> {
        let key = match &params.api_key {
            Some(k) => k.clone(),
            None => ApiKey::from_env()?,
        };
        let opened = net::open(&params, &key, None)?;
        let wake = Wake::new()
            .map(Arc::new)
            .map_err(|e| Error::Internal(format!("wake-up handle: {e}")))?;
        let (cmd_tx, cmd_rx) = bounded(params.send_queue_frames);
        // Closed to senders (`open` false) until the I/O thread has set up its replay window.
        let tcp = Arc::new(opened.tcp);
        let link = Arc::new(Mutex::new(Link::new(
            opened.socket,
            Arc::clone(&tcp),
            // Sized by the I/O thread, which knows the session's rate when it starts.
            Replay::new(0),
        )));
        let (ev_tx, ev_rx) = unbounded();
        let defaults = SessionConfig::default();
        let shared = Arc::new(Shared {
            commands: cmd_tx,
            link: Arc::downgrade(&link),
            wake: Arc::clone(&wake),
            wake_pending: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            cancel: net::Cancel::new(Arc::clone(&wake)),
            senders_in_flight: AtomicUsize::new(0),
            session_id: Mutex::new(None),
            peer_close: Mutex::new(None),
            manual: AtomicBool::new(defaults.is_manual()),
            sample_rate: AtomicU32::new(defaults.sample_rate),
            pcm: AtomicBool::new(true),
            appended_since_commit: AtomicU64::new(0),
            max_frame_bytes: params.max_frame_bytes,
            sheds_backlog: params.max_backlog.is_some(),
            counters: Counters::default(),
            append_lock: Mutex::new(FrameArena::new()),
        });
        if let EventKind::SessionCreated(s) = &opened.created.kind {
            if let Some(id) = &s.id {
                shared.set_session_id(id);
            }
        }
        // Cannot fail: we hold the receiver.
        let _ = ev_tx.send(opened.created);
        let io = IoThread {
            link,
            tcp,
            wake,
            commands: cmd_rx,
            events: ev_tx,
            shared: Arc::clone(&shared),
            params: params.clone(),
            key,
        };
        let handle = std::thread::Builder::new()
            .name("qwen-asr-io".into())
            .spawn(move || io.run())
            .map_err(|e| Error::Internal(format!("cannot start the I/O thread: {e}")))?;
        Ok(Conversation {
            shared,
            events: ev_rx,
            io: Mutex::new(Some(handle)),
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

    fn apply_config(&self, config: &SessionConfig) {
        self.shared
            .manual
            .store(config.is_manual(), Ordering::SeqCst);
        self.shared
            .sample_rate
            .store(config.sample_rate, Ordering::Relaxed);
        self.shared.pcm.store(
            config.input_audio_format == AudioFormat::Pcm,
            Ordering::Relaxed,
        );
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
        self.apply_config(config);
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
        self.apply_config(config);
        Ok(())
    }

    fn wait_reply<T>(&self, rx: Receiver<Result<T>>, limit: Duration, phase: Phase) -> Result<T> {
        match rx.recv_timeout(limit) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout {
                phase,
                after: limit,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(self.closed_reason()),
        }
    }

    fn closed_reason(&self) -> Error {
        match self.shared.peer_close() {
            Some((code, reason)) => Error::ConnectionClosed { code, reason },
            None => Error::Closed,
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
        self.shared.append(bytes, true).map_err(into_error)
    }

    /// Sends audio that is already standard padded base64 (checked, not decoded), like
    /// [`append_pcm`](Self::append_pcm).
    pub fn append_base64(&self, b64: &str) -> Result<()> {
        self.shared.append_base64(b64, true).map_err(into_error)
    }

    /// Like [`append_pcm`](Self::append_pcm) but never waits: on
    /// [`TryAppendError::Full`] (no room in the queue, or another thread in the middle of an
    /// append) nothing was taken.
    pub fn try_append_pcm(&self, samples: &[i16]) -> Result<(), TryAppendError> {
        self.audio_sender().try_append_pcm(samples)
    }

    /// Commits the audio appended since the last commit as one utterance (manual mode only).
    pub fn commit(&self) -> Result<()> {
        if !self.shared.manual.load(Ordering::SeqCst) {
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
        self.shared.closed.load(Ordering::SeqCst)
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
        AudioSender {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The event stream. Receivers are cheap clones; each event goes to one of them. The
    /// stream ends (disconnects) after `client.closed`.
    pub fn events(&self) -> Receiver<Event> {
        self.events.clone()
    }

    /// The next event, waiting for it; `None` once the stream has ended.
    pub fn recv(&self) -> Option<Event> {
        self.events.recv().ok()
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> std::result::Result<Event, RecvTimeoutError> {
        self.events.recv_timeout(timeout)
    }

    /// The next event if one is ready.
    pub fn try_recv(&self) -> std::result::Result<Event, TryRecvError> {
        self.events.try_recv()
    }

    /// Iterates over events until the stream ends (after `client.closed`).
    pub fn iter(&self) -> crossbeam_channel::Iter<'_, Event> {
        self.events.iter()
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_checked_without_decoding() {
        assert_eq!(base64_decoded_len("").unwrap(), 0);
        assert_eq!(base64_decoded_len("AAAA").unwrap(), 3);
        assert_eq!(base64_decoded_len("AAA=").unwrap(), 2);
        assert_eq!(base64_decoded_len("AA==").unwrap(), 1);
        assert!(base64_decoded_len("AAA").is_err());
        assert!(base64_decoded_len("AA-A").is_err());
        assert!(base64_decoded_len("A=AA").is_err());
    }
}
