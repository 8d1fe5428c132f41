//! The I/O thread: the only owner of the socket (tungstenite cannot be read and written from
//! two threads). It sleeps in `poll(2)` on the socket and a wake-up socket that command
//! senders signal, so an idle conversation costs no CPU and an append reaches the wire as soon
//! as it is queued.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use crate::conversation::{Command, Reply, Shared};
use crate::error::Error;
use crate::event::{Event, EventKind, Session};
use crate::transport::Socket;

/// How long we wait for the peer to answer our close frame before dropping the socket.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// While the caller is behind on events and a partial is held back, how often we look again.
const HELD_PARTIAL_RETRY: Duration = Duration::from_millis(50);

pub(crate) struct IoThread {
    pub socket: Socket,
    pub tcp: TcpStream,
    pub wake: UnixStream,
    pub commands: Receiver<Command>,
    pub events: Sender<Event>,
    pub shared: Arc<Shared>,
    pub event_capacity: usize,
}

/// Waiters for the replies that `update_session` and `end_session` block on.
/// Each with the `event_id` of the request, to tell its error from other errors.
#[derive(Default)]
struct Waiters {
    update: Option<(String, Reply<Session>)>,
    finish: Option<(String, Reply<()>)>,
}

impl Waiters {
    fn fail_all(&mut self, code: u16, reason: &str) {
        let err = || Error::ConnectionClosed {
            code,
            reason: reason.to_owned(),
        };
        if let Some((_, w)) = self.update.take() {
            let _ = w.send(Err(err()));
        }
        if let Some((_, w)) = self.finish.take() {
            let _ = w.send(Err(err()));
        }
    }
}

/// The event channel is unbounded so that this thread never blocks on a slow reader, but its
/// length is kept near `capacity`: past it, partial transcripts (each a full snapshot that the
/// next one replaces) are held back and coalesced. Every other event is always delivered.
struct EventOut {
    tx: Sender<Event>,
    capacity: usize,
    held: Option<Event>,
}

fn item_of(e: &Event) -> Option<&str> {
    match &e.kind {
        EventKind::Partial(p) => p.item_id.as_deref(),
        EventKind::Completed(c) => c.item_id.as_deref(),
        EventKind::Failed(f) => f.item_id.as_deref(),
        _ => None,
    }
}

impl EventOut {
    fn push(&mut self, event: Event) {
        if matches!(event.kind, EventKind::Partial(_)) && self.tx.len() >= self.capacity {
            if let Some(old) = self.held.take() {
                if item_of(&old) != item_of(&event) {
                    let _ = self.tx.send(old);
                }
            }
            self.held = Some(event);
            return;
        }
        if let Some(old) = self.held.take() {
            let superseded = matches!(event.kind, EventKind::Completed(_) | EventKind::Failed(_))
                && item_of(&old) == item_of(&event);
            if !superseded {
                let _ = self.tx.send(old);
            }
        }
        // A send fails only when every receiver is gone: then nobody is listening.
        let _ = self.tx.send(event);
    }

    /// Releases a held partial once the reader has caught up; true if one is still held.
    fn retry_held(&mut self) -> bool {
        if self.held.is_some() && self.tx.len() < self.capacity {
            if let Some(e) = self.held.take() {
                let _ = self.tx.send(e);
            }
        }
        self.held.is_some()
    }

    fn flush(&mut self) {
        if let Some(e) = self.held.take() {
            let _ = self.tx.send(e);
        }
    }
}

enum Flow {
    Continue,
    /// The connection is over: the close code and reason to report.
    Ended(u16, String),
}

impl IoThread {
    pub fn run(mut self) {
        let mut out = EventOut {
            tx: self.events.clone(),
            capacity: self.event_capacity,
            held: None,
        };
        let mut waiters = Waiters::default();
        let (code, reason) = self.serve(&mut out, &mut waiters);
        waiters.fail_all(code, &reason);
        let dropped_bytes = self.shutdown_queue();
        if dropped_bytes > 0 {
            let ms = self.shared.bytes_to_ms(dropped_bytes);
            log::warn!("{ms} ms of queued audio was not sent: the connection closed");
            out.push(Event::client(EventKind::AudioDropped {
                ms,
                reason: format!("the connection closed (code {code}) before it was sent"),
            }));
        }
        out.flush();
        log::info!("connection closed ({code} {reason})");
        out.push(Event::client(EventKind::Closed { code, reason }));
    }

    /// Stops accepting commands and counts the audio still queued, so its loss is reported
    /// rather than silent. Senders that raced with `closed` finish their send first.
    fn shutdown_queue(&mut self) -> u64 {
        self.shared.closed.store(true, Ordering::SeqCst);
        let mut dropped = 0u64;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            while let Ok(cmd) = self.commands.try_recv() {
                dropped += cmd.audio_bytes();
                cmd.fail();
            }
            if self.shared.senders_in_flight.load(Ordering::SeqCst) == 0
                || Instant::now() > deadline
            {
                break;
            }
            std::thread::yield_now();
        }
        while let Ok(cmd) = self.commands.try_recv() {
            dropped += cmd.audio_bytes();
            cmd.fail();
        }
        dropped
    }

    fn serve(&mut self, out: &mut EventOut, waiters: &mut Waiters) -> (u16, String) {
        if let Err(e) = self.tcp.set_nonblocking(true) {
            return (1006, format!("cannot make the socket non-blocking: {e}"));
        }
        // Set when we sent a close frame: the code to report, and how long to wait for the echo.
        let mut closing: Option<(u16, String, Instant)> = None;
        let mut write_blocked = false;
        loop {
            if let Flow::Ended(code, reason) = self.read_all(out, waiters) {
                return match closing {
                    Some((ours, why, _)) => (ours, why),
                    None => (code, reason),
                };
            }
            if closing.is_none() {
                match self.write_commands(out, waiters, &mut write_blocked) {
                    Ok(Some((code, reason))) => {
                        let frame = CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.clone().into(),
                        };
                        // Errors here mean the socket is already gone; read_all reports it.
                        let _ = self.socket.close(Some(frame));
                        write_blocked = self.flush_blocked();
                        closing = Some((code, reason, Instant::now() + CLOSE_HANDSHAKE));
                    }
                    Ok(None) => {}
                    Err((code, reason)) => return (code, reason),
                }
            } else {
                write_blocked = self.flush_blocked();
            }
            let held = out.retry_held();
            let mut timeout: Option<Duration> = held.then_some(HELD_PARTIAL_RETRY);
            if let Some((code, reason, deadline)) = &closing {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return (*code, reason.clone());
                }
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            self.wait(write_blocked, closing.is_none(), timeout);
        }
    }

    /// Flushes tungstenite's write buffer; true while the socket cannot take more.
    fn flush_blocked(&mut self) -> bool {
        match self.socket.flush() {
            Ok(()) => false,
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => true,
            // Other errors surface on the next read as the connection's end.
            Err(_) => false,
        }
    }

    /// Reads every message available without blocking.
    fn read_all(&mut self, out: &mut EventOut, waiters: &mut Waiters) -> Flow {
        loop {
            match self.socket.read() {
                Ok(Message::Text(text)) => {
                    let event = Event::parse(text.as_str().to_owned());
                    self.on_event(&event, waiters);
                    log::debug!("event {}", event.type_name());
                    out.push(event);
                }
                Ok(Message::Binary(b)) => {
                    log::warn!("the server sent a binary frame of {} bytes", b.len());
                    out.push(Event::client(EventKind::Binary { len: b.len() }));
                }
                Ok(Message::Close(frame)) => {
                    // tungstenite queues the echo; the next read returns ConnectionClosed.
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                        .unwrap_or((1005, String::new()));
                    self.shared.set_peer_close(code, &reason);
                }
                Ok(_) => {} // ping (answered by tungstenite), pong, raw frame
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                    return Flow::Continue
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::Interrupted => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    let (code, reason) = self.shared.peer_close().unwrap_or((1006, String::new()));
                    return Flow::Ended(code, reason);
                }
                Err(tungstenite::Error::Utf8(e)) => {
                    // The frame is consumed; the stream itself is intact.
                    out.push(Event::client(EventKind::Malformed {
                        reason: format!("a text frame that is not UTF-8: {e}"),
                    }));
                }
                Err(tungstenite::Error::Capacity(e)) => {
                    let reason = format!("incoming message too large: {e}");
                    log::warn!("{reason}");
                    let _ = self.socket.close(Some(CloseFrame {
                        code: CloseCode::Size,
                        reason: "message too large".into(),
                    }));
                    let _ = self.socket.flush();
                    return Flow::Ended(1009, reason);
                }
                Err(e) => {
                    let (code, reason) = self
                        .shared
                        .peer_close()
                        .unwrap_or_else(|| (1006, e.to_string()));
                    return Flow::Ended(code, reason);
                }
            }
        }
    }

    /// Bookkeeping that must happen before the caller sees the event.
    fn on_event(&mut self, event: &Event, waiters: &mut Waiters) {
        match &event.kind {
            EventKind::SessionCreated(s) => {
                if let Some(id) = &s.id {
                    self.shared.set_session_id(id);
                }
            }
            EventKind::SessionUpdated(s) => {
                if let Some((_, w)) = waiters.update.take() {
                    let _ = w.send(Ok(s.clone()));
                }
            }
            EventKind::SessionFinished => {
                if let Some((_, w)) = waiters.finish.take() {
                    let _ = w.send(Ok(()));
                }
            }
            // An error that names another client event (an append, say) is not the answer.
            // One that names none is taken as the answer, as the Python SDK takes any error:
            // the server does not always say which event it refers to (protocol.md §3.1).
            EventKind::Error(e) => {
                let answers = |id: &str| e.event_id.as_deref().is_none_or(|cause| cause == id);
                if let Some((id, w)) = waiters.update.take() {
                    if answers(&id) {
                        let _ = w.send(Err(Error::Server(e.clone())));
                    } else {
                        waiters.update = Some((id, w));
                    }
                } else if let Some((id, w)) = waiters.finish.take() {
                    if answers(&id) {
                        let _ = w.send(Err(Error::Server(e.clone())));
                    } else {
                        waiters.finish = Some((id, w));
                    }
                }
            }
            _ => {}
        }
    }

    /// Sends queued commands while the socket takes them. Returns a close request, or the
    /// connection's end if writing failed.
    #[allow(clippy::type_complexity)]
    fn write_commands(
        &mut self,
        out: &mut EventOut,
        waiters: &mut Waiters,
        write_blocked: &mut bool,
    ) -> std::result::Result<Option<(u16, String)>, (u16, String)> {
        self.drain_wake();
        loop {
            if *write_blocked {
                *write_blocked = self.flush_blocked();
                if *write_blocked {
                    // Leave the rest queued: the bounded queue is the caller's backpressure.
                    return Ok(None);
                }
            }
            let cmd = match self.commands.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Disconnected) => return Ok(Some((1000, "bye".into()))),
            };
            let text = match cmd {
                Command::Frame { text, .. } => text,
                Command::Update {
                    text,
                    event_id,
                    reply,
                } => {
                    waiters.update = reply.map(|r| (event_id, r));
                    text
                }
                Command::Finish {
                    text,
                    event_id,
                    reply,
                } => {
                    waiters.finish = reply.map(|r| (event_id, r));
                    text
                }
                Command::Notify(event) => {
                    out.push(event);
                    continue;
                }
                Command::Close { code, reason } => return Ok(Some((code, reason))),
            };
            match self.socket.write(Message::Text(text.into())) {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => {
                    let (code, reason) = self.shared.peer_close().unwrap_or((1006, e.to_string()));
                    return Err((code, reason));
                }
            }
            *write_blocked = self.flush_blocked();
        }
    }

    /// Consumes the wake-up bytes, then lets senders write a new one. In this order a sender
    /// that queues a command after our last look at the queue always leaves a byte behind for
    /// poll to see; the other order can lose that wake-up and leave the command waiting.
    fn drain_wake(&mut self) {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        self.shared.wake_pending.store(false, Ordering::SeqCst);
    }

    /// Sleeps until the socket is readable (or writable, when a write is pending), a command
    /// arrives, or the timeout passes.
    fn wait(&self, want_write: bool, want_commands: bool, timeout: Option<Duration>) {
        let mut fds = [
            libc::pollfd {
                fd: self.tcp.as_raw_fd(),
                events: libc::POLLIN | if want_write { libc::POLLOUT } else { 0 },
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                // While a write is pending, new commands could not be sent anyway.
                events: if want_commands && !want_write {
                    libc::POLLIN
                } else {
                    0
                },
                revents: 0,
            },
        ];
        let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as i32);
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            // EINTR: just go round again. Anything else would repeat at once; log it.
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                log::error!("poll failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
