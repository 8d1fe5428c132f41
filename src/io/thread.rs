//! The I/O thread: it reads the socket, sends what is queued, keeps the connection alive and
//! replaces it when it dies. It sleeps in `poll(2)` on the socket and a wake-up fd that
//! command senders signal, with the next keepalive deadline as its only timeout, so an idle
//! conversation costs no CPU. tungstenite cannot be used from two threads at once, so the
//! socket sits behind one lock (`link`): senders take it, when it is free, to write their own
//! append frames while this thread sleeps. When the link dies it reconnects, if asked to, and
//! replays what had no result yet.
//!
//! Sessions while nobody speaks: on the speech gate's `Command::Idle` it ends the session
//! (`session.finish`, `session.finished`, close 1000) and goes dormant: no socket, no pings,
//! no timer, asleep on the wake-up fd alone. The next command that needs the service (audio, a
//! commit, an update) opens a new session through the same path as a reconnect
//! (`open_session`), and what was queued meanwhile follows it. A server that closes the session
//! while the gate is closed and every result is in leads to the same dormant state.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Bytes, Message, Utf8Bytes};

use crate::config::{ApiKey, ConnectParams};
use crate::error::Error;
use crate::io::link::Link;
use crate::io::opus_uplink::OpusUplink;
use crate::io::outbox::{Command, Reply, Shared};
use crate::io::replay::Replay;
use crate::net::{self, Opened, Socket};
use crate::protocol::{self, Event, EventKind, Session};
use crate::sys::lock;
use crate::sys::wake::Wake;

/// How long we wait for the peer to answer our close frame before dropping the socket.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// How long a lost link with the gate open waits for the caller's next command, which tells
/// whether the gate had closed (see `await_gate_notice`).
const GATE_NOTICE_WAIT: Duration = Duration::from_secs(1);

/// While the caller is behind on events and a partial is held back, how often we look again.
const HELD_PARTIAL_RETRY: Duration = Duration::from_millis(50);

/// Close codes after which a new connection may well work (RFC 6455 §7.4.1 and IANA):
/// going away, abnormal end, server error, restart, try again later, bad gateway.
const RETRYABLE_CLOSE_CODES: [u16; 6] = [1001, 1006, 1011, 1012, 1013, 1014];

pub(crate) struct IoThread {
    /// The socket, shared with senders that write their own frames (see `link`).
    pub link: Arc<Mutex<Link>>,
    pub tcp: Arc<TcpStream>,
    pub wake: Arc<Wake>,
    pub commands: Receiver<Command>,
    pub events: Sender<Event>,
    pub shared: Arc<Shared>,
    pub params: ConnectParams,
    pub key: ApiKey,
}

/// Waiters for the replies that `update_session` and `end_session` block on, each with the
/// `event_id` of its request, to tell its error from other errors.
#[derive(Default)]
struct Waiters {
    update: Option<(String, Reply<Session>)>,
    finish: Option<(String, Reply<()>)>,
}

impl Waiters {
    fn fail_all(&mut self, code: u16, reason: &str) {
        let err = || Error::Closed {
            code: Some(code),
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
    /// Where every `AudioDropped` that passes is counted.
    shared: Arc<Shared>,
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
        if let EventKind::AudioDropped { ms, .. } = &event.kind {
            self.shared.count_dropped(*ms);
        }
        // The link's state says nothing about the transcript: it passes a held partial
        // rather than release it, or a sender that keeps the link busy would undo the
        // coalescing.
        if matches!(
            event.kind,
            EventKind::LinkBehind { .. } | EventKind::LinkCaughtUp { .. }
        ) {
            let _ = self.tx.send(event);
            return;
        }
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

/// What the conversation carries from one connection to the next.
struct State {
    out: EventOut,
    waiters: Waiters,
    /// The last `session.update` sent, to configure a new session the same way.
    last_update: Option<Utf8Bytes>,
    /// `session.finish` was sent and `session.finished` has not come.
    finish_sent: bool,
    /// A command taken from the queue to get at the frames behind it that must go first
    /// (see `shed_backlog`); sent before anything else still queued.
    held_cmd: Option<Command>,
    /// The backlog passed `behind_threshold`: the level of the next `client.link_behind`
    /// report, and the largest backlog seen meanwhile.
    behind: Option<(u64, u64)>,
    /// The Opus encoder, for sessions whose PCM the library encodes.
    uplink: OpusUplink,
    /// The speech gate's state as of the last `client.gate_*` passed on (`None`: no gate).
    gate_open: Option<bool>,
    /// The caller sent `session.finish`: the end is theirs, never an idle close.
    caller_finished: bool,
    /// The session is being ended because nobody speaks (see `start_idle_end`).
    idle_end: Option<IdleEnd>,
    /// Utterances of this session started (`speech_started`) and not yet completed or
    /// failed.
    open_items: u32,
}

/// An idle end under way: `session.finish` sent, waiting for `session.finished` (at most
/// until `deadline`) before the close.
struct IdleEnd {
    idle_ms: u64,
    deadline: Instant,
    finished: bool,
}

/// How a connection ended.
enum LinkEnd {
    /// The caller closed it (or the server's end after our close).
    Closed(u16, String),
    /// We ended an idle session: every result is in; the conversation goes on, dormant.
    Idle {
        idle_ms: u64,
        code: u16,
        reason: String,
    },
    /// The peer or the network ended it; `retryable` if a new connection may work.
    Lost {
        code: u16,
        reason: String,
        retryable: bool,
    },
}

enum Flow {
    Continue { got_frames: bool },
    Ended(LinkEnd),
}

/// How often the backlog is looked at again while the link is behind: the kernel drains its
/// queue without waking us.
const BEHIND_RECHECK: Duration = Duration::from_millis(250);

fn lost(code: u16, reason: String) -> LinkEnd {
    LinkEnd::Lost {
        retryable: RETRYABLE_CLOSE_CODES.contains(&code),
        code,
        reason,
    }
}

/// A factor in [1 - jitter, 1 + jitter], from std's randomly keyed hasher.
fn jittered(d: Duration, jitter: f64) -> Duration {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    let unit = (RandomState::new().hash_one(Instant::now()) >> 11) as f64 / (1u64 << 53) as f64;
    let jitter = jitter.clamp(0.0, 1.0);
    d.mul_f64(1.0 - jitter + 2.0 * jitter * unit)
}

impl IoThread {
    /// Runs the conversation to its end. Whatever way it ends, a panic included, the audio
    /// without a result is reported and `client.closed` is the last event.
    pub fn run(mut self) {
        let mut st = State {
            out: EventOut {
                tx: self.events.clone(),
                capacity: self.params.event_capacity,
                held: None,
                shared: Arc::clone(&self.shared),
            },
            waiters: Waiters::default(),
            last_update: None,
            finish_sent: false,
            held_cmd: None,
            behind: None,
            uplink: OpusUplink::new(),
            gate_open: None,
            caller_finished: false,
            idle_end: None,
            open_items: 0,
        };
        let served =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve_all(&mut st)));
        let (code, reason) = served.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            log::error!("the I/O thread panicked: {what}");
            (
                1011,
                format!("internal error: the I/O thread panicked: {what}"),
            )
        });
        self.finish(&mut st, code, reason);
    }

    /// Serves connections, replacing lost ones if asked to, until the conversation ends;
    /// returns how.
    fn serve_all(&mut self, st: &mut State) -> (u16, String) {
        // Without reconnecting the window keeps no frames, only the accounting.
        let window_ms = self.params.reconnect.map_or(0, |p| {
            u64::try_from(p.replay_window.as_millis()).unwrap_or(u64::MAX)
        });
        lock(&self.link).set_replay(Replay::new(window_ms));
        loop {
            let end = self.serve(st);
            if matches!(end, LinkEnd::Lost { .. }) {
                self.take_queued_notices(st);
                self.await_gate_notice(st);
            }
            let ending = st.idle_end.take();
            let idle = ending.as_ref().map(|i| i.idle_ms);
            let closed = match end {
                LinkEnd::Closed(code, reason) => return (code, reason),
                LinkEnd::Idle {
                    idle_ms,
                    code,
                    reason,
                } => EventKind::SessionIdleClosed {
                    session_id: self.shared.session_id(),
                    idle_ms: Some(idle_ms),
                    by_server: false,
                    code,
                    reason,
                },
                LinkEnd::Lost { code, reason, .. }
                    if self.ended_while_idle(st, ending.as_ref()) =>
                {
                    EventKind::SessionIdleClosed {
                        session_id: self.shared.session_id(),
                        idle_ms: idle,
                        by_server: idle.is_none(),
                        code,
                        reason,
                    }
                }
                LinkEnd::Lost {
                    code,
                    reason,
                    retryable,
                } => {
                    if !retryable || self.params.reconnect.is_none() {
                        return (code, reason);
                    }
                    if let Some(end) = self.reconnect(st, code, &reason) {
                        return end;
                    }
                    continue;
                }
            };
            log::info!("session ended while idle; no connection until audio needs one");
            st.out.push(Event::client(closed));
            st.out.flush();
            self.shared.counters.backlog_ms.store(0, Ordering::Relaxed);
            if let Some(end) = self.dormant(st) {
                return end;
            }
        }
    }

    /// Passes on the client events at the head of the queue (the gate's openings and
    /// closings, a capture's reports) up to the gate's next close, and keeps the first other
    /// command for what comes next. They were raised before anything still queued, so they say what state the
    /// link ended in: a server that closes an idle session right after the gate's last audio
    /// is otherwise seen before the gate's close, which is queued behind that audio, and the
    /// idle close would look like a lost link.
    fn take_queued_notices(&self, st: &mut State) {
        loop {
            let cmd = match st.held_cmd.take() {
                Some(cmd) => cmd,
                None => match self.commands.try_recv() {
                    Ok(cmd) => cmd,
                    Err(_) => return,
                },
            };
            match cmd {
                Command::Notify(event) => {
                    let gate_closed = matches!(event.kind, EventKind::GateClosed { .. });
                    note_gate(&event, st, lock(&self.link).replay_mut());
                    st.out.push(event);
                    // The state the audio sent ended in: what follows (the next opening) is
                    // about audio not sent yet, and waits in the queue for the next session.
                    if gate_closed {
                        return;
                    }
                }
                other => {
                    st.held_cmd = Some(other);
                    return;
                }
            }
        }
    }

    /// After a lost link with the gate open and nothing queued: the gate's close may be on
    /// its way. The caller appends the gate's last audio and only then queues
    /// `client.gate_closed`, so a server that closes the idle session at once can be seen
    /// between the two (a slow or busy caller's thread). Waits for the caller's next command,
    /// at most `GATE_NOTICE_WAIT`: an open gate sends audio every chunk, so this costs at
    /// most a chunk's time when the gate really is open.
    fn await_gate_notice(&self, st: &mut State) {
        if st.gate_open != Some(true) || st.held_cmd.is_some() {
            return;
        }
        let deadline = Instant::now() + GATE_NOTICE_WAIT;
        loop {
            // Drained before the look at the queue, so that a command queued after the look
            // signals the fd again (see `drain_wake`).
            self.drain_wake();
            self.take_queued_notices(st);
            let left = deadline.saturating_duration_since(Instant::now());
            if st.gate_open != Some(true)
                || st.held_cmd.is_some()
                || left.is_zero()
                || self.shared.cancel.is_requested()
            {
                return;
            }
            poll(None, Some(self.wake.fd()), Some(left));
        }
    }

    /// A connection that ended with the gate closed, every result in and the caller not
    /// ending the conversation lost nothing: an idle session the server closed (or ours,
    /// whose close the server made first). Not an error: a new session opens when needed.
    fn ended_while_idle(&self, st: &State, ending: Option<&IdleEnd>) -> bool {
        // Our idle end, answered: session.finished acknowledged everything.
        if ending.is_some_and(|e| e.finished) && lock(&self.link).replay().pending_ms() == 0 {
            return true;
        }
        let quiet = (ending.is_some() || st.gate_open == Some(false))
            && !st.caller_finished
            && !st.finish_sent
            && st.open_items == 0;
        quiet && {
            let mut link = lock(&self.link);
            link.replay().pending_ms() == 0 || link.replay_mut().settle()
        }
    }

    /// Sleeps, with no connection, no pings and no timer, until a command needs the
    /// service: client events are passed on meanwhile, and a `session.finish` is answered at
    /// once (the session is finished already). Then opens a new session for it; `None` once
    /// it is open, else how the conversation ends.
    fn dormant(&mut self, st: &mut State) -> Option<(u16, String)> {
        loop {
            if self.shared.cancel.is_requested() {
                // What is still queued is reported as dropped on the way out.
                return Some((1000, "bye".into()));
            }
            // A command taken from the queue before the link ended comes first.
            let next = match st.held_cmd.take() {
                Some(cmd) => Ok(cmd),
                None => self.commands.try_recv(),
            };
            match next {
                Ok(Command::Notify(event)) => {
                    note_gate(&event, st, lock(&self.link).replay_mut());
                    st.out.push(event);
                }
                Ok(Command::Idle { .. }) => {}
                Ok(Command::Finish { reply, .. }) => {
                    if let Some(r) = reply {
                        let _ = r.send(Ok(()));
                    }
                }
                Ok(Command::Close { code, reason }) => return Some((code, reason)),
                Ok(cmd) => {
                    // Audio, a commit or an update: it goes first on the new connection.
                    st.held_cmd = Some(cmd);
                    return self.reopen(st);
                }
                Err(TryRecvError::Disconnected) => return Some((1000, "bye".into())),
                Err(TryRecvError::Empty) => {
                    poll(None, Some(self.wake.fd()), None);
                    self.drain_wake();
                }
            }
        }
    }

    /// Opens a new session after an idle close, retrying as the reconnect policy says (once
    /// without one). `None` once it is open; else how the conversation ends (what was queued
    /// for it is then reported as dropped).
    fn reopen(&mut self, st: &mut State) -> Option<(u16, String)> {
        let started = Instant::now();
        let policy = self.params.reconnect;
        let attempts = policy.map_or(1, |p| p.max_attempts.max(1));
        let mut last_error = String::new();
        let mut tried = 0;
        for attempt in 1..=attempts {
            if let (Some(p), true) = (policy, attempt > 1) {
                if self.sleep_unless_closed(jittered(p.backoff(attempt - 1), p.jitter)) {
                    return Some((1000, "bye".into()));
                }
            }
            tried = attempt;
            match self.open_session(st) {
                Ok(replayed_ms) => {
                    let connect_ms =
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    log::info!("new session after an idle close in {connect_ms} ms");
                    st.out.push(Event::client(EventKind::SessionReopened {
                        session_id: self.shared.session_id(),
                        connect_ms,
                        attempts: attempt,
                    }));
                    let c = &self.shared.counters;
                    c.replayed_ms.fetch_add(replayed_ms, Ordering::Relaxed);
                    let lost_ms = lock(&self.link).replay_mut().take_lost_ms();
                    if lost_ms > 0 {
                        st.out.push(Event::client(EventKind::AudioDropped {
                            ms: lost_ms,
                            reason:
                                "sent before an idle close whose session ended without its result"
                                    .into(),
                        }));
                    }
                    return None;
                }
                Err(e) => {
                    log::warn!("opening a new session, attempt {attempt}: {e}");
                    last_error = e.to_string();
                    if self.shared.cancel.is_requested() {
                        return Some((1000, "bye".into()));
                    }
                    if !e.is_retryable() {
                        break;
                    }
                }
            }
        }
        st.out.push(Event::client(EventKind::ReconnectFailed {
            attempts: tried,
            error: last_error.clone(),
        }));
        Some((
            1006,
            format!("could not open a new session after an idle close: {last_error}"),
        ))
    }

    /// A new connection and session, configured and resumed (see `resume`): the one way a
    /// session starts after the first, for reconnects and idle reopenings alike. Returns the
    /// milliseconds replayed.
    fn open_session(&mut self, st: &mut State) -> Result<u64, Error> {
        st.open_items = 0;
        let opened = net::open(&self.params, &self.key, Some(&self.shared.cancel))?;
        let replayed_ms = self.resume(st, opened)?;
        self.shared
            .counters
            .sessions
            .fetch_add(1, Ordering::Relaxed);
        Ok(replayed_ms)
    }

    /// Ends the session because the gate has been closed for `idle_ms` of audio:
    /// `session.finish` now (its `session.finished` acknowledges every result), the close
    /// once it comes or the end-session timeout passes. Senders queue from here on: their
    /// audio belongs to the next session. False if the caller is ending the conversation
    /// already.
    fn start_idle_end(
        &self,
        link: &mut Link,
        st: &mut State,
        idle_ms: u64,
    ) -> Result<bool, LinkEnd> {
        if st.caller_finished || st.finish_sent || st.idle_end.is_some() {
            return Ok(false);
        }
        log::info!("the gate has been closed for {idle_ms} ms of audio: ending the session");
        let (text, _) = protocol::finish_json();
        link.set_open(false);
        link.replay_mut().finish();
        st.idle_end = Some(IdleEnd {
            idle_ms,
            deadline: Instant::now() + self.params.timeouts.end_session,
            finished: false,
        });
        // An Opus session's stream ends with its end-of-stream page before the finish; the
        // next session starts a stream of its own (`resume`).
        let written = st.uplink.before_finish(link).and_then(|()| {
            link.write(Message::Text(text.into()))
                .map_err(|e| e.to_string())
        });
        if let Err(e) = written {
            let (code, reason) = self.shared.peer_close().unwrap_or((1006, e));
            return Err(lost(code, reason));
        }
        link.flush();
        Ok(true)
    }

    /// Once the idle end's `session.finished` has come (or its time is up, or the caller
    /// closes), starts the close.
    fn advance_idle_end(&self, link: &mut Link, st: &State, p: &mut Pass) {
        let Some(ie) = &st.idle_end else {
            return;
        };
        let now = Instant::now();
        if p.closing.is_some()
            || !(ie.finished || now >= ie.deadline || self.shared.cancel.is_requested())
        {
            return;
        }
        if !ie.finished {
            log::warn!("no session.finished for the idle close; closing anyway");
        }
        let reason = "idle".to_owned();
        link.close(CloseFrame {
            code: CloseCode::Normal,
            reason: reason.clone().into(),
        });
        p.closing = Some((1000, reason, now + CLOSE_HANDSHAKE));
    }

    /// The end of the conversation: waiters answered, the audio that will never have a
    /// result reported, then `client.closed`.
    fn finish(&mut self, st: &mut State, code: u16, reason: String) {
        st.waiters.fail_all(code, &reason);
        let mut queued = self.shutdown_queue();
        if let Some(cmd) = st.held_cmd.take() {
            self.shared.dequeued(cmd.audio_bytes());
            queued += cmd.audio_bytes();
            cmd.fail();
        }
        if queued > 0 {
            let ms = self.shared.bytes_to_ms(queued);
            log::warn!("{ms} ms of queued audio was not sent: the connection closed");
            st.out.push(Event::client(EventKind::AudioDropped {
                ms,
                reason: format!("the connection closed (code {code}) before it was sent"),
            }));
        }
        // Whichever way it ended, a close by the caller included: audio sent whose result
        // never came is lost to the caller, and must be said to be.
        let lost = {
            let mut link = lock(&self.link);
            link.set_open(false);
            link.replay().unacked_ms() + link.replay_mut().take_lost_ms()
        };
        if lost > 0 {
            log::warn!("{lost} ms of sent audio had no result when the connection closed");
            st.out.push(Event::client(EventKind::AudioDropped {
                ms: lost,
                reason: "sent, but the connection closed before its result came back".into(),
            }));
        }
        st.out.flush();
        self.shared.counters.backlog_ms.store(0, Ordering::Relaxed);
        log::info!("connection closed ({code} {reason})");
        st.out
            .push(Event::client(EventKind::Closed { code, reason }));
    }

    /// Stops accepting commands and counts the audio still queued, so its loss is reported
    /// rather than silent. Senders that raced with `closed` finish their send first.
    fn shutdown_queue(&mut self) -> u64 {
        self.shared.closed.store(true, Ordering::SeqCst);
        let mut dropped = 0u64;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            while let Ok(cmd) = self.commands.try_recv() {
                self.shared.dequeued(cmd.audio_bytes());
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
            self.shared.dequeued(cmd.audio_bytes());
            dropped += cmd.audio_bytes();
            cmd.fail();
        }
        dropped
    }

    /// Runs one connection until it ends.
    fn serve(&self, st: &mut State) -> LinkEnd {
        if let Err(e) = self.tcp.set_nonblocking(true) {
            return lost(1006, format!("cannot make the socket non-blocking: {e}"));
        }
        if let Some(bytes) = self.params.send_buffer_bytes {
            // Not fatal: the link works, only its backlog is less bounded.
            match crate::sys::set_send_buffer(self.tcp.as_raw_fd(), bytes) {
                Ok(got) => log::debug!("socket send buffer: {got} bytes"),
                Err(e) => log::warn!("cannot cap the socket's send buffer: {e}"),
            }
        }
        let mut p = Pass {
            last_rx: Instant::now(),
            next_ping: self
                .params
                .keepalive
                .ping_interval
                .map(|i| Instant::now() + i),
            closing: None,
            // Everything, the first time round.
            ready: Ready {
                socket: true,
                wake: true,
            },
        };
        // A command held over from before this connection (the one that woke a dormant
        // conversation, say) goes before any sender's own write: senders queue until it is out.
        let mut opened = st.held_cmd.is_none();
        if opened {
            lock(&self.link).set_open(true);
        }
        loop {
            // Held for the whole pass, and let go of while we sleep: senders write their own
            // frames only in between.
            let mut link = lock(&self.link);
            match self.pass(&mut link, st, &mut p) {
                Ok((want_write, timeout)) => {
                    if !opened
                        && st.held_cmd.is_none()
                        && !link.is_write_blocked()
                        && p.closing.is_none()
                        && st.idle_end.is_none()
                    {
                        link.set_open(true);
                        opened = true;
                    }
                    drop(link);
                    p.ready = self.wait(want_write, p.closing.is_none(), timeout);
                }
                Err(end) => {
                    link.set_open(false);
                    return end;
                }
            }
        }
    }

    /// One look at everything after a wake-up: incoming messages, keepalive, queued commands.
    /// Returns whether to wait for room in the socket, and for how long to sleep at most.
    fn pass(
        &self,
        link: &mut Link,
        st: &mut State,
        p: &mut Pass,
    ) -> Result<(bool, Option<Duration>), LinkEnd> {
        let ka = self.params.keepalive;
        // Read only when poll said so: after a read that ended in WouldBlock, no whole
        // message is left in tungstenite's buffer (nor in TLS's), so there is nothing to find.
        let flow = if p.ready.socket {
            self.read_all(link, st)
        } else {
            Flow::Continue { got_frames: false }
        };
        match flow {
            Flow::Ended(end) => {
                return Err(match p.closing.take() {
                    Some((ours, why, _)) => ours_end(st, ours, why),
                    None => end,
                })
            }
            Flow::Continue { got_frames: true } => p.last_rx = Instant::now(),
            Flow::Continue { got_frames: false } => {}
        }
        let now = Instant::now();
        // No pings once either side has started closing: tungstenite refuses to send
        // then, and the peer's close is a normal end, not a dead link.
        let open = p.closing.is_none() && link.can_write();
        if let (Some(interval), true) = (ka.ping_interval, open) {
            if now.duration_since(p.last_rx) >= ka.dead_peer_timeout {
                let reason = format!(
                    "nothing from the server for {:.1} s (dead_peer_timeout)",
                    ka.dead_peer_timeout.as_secs_f64()
                );
                log::warn!("{reason}");
                return Err(lost(1006, reason));
            }
            if p.next_ping.is_some_and(|t| now >= t) {
                if let Err(e) = link.write(Message::Ping(Bytes::new())) {
                    return Err(lost(1006, format!("ping failed: {e}")));
                }
                link.flush();
                p.next_ping = Some(now + interval);
            }
        }
        if p.closing.is_none() && st.idle_end.is_none() {
            let close = self.write_commands(link, st, p.ready.wake)?;
            self.shed_backlog(link, st);
            self.track_backlog(link, st);
            if let Some((code, reason)) = close {
                // Errors here mean the socket is already gone; read_all reports it.
                link.close(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.clone().into(),
                });
                p.closing = Some((code, reason, Instant::now() + CLOSE_HANDSHAKE));
            }
        } else {
            if p.ready.wake && p.closing.is_none() {
                // Ending an idle session: commands wait for the next one; only a close by the
                // caller (seen by `advance_idle_end`) cuts the wait short.
                self.drain_wake();
            }
            link.flush();
        }
        self.advance_idle_end(link, st, p);
        // The earliest deadline, if any (no allocation: this runs once per wake-up).
        let mut deadline: Option<Instant> = None;
        let mut at = |d: Instant| deadline = Some(deadline.map_or(d, |x| x.min(d)));
        if st.out.retry_held() {
            at(Instant::now() + HELD_PARTIAL_RETRY);
        }
        if st.behind.is_some() {
            at(Instant::now() + BEHIND_RECHECK);
        }
        if let Some((code, reason, until)) = &p.closing {
            if Instant::now() >= *until {
                return Err(ours_end(st, *code, reason.clone()));
            }
            at(*until);
        } else if let Some(ie) = &st.idle_end {
            at(ie.deadline);
        }
        if p.closing.is_none() && ka.ping_interval.is_some() {
            if let Some(t) = p.next_ping {
                at(t);
            }
            at(p.last_rx + ka.dead_peer_timeout);
        }
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        // A sender waiting for room writes the rest itself (see `Shared::write_direct`).
        Ok((link.is_write_blocked() && !link.has_room_waiters(), timeout))
    }

    /// Reads every message available without blocking.
    fn read_all(&self, link: &mut Link, st: &mut State) -> Flow {
        let mut got_frames = false;
        loop {
            let message = match link.read() {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                    return Flow::Continue { got_frames };
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::Interrupted => continue,
                Err(tungstenite::Error::Utf8(e)) => {
                    // The frame is consumed; the stream itself is intact.
                    got_frames = true;
                    st.out.push(Event::client(EventKind::Malformed {
                        reason: format!("a text frame that is not UTF-8: {e}"),
                    }));
                    continue;
                }
                Err(tungstenite::Error::Capacity(e)) => {
                    let reason = format!("incoming message too large: {e}");
                    log::warn!("{reason}");
                    link.close(CloseFrame {
                        code: CloseCode::Size,
                        reason: "message too large".into(),
                    });
                    // Not retryable: the same server would send the same message again.
                    return Flow::Ended(LinkEnd::Lost {
                        code: 1009,
                        reason,
                        retryable: false,
                    });
                }
                Err(e) => {
                    let (code, reason) = match self.shared.peer_close() {
                        Some(close) => close,
                        None => match e {
                            tungstenite::Error::ConnectionClosed
                            | tungstenite::Error::AlreadyClosed => {
                                (1006, "the connection ended without a close frame".into())
                            }
                            e => (1006, e.to_string()),
                        },
                    };
                    return Flow::Ended(lost(code, reason));
                }
            };
            got_frames = true;
            match message {
                Message::Text(text) => {
                    #[cfg(test)]
                    if text.as_str() == tests::PANIC_FRAME {
                        panic!("a test asked the I/O thread to panic");
                    }
                    let mut event = Event::parse(text.as_str().to_owned());
                    self.on_event(&event, st, link.replay_mut());
                    place_on_device(&mut event, link.replay());
                    log::debug!("event {}", event.type_name());
                    st.out.push(event);
                }
                Message::Binary(b) => {
                    log::warn!("the server sent a binary frame of {} bytes", b.len());
                    st.out
                        .push(Event::client(EventKind::Binary { len: b.len() }));
                }
                Message::Close(frame) => {
                    // tungstenite queues the echo; the next read returns ConnectionClosed.
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                        .unwrap_or((1005, String::new()));
                    self.shared.set_peer_close(code, &reason);
                }
                _ => {} // ping (answered by tungstenite), pong, raw frame
            }
        }
    }

    /// Bookkeeping that must happen before the caller sees the event.
    fn on_event(&self, event: &Event, st: &mut State, replay: &mut Replay) {
        replay.observe(&event.kind);
        match &event.kind {
            EventKind::SpeechStarted { .. } => st.open_items = st.open_items.saturating_add(1),
            EventKind::Completed(_) | EventKind::Failed(_) => {
                st.open_items = st.open_items.saturating_sub(1)
            }
            EventKind::SessionFinished => st.open_items = 0,
            _ => {}
        }
        let waiters = &mut st.waiters;
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
                st.finish_sent = false;
                if let Some(ie) = &mut st.idle_end {
                    ie.finished = true;
                }
                if let Some((_, w)) = waiters.finish.take() {
                    let _ = w.send(Ok(()));
                }
            }
            // An error that names another client event (an append, say) is not the answer.
            // One that names none is taken as the answer, as the Python SDK takes any error:
            // the server does not always say which event it refers to (its `error.event_id`
            // is optional).
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

    /// Sends queued commands while the socket takes them: frames queued together go out in
    /// one write (tungstenite buffers up to `write_buffer_size`), flushed once the queue is
    /// empty. Returns a close request, or the connection's end if writing failed.
    fn write_commands(
        &self,
        link: &mut Link,
        st: &mut State,
        woken: bool,
    ) -> Result<Option<(u16, String)>, LinkEnd> {
        if woken {
            self.drain_wake();
        }
        loop {
            if link.is_write_blocked() {
                link.flush();
                if link.is_write_blocked() {
                    // Leave the rest queued: the bounded queue is the caller's backpressure.
                    return Ok(None);
                }
            }
            let cmd = match st.held_cmd.take() {
                Some(c) => c,
                None => match self.commands.try_recv() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) => {
                        link.flush();
                        return Ok(None);
                    }
                    Err(TryRecvError::Disconnected) => return Ok(Some((1000, "bye".into()))),
                },
            };
            let written = match cmd {
                Command::Frame { text, audio_bytes } => {
                    match st.uplink.send_frame(link, &self.shared, text, audio_bytes) {
                        Ok(()) => self.shared.dequeued(audio_bytes),
                        // Still full: the frame keeps its place at the head of the queue.
                        Err(text) => {
                            st.held_cmd = Some(Command::Frame { text, audio_bytes });
                            return Ok(None);
                        }
                    }
                    // A failed write is in the replay accounting: replayed or reported.
                    if let Some(e) = link.take_failure() {
                        let (code, reason) = self.shared.peer_close().unwrap_or((1006, e));
                        return Err(lost(code, reason));
                    }
                    Ok(())
                }
                Command::Commit { text } => {
                    // Recorded first: if the link fails from here on, the replay commits anew.
                    link.replay_mut().commit();
                    st.uplink.before_commit(link).and_then(|()| {
                        link.write(Message::Text(text.into()))
                            .map_err(|e| e.to_string())
                    })
                }
                Command::Update {
                    text,
                    event_id,
                    reply,
                } => {
                    st.waiters.update = reply.map(|r| (event_id, r));
                    let text = Utf8Bytes::from(text);
                    st.last_update = Some(text.clone());
                    link.write(Message::Text(text)).map_err(|e| e.to_string())
                }
                Command::Finish {
                    text,
                    event_id,
                    reply,
                } => {
                    st.waiters.finish = reply.map(|r| (event_id, r));
                    st.finish_sent = true;
                    st.caller_finished = true;
                    link.replay_mut().finish();
                    st.uplink.before_finish(link).and_then(|()| {
                        link.write(Message::Text(text.into()))
                            .map_err(|e| e.to_string())
                    })
                }
                Command::Notify(event) => {
                    note_gate(&event, st, link.replay_mut());
                    st.out.push(event);
                    continue;
                }
                Command::Close { code, reason } => return Ok(Some((code, reason))),
                Command::Idle { idle_ms } => {
                    if self.start_idle_end(link, st, idle_ms)? {
                        // The rest waits for the next session.
                        return Ok(None);
                    }
                    continue;
                }
            };
            if let Err(e) = written {
                let (code, reason) = self.shared.peer_close().unwrap_or((1006, e));
                return Err(lost(code, reason));
            }
        }
    }

    /// With `max_backlog` set and the link behind by more than it, drops the oldest queued
    /// frames (they were never sent, so the replay window and the server's offsets know
    /// nothing of them) and reports them, so that a live source never waits for the link.
    fn shed_backlog(&self, link: &mut Link, st: &mut State) {
        let Some(max) = self.params.max_backlog else {
            return;
        };
        let max_ms = max.as_millis() as u64;
        let mut behind = self.backlog_ms(link);
        let mut dropped = 0u64;
        while behind > max_ms && st.held_cmd.is_none() {
            match self.commands.try_recv() {
                Ok(Command::Frame { audio_bytes, .. }) => {
                    self.shared.dequeued(audio_bytes);
                    link.replay_mut()
                        .device_skip(self.shared.frame_audio(audio_bytes));
                    dropped += audio_bytes;
                    behind = behind.saturating_sub(self.shared.bytes_to_ms(audio_bytes));
                }
                // Anything else keeps its place at the head of the queue.
                Ok(other) => st.held_cmd = Some(other),
                Err(_) => break,
            }
        }
        if dropped > 0 {
            let ms = self.shared.bytes_to_ms(dropped);
            log::warn!("the link is {behind} ms behind; dropped the oldest {ms} ms queued");
            st.out.push(Event::client(EventKind::AudioDropped {
                ms,
                reason: format!(
                    "more than {max_ms} ms of audio waited to leave the device (max_backlog); \
                     the oldest queued audio was dropped"
                ),
            }));
        }
    }

    /// Audio handed over that has not left the device, in ms: queued, and in the kernel's
    /// send queue.
    fn backlog_ms(&self, link: &Link) -> u64 {
        let queued = self.shared.counters.queued_bytes.load(Ordering::Relaxed);
        self.shared.bytes_to_ms(queued) + link.unsent_ms()
    }

    /// Publishes the backlog in the stats and raises `client.link_behind` /
    /// `client.link_caught_up` as the link falls behind real time and catches up.
    fn track_backlog(&self, link: &Link, st: &mut State) {
        let backlog = self.backlog_ms(link);
        let c = &self.shared.counters;
        c.backlog_ms.store(backlog, Ordering::Relaxed);
        c.max_backlog_ms.fetch_max(backlog, Ordering::Relaxed);
        // Behind real time is the backlog, but only as far as the wall clock has passed the
        // audio that did leave: a file sent faster than real time always has a backlog
        // while the link is busy, and is not late for anything.
        let elapsed_ms = c
            .first_append
            .get()
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        let appended_ms = self
            .shared
            .bytes_to_ms(c.appended_bytes.load(Ordering::Relaxed));
        let left_ms = appended_ms.saturating_sub(backlog);
        let behind = backlog.min(elapsed_ms.saturating_sub(left_ms));
        let threshold = (self.params.behind_threshold.as_millis() as u64).max(1);
        match &mut st.behind {
            None if behind >= threshold => {
                log::warn!("the link is {behind} ms behind the audio");
                st.out
                    .push(Event::client(EventKind::LinkBehind { behind_ms: behind }));
                st.behind = Some((behind.saturating_mul(2), behind));
            }
            Some((next, max)) => {
                *max = (*max).max(behind);
                if behind >= *next {
                    st.out
                        .push(Event::client(EventKind::LinkBehind { behind_ms: behind }));
                    *next = behind.saturating_mul(2);
                } else if behind < threshold / 4 {
                    let max_behind_ms = *max;
                    log::info!("the link caught up (it was up to {max_behind_ms} ms behind)");
                    st.out
                        .push(Event::client(EventKind::LinkCaughtUp { max_behind_ms }));
                    st.behind = None;
                }
            }
            None => {}
        }
    }

    /// Consumes the wake-up, then lets senders signal a new one. In this order a sender that
    /// queues a command after our last look at the queue always leaves the fd readable for
    /// poll to see; the other order can lose that wake-up and leave the command waiting.
    /// Skipping this when poll did not report the fd readable is safe: then no sender has
    /// signalled since the last drain, or one is about to and poll will see it.
    fn drain_wake(&self) {
        self.wake.drain();
        self.shared.wake_pending.store(false, Ordering::SeqCst);
    }

    /// Sleeps until the socket is readable (or writable, when a write is pending), a command
    /// arrives, or the timeout passes.
    fn wait(&self, want_write: bool, want_commands: bool, timeout: Option<Duration>) -> Ready {
        let socket = Some((self.tcp.as_raw_fd(), want_write));
        // While the socket is full, new commands cannot be written, so they need not wake
        // us; unless the backlog is bounded, when each one may be the frame to shed for.
        let sheds = self.params.max_backlog.is_some();
        poll(
            socket,
            (want_commands && (!want_write || sheds)).then_some(self.wake.fd()),
            timeout,
        )
    }

    /// Replaces a lost connection: waits (backing off, with jitter), opens a new one, and
    /// resumes the session on it. `None` on success, else how the conversation ends.
    fn reconnect(&mut self, st: &mut State, code: u16, reason: &str) -> Option<(u16, String)> {
        let policy = self.params.reconnect?;
        let old_session_id = self.shared.session_id();
        log::warn!("connection lost ({code} {reason}); reconnecting");
        let mut last_error = format!("connection lost ({code} {reason})");
        for attempt in 1..=policy.max_attempts {
            if self.sleep_unless_closed(jittered(policy.backoff(attempt), policy.jitter)) {
                return Some((code, reason.to_owned()));
            }
            let result = self.open_session(st);
            match result {
                Ok(replayed_ms) => {
                    let new_session_id = self.shared.session_id();
                    log::info!(
                        "reconnected on attempt {attempt}: session {} replaces {}, {replayed_ms} ms replayed",
                        new_session_id.as_deref().unwrap_or("?"),
                        old_session_id.as_deref().unwrap_or("?")
                    );
                    st.out.push(Event::client(EventKind::Reconnected {
                        attempt,
                        old_session_id,
                        new_session_id,
                        replayed_ms,
                        code,
                        reason: reason.to_owned(),
                    }));
                    let c = &self.shared.counters;
                    c.reconnects.fetch_add(1, Ordering::Relaxed);
                    c.replayed_ms.fetch_add(replayed_ms, Ordering::Relaxed);
                    let lost_ms = lock(&self.link).replay_mut().take_lost_ms();
                    if lost_ms > 0 {
                        st.out.push(Event::client(EventKind::AudioDropped {
                            ms: lost_ms,
                            reason: format!(
                                "older than the {:.0} s replay window when the connection was lost",
                                policy.replay_window.as_secs_f64()
                            ),
                        }));
                    }
                    return None;
                }
                Err(e) => {
                    log::warn!("reconnect attempt {attempt} failed: {e}");
                    last_error = e.to_string();
                    // Permanent failures: a retry loop against a rejected key only gets the device
                    // rate-limited.
                    if !e.is_retryable() {
                        st.out.push(Event::client(EventKind::ReconnectFailed {
                            attempts: attempt,
                            error: last_error.clone(),
                        }));
                        return Some((code, reason.to_owned()));
                    }
                }
            }
        }
        log::error!(
            "giving up after {} reconnect attempts: {last_error}",
            policy.max_attempts
        );
        st.out.push(Event::client(EventKind::ReconnectFailed {
            attempts: policy.max_attempts,
            error: last_error,
        }));
        Some((code, reason.to_owned()))
    }

    /// Sleeps for `d` unless the caller closes meanwhile; true if they did.
    fn sleep_unless_closed(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        loop {
            if self.shared.cancel.is_requested() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            poll(None, Some(self.wake.fd()), Some(left));
            // The commands these wake-ups announce stay queued for the new connection: serve()
            // looks at the queue first thing.
            self.drain_wake();
        }
    }

    /// Takes over a new connection: the caller sees its `session.created`, the session is
    /// configured as before, and the audio without a result (with its commits, and the finish
    /// if one was pending) is sent again. Returns the milliseconds replayed.
    fn resume(&mut self, st: &mut State, opened: Opened) -> Result<u64, Error> {
        let Opened {
            mut socket,
            tcp,
            created,
        } = opened;
        self.shared.clear_peer_close();
        // Held throughout: `open` is false, so senders queue meanwhile rather than wait.
        let link = Arc::clone(&self.link);
        let mut link = lock(&link);
        self.on_event(&created, st, link.replay_mut());
        st.out.push(created);
        let t = self.params.timeouts;
        let io = |phase| move |source| Error::Io { phase, source };
        tcp.set_write_timeout(Some(t.handshake))
            .map_err(io(crate::Phase::Handshake))?;
        if let Some(update) = st.last_update.clone() {
            let deadline = Instant::now() + t.session_updated;
            send_blocking(&mut socket, Message::Text(update))?;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout {
                        phase: crate::Phase::SessionUpdated,
                        after: t.session_updated,
                    });
                }
                tcp.set_read_timeout(Some(left))
                    .map_err(io(crate::Phase::SessionUpdated))?;
                let event = match socket.read() {
                    Ok(Message::Text(text)) => Event::parse(text.as_str().to_owned()),
                    Ok(_) => continue,
                    Err(tungstenite::Error::Io(e))
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                    {
                        continue
                    }
                    Err(e) => return Err(Error::handshake_from("while resuming the session", e)),
                };
                self.on_event(&event, st, link.replay_mut());
                let done = match &event.kind {
                    EventKind::SessionUpdated(_) => true,
                    EventKind::Error(e) => return Err(Error::Server(e.clone())),
                    _ => false,
                };
                st.out.push(event);
                if done {
                    break;
                }
            }
        }
        let (frames, replayed_ms) = link.replay_mut().start_session();
        // A new session is a new Ogg stream; the replay's PCM is encoded into it afresh.
        st.uplink.new_stream();
        for frame in frames {
            for text in st.uplink.replay_wire(&self.shared, frame)? {
                socket.write(Message::Text(text)).map_err(ws_error)?;
            }
        }
        if st.finish_sent {
            for text in st.uplink.finish_wire()? {
                socket.write(Message::Text(text)).map_err(ws_error)?;
            }
            let (text, event_id) = protocol::finish_json();
            if let Some((id, _)) = &mut st.waiters.finish {
                *id = event_id;
            }
            socket.write(Message::Text(text.into())).map_err(ws_error)?;
        }
        socket.flush().map_err(ws_error)?;
        tcp.set_read_timeout(None)
            .map_err(io(crate::Phase::Handshake))?;
        tcp.set_write_timeout(None)
            .map_err(io(crate::Phase::Handshake))?;
        let tcp = Arc::new(tcp);
        link.replace_socket(socket, Arc::clone(&tcp));
        drop(link);
        self.tcp = tcp;
        Ok(replayed_ms)
    }
}

/// How a connection we closed ended: an idle close if that is what our close was.
fn ours_end(st: &mut State, code: u16, reason: String) -> LinkEnd {
    match st.idle_end.take() {
        Some(ie) => LinkEnd::Idle {
            idle_ms: ie.idle_ms,
            code,
            reason,
        },
        None => LinkEnd::Closed(code, reason),
    }
}

/// Follows the speech gate through its events, in order with the audio: whether it is
/// open, and where on the device timeline the audio after an opening was captured.
fn note_gate(event: &Event, st: &mut State, replay: &mut Replay) {
    match &event.kind {
        EventKind::GateOpened { at_ms, .. } => {
            st.gate_open = Some(true);
            replay.device_jump(*at_ms);
        }
        EventKind::GateClosed { .. } => st.gate_open = Some(false),
        _ => {}
    }
}

/// Gives a server event carrying session offsets their device-timeline positions.
fn place_on_device(event: &mut Event, replay: &Replay) {
    let (start, end) = event.session_offsets_ms();
    if start.is_some() || end.is_some() {
        event.set_device_ms(
            start.and_then(|ms| replay.device_ms(ms)),
            end.and_then(|ms| replay.device_ms(ms)),
        );
    }
}

fn ws_error(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Io(source) => Error::Io {
            phase: crate::Phase::Handshake,
            source,
        },
        e => Error::handshake_from("the WebSocket failed", e),
    }
}

fn send_blocking(socket: &mut Socket, m: Message) -> Result<(), Error> {
    socket.send(m).map_err(ws_error)
}

/// What one connection's loop carries from one pass to the next.
struct Pass {
    last_rx: Instant,
    next_ping: Option<Instant>,
    /// Set when we sent a close frame: the code to report, and how long to wait for the echo.
    closing: Option<(u16, String, Instant)>,
    /// What the last poll found ready.
    ready: Ready,
}

/// What poll(2) found ready.
#[derive(Clone, Copy)]
struct Ready {
    /// The socket is readable, writable, or has an error or hang-up to report.
    socket: bool,
    /// The wake-up fd is readable: a sender signalled.
    wake: bool,
}

/// poll(2) on an optional socket (readable, and writable if asked) and an optional wake-up
/// fd; returns when one is ready or the timeout passes (`None`: no timeout).
fn poll(socket: Option<(i32, bool)>, wake: Option<i32>, timeout: Option<Duration>) -> Ready {
    let mut fds = [
        libc::pollfd {
            fd: socket.map_or(-1, |(fd, _)| fd),
            events: libc::POLLIN
                | if socket.is_some_and(|(_, w)| w) {
                    libc::POLLOUT
                } else {
                    0
                },
            revents: 0,
        },
        libc::pollfd {
            fd: wake.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // Round up: a deadline 0.4 ms away must not become a busy 0 ms poll.
    let ms = timeout.map_or(-1, |t| {
        (t.as_micros().div_ceil(1000)).clamp(1, i32::MAX as u128) as i32
    });
    // SAFETY: `fds` is a valid array of two pollfd for the duration of the call; negative
    // fds are ignored by poll.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            // Cannot happen with valid fds; sleep briefly rather than spin if it ever does.
            log::error!("poll failed: {e}");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Look at everything, as after a wake-up that said nothing.
        return Ready {
            socket: true,
            wake: true,
        };
    }
    Ready {
        socket: fds[0].revents != 0,
        wake: fds[1].revents != 0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::{ConnectParams, Conversation, EventKind, SessionConfig};
    use qwen_asr_emulator::{Emulator, EmulatorConfig, Fault, FaultAction};

    /// A server frame that makes a test build's I/O thread panic.
    pub(super) const PANIC_FRAME: &str = "qwen-asr-realtime test: panic here";

    /// Before: a panic on the I/O thread left the conversation open (`is_closed` false), with
    /// no `client.closed` and no word about the audio sent.
    #[test]
    fn a_panic_on_the_io_thread_still_reports_the_audio_and_ends_with_closed() {
        let emu = Emulator::start(EmulatorConfig {
            faults: vec![Fault::AfterAppends {
                n: 5,
                action: FaultAction::SendText(PANIC_FRAME.into()),
            }],
            ..Default::default()
        })
        .unwrap();
        let params = ConnectParams::new().url(emu.url()).api_key("k");
        let conv = Conversation::start(params, &SessionConfig::manual()).unwrap();
        for _ in 0..10 {
            // The panic may come first: then the appends are refused.
            let _ = conv.append_pcm(&[100i16; 1600]);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut events = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match conv.recv_timeout(left) {
                Ok(e) => events.push(e.kind),
                Err(_) => break,
            }
        }
        let dropped: u64 = events
            .iter()
            .filter_map(|k| match k {
                EventKind::AudioDropped { ms, .. } => Some(*ms),
                _ => None,
            })
            .sum();
        assert!(
            matches!(events.last(), Some(EventKind::Closed { code: 1011, .. })),
            "{events:?}"
        );
        assert!(
            dropped >= 500,
            "reported {dropped} ms of the 500+ sent: {events:?}"
        );
        assert!(conv.is_closed());
    }

    /// A 440 Hz tone of `ms`: speech to the emulator's VAD.
    fn tone(ms: u32) -> Vec<i16> {
        (0..16 * ms)
            .map(|i| {
                (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / 16e3).sin()) as i16
            })
            .collect()
    }

    /// A gate's caller appends the last audio of an utterance and only then says that the
    /// gate closed; a server that closes the idle session at once is seen in between when the
    /// caller's thread is slow (here it waits 300 ms on purpose). Before: the gate still looked
    /// open, the server's close 1000 ended the conversation, and the next utterance could not
    /// be sent. Now the I/O thread waits (bounded) for the caller's next word before judging.
    #[test]
    fn a_server_close_seen_before_the_gates_close_is_still_an_idle_close() {
        let emu = Emulator::start(EmulatorConfig {
            faults: vec![Fault::AfterAppends {
                n: 2,
                action: FaultAction::Close {
                    code: 1000,
                    reason: "idle session".into(),
                },
            }],
            fault_sessions: Some(1),
            ..Default::default()
        })
        .unwrap();
        let params = ConnectParams::new()
            .url(emu.url())
            .api_key("k")
            .reconnect(crate::ReconnectPolicy::default());
        let conv = Conversation::start(params, &SessionConfig::vad()).unwrap();
        let sender = conv.audio_sender();
        let opened = EventKind::GateOpened {
            at_ms: 0,
            speech_at_ms: 0,
        };
        let closed = EventKind::GateClosed {
            at_ms: 2200,
            speech_end_ms: 1000,
        };
        sender.notify(opened.clone()).unwrap();
        sender.append_pcm(&tone(1000)).unwrap();
        // The hangover: the emulator ends the utterance in it, then closes the session.
        sender.append_pcm(&[0i16; 16 * 1200]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        sender.notify(closed.clone()).unwrap();
        // The next utterance opens a new session.
        sender.notify(opened).unwrap();
        sender.append_pcm(&tone(1000)).unwrap();
        sender.append_pcm(&[0i16; 16 * 1200]).unwrap();
        sender.notify(closed).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut events = Vec::new();
        while events
            .iter()
            .filter(|k| matches!(k, EventKind::Completed(_)))
            .count()
            < 2
        {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match conv.recv_timeout(left) {
                Ok(e) => events.push(e.kind),
                Err(_) => break,
            }
        }
        let idle_closed = events
            .iter()
            .filter(|k| {
                matches!(
                    k,
                    EventKind::SessionIdleClosed {
                        by_server: true,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(idle_closed, 1, "{events:?}");
        assert!(
            !events
                .iter()
                .any(|k| matches!(k, EventKind::AudioDropped { .. } | EventKind::Closed { .. })),
            "{events:?}"
        );
        assert_eq!(emu.sessions().len(), 2, "{events:?}");
        conv.end_session(Duration::from_secs(10)).unwrap();
    }
}
