//! The outbox: what the handles hand to the I/O thread, and the path of an append. A chunk
//! is cut into frames in the frame arena under the append lock, then either written straight
//! to the socket by the caller's own thread ([`Link::try_send`]) when nothing has to go
//! first, or queued for the I/O thread, which writes it with the same call. The accounting of
//! what was appended, queued and dropped lives here too.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use tungstenite::Utf8Bytes;

use crate::config::{AudioFormat, ConnectParams, SessionConfig};
use crate::error::{Error, Result, TryAppendError};
use crate::io::arena::FrameArena;
use crate::io::link::Link;
use crate::net;
use crate::protocol::{self, AppendAudio, Event, Session, APPEND_OVERHEAD_BYTES};
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
    /// The speech gate has been closed for its idle timeout (`idle_ms` of audio): end the
    /// session cleanly and stay disconnected until something needs the service again.
    #[cfg_attr(not(feature = "gate"), allow(dead_code))]
    Idle { idle_ms: u64 },
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
                let _ = r.send(Err(Error::closed()));
            }
            Command::Finish { reply: Some(r), .. } => {
                let _ = r.send(Err(Error::closed()));
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
    /// Appends carry PCM (a PCM session, or one the library encodes to Opus): sizes are
    /// counted as PCM milliseconds.
    pcm: AtomicBool,
    /// The library encodes the PCM appends to Opus on the I/O thread (see `opus_uplink`):
    /// they always go through the queue, never straight to the socket.
    encode: AtomicBool,
    /// The encoder's settings while `encode` is set.
    #[cfg(feature = "opus")]
    opus: Mutex<Option<crate::opus::OpusConfig>>,
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
    /// Sessions opened: the first, and each one after a reconnect or an idle close.
    pub sessions: AtomicU32,
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
    /// Sessions opened: the first, and one for each reconnect and each reopening after an
    /// idle close (`client.session_reopened`).
    pub sessions: u32,
}

impl Shared {
    pub(crate) fn new(
        params: &ConnectParams,
        commands: Sender<Command>,
        link: Weak<Mutex<Link>>,
        wake: Arc<Wake>,
    ) -> Shared {
        let defaults = SessionConfig::default();
        Shared {
            commands,
            link,
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
            encode: AtomicBool::new(false),
            #[cfg(feature = "opus")]
            opus: Mutex::new(None),
            appended_since_commit: AtomicU64::new(0),
            max_frame_bytes: params.max_frame_bytes,
            sheds_backlog: params.max_backlog.is_some(),
            counters: Counters::default(),
            append_lock: Mutex::new(FrameArena::new()),
        }
    }

    /// Takes the settings that change how appends are cut and counted.
    pub(crate) fn apply_config(&self, config: &SessionConfig) {
        self.manual.store(config.is_manual(), Ordering::SeqCst);
        self.sample_rate
            .store(config.sample_rate, Ordering::Relaxed);
        #[cfg(feature = "opus")]
        {
            *lock(&self.opus) = config.opus;
        }
        let encode = config.encodes_opus();
        self.encode.store(encode, Ordering::SeqCst);
        self.pcm.store(
            encode || config.input_audio_format == AudioFormat::Pcm,
            Ordering::Relaxed,
        );
    }

    /// True when the I/O thread encodes the PCM appends to Opus.
    pub(crate) fn encodes(&self) -> bool {
        self.encode.load(Ordering::SeqCst)
    }

    /// The encoder's settings, while the PCM appends are encoded.
    #[cfg(feature = "opus")]
    pub(crate) fn opus_config(&self) -> Option<crate::opus::OpusConfig> {
        *lock(&self.opus)
    }

    pub(crate) fn is_manual(&self) -> bool {
        self.manual.load(Ordering::SeqCst)
    }

    pub(crate) fn is_pcm(&self) -> bool {
        self.pcm.load(Ordering::Relaxed)
    }

    pub(crate) fn sample_rate(&self) -> u32 {
        self.sample_rate.load(Ordering::Relaxed)
    }

    /// True once the conversation takes no more commands.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

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

    /// Milliseconds of PCM audio in `bytes` at the session's rate (also when the library
    /// encodes it to Opus; 0 for Opus passed through, whose duration cannot be known from its
    /// size).
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
            sessions: c.sessions.load(Ordering::Relaxed),
        }
    }

    /// Runs `send` unless the conversation is closed, tracking it as in flight (see
    /// `senders_in_flight`).
    pub(crate) fn guarded<T, E: From<Error>>(
        &self,
        send: impl FnOnce(&Sender<Command>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.senders_in_flight.fetch_add(1, Ordering::SeqCst);
        let r = if self.closed.load(Ordering::SeqCst) {
            Err(Error::closed().into())
        } else {
            send(&self.commands)
        };
        self.senders_in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    }

    pub(crate) fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            self.wake.signal();
        }
    }

    /// Queues a command behind every append already under way. Every sender but `close`
    /// holds `append_lock` while it queues, so a non-blocking append that found room for its
    /// frames still has it when it pushes them: only the I/O thread takes from the queue.
    pub(crate) fn enqueue(&self, cmd: Command) -> Result<()> {
        let _order = lock(&self.append_lock);
        self.enqueue_unordered(cmd)
    }

    /// Queues without `append_lock`: for `close`, which must not wait behind a blocking
    /// append that waits for a dead link.
    pub(crate) fn enqueue_unordered(&self, cmd: Command) -> Result<()> {
        self.guarded(|tx| tx.send(cmd).map_err(|_| Error::closed()))?;
        self.wake();
        Ok(())
    }

    /// Queues a client event without waiting: `Full` if the queue, or the append lock, is
    /// busy.
    #[cfg_attr(not(feature = "alsa"), allow(dead_code))]
    pub(crate) fn try_enqueue(&self, cmd: Command) -> Result<(), TryAppendError> {
        let _order = try_lock(&self.append_lock).ok_or(TryAppendError::Full)?;
        self.try_queue(cmd)
    }

    /// Pushes a command if the queue has room, and wakes the I/O thread; the caller holds
    /// `append_lock`.
    fn try_queue(&self, cmd: Command) -> Result<(), TryAppendError> {
        self.guarded(|tx| {
            tx.try_send(cmd).map_err(|e| match e {
                TrySendError::Full(_) => TryAppendError::Full,
                TrySendError::Disconnected(_) => TryAppendError::Other(Error::closed()),
            })
        })?;
        self.wake();
        Ok(())
    }

    /// Takes the count of audio appended since the last commit and resets it, in one step
    /// under `append_lock`, so no append can land between the two; then queues the commit.
    pub(crate) fn commit(&self) -> Result<()> {
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

    /// Like [`commit`](Self::commit), without waiting for the append lock or for room in
    /// the queue: `Full` if either is busy, and then nothing changed.
    #[cfg(all(feature = "gate", feature = "alsa"))]
    pub(crate) fn try_commit(&self) -> Result<(), TryAppendError> {
        let _order = try_lock(&self.append_lock).ok_or(TryAppendError::Full)?;
        if self.appended_since_commit.load(Ordering::SeqCst) == 0 {
            return Err(TryAppendError::Other(Error::EmptyCommit));
        }
        self.try_queue(Command::Commit {
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
    pub(crate) fn append(&self, bytes: &[u8], blocking: bool) -> Result<(), TryAppendError> {
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

    pub(crate) fn append_base64(&self, b64: &str, blocking: bool) -> Result<(), TryAppendError> {
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
            // The encoder lives on the I/O thread: PCM to encode must reach it in order.
            if count == 1 && !self.encodes() {
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
                        .map_err(|_| TryAppendError::Other(Error::closed()))
                } else {
                    // Under `append_lock` only the I/O thread takes from the queue, and only
                    // `close` can take the room checked above (the conversation is ending:
                    // whatever was pushed is reported as dropped with the rest).
                    tx.try_send(cmd).map_err(|e| match e {
                        TrySendError::Full(_) => TryAppendError::Full,
                        TrySendError::Disconnected(_) => TryAppendError::Other(Error::closed()),
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
        let mut text = text;
        let mut waited = false;
        loop {
            let Some(mut link) = try_lock(&shared_link) else {
                return Err(text);
            };
            // Under the lock the queue cannot drain behind our back: the I/O thread takes
            // commands only while holding it.
            if !link.is_open() || !self.commands.is_empty() {
                return Err(text);
            }
            match link.try_send(text, self.frame_audio(audio_bytes)) {
                Ok(()) => {
                    // Either the write failed (the link is broken: the I/O thread reports
                    // it, and the frame is in the replay accounting), or part of it waits for
                    // room: the I/O thread writes the rest, unless the next append comes first.
                    if !link.is_open() || !link.flush() {
                        drop(link);
                        self.wake();
                    }
                    return Ok(());
                }
                Err(back) => text = back,
            }
            // The socket is full. Still full right after a wait that said there was room:
            // the write wants something else (a TLS read, say), which only the I/O thread can
            // do. With a backlog bound, queue instead: the I/O thread sheds the oldest queued
            // audio when the link falls too far behind, and a live source must not wait.
            if !blocking || waited || self.sheds_backlog {
                return Err(text);
            }
            // Waiting here rather than in the queue keeps the sending on this thread: queued,
            // every frame would cost the I/O thread a pass, and this thread a wake-up each
            // time the queue had room again.
            waited = crate::io::link::wait_for_room(&shared_link, link, ROOM_WAIT);
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
