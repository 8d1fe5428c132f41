//! A local emulator of Alibaba Cloud's Qwen-ASR-Realtime speech recognition service
//! (`qwen3-asr-flash-realtime`): a real WebSocket server on loopback that speaks the service's
//! wire protocol (JSON text frames, base64 audio), for tests, demos, and continuous integration
//! without an API key or network. It was written alongside the `qwen-asr-realtime` client but
//! does not use it: its tables (languages, formats, ranges, limits) are its own copies of the
//! service's, so a client tested against it is checked, not agreed with.
//!
//! The binary of this crate, `qwen-asr-emulator`, serves it as a standalone process (it prints
//! its URL and serves until its stdin closes; `--help` lists the options).
//!
//! What it does, in short:
//! - the handshake on `/api-ws/v1/realtime?model=…`, with an optional API key check
//!   (HTTP 401 and a JSON body on a wrong or missing key) and optional TLS (`wss://`);
//! - `session.created`, then `session.update` validated and merged (`session.updated`, or an
//!   `error` event that leaves the configuration as it was; close 1007 once audio has started);
//! - in VAD mode a deterministic energy VAD (see [`speech_level_dbfs`]) turns the audio into
//!   utterances: `speech_started`, partials, `speech_stopped`, `committed`,
//!   `conversation.item.created`, a last partial, `completed`; in Manual mode
//!   (`turn_detection: null`) `input_audio_buffer.commit` does it for the whole buffer;
//! - `session.finish` completes what is pending, sends `session.finished` and closes with 1000;
//! - frames over [`EmulatorConfig::max_frame_bytes`] are closed with 1009, like the gateway;
//! - faults on demand ([`Fault`]): stray frames, error events, closes, drops, resets, stalls.
//!
//! Transcripts are not speech recognition: each utterance's transcript is
//! [`transcript_for`] its audio (duration, size and CRC-32), and [`Emulator::sessions`] records
//! what arrived, so a test can prove that every byte of audio arrived once and in order.
//! Audio is read as 16-bit little-endian mono PCM, whatever `input_audio_format` says, except
//! `"opus"` with the feature `opus`: then the session's appends must carry one Ogg Opus stream
//! (RFC 7845: `OpusHead` page first, `OpusTags` next, then audio pages, optionally an
//! end-of-stream page), which is checked page by page and decoded with libopus at the session's
//! `sample_rate` (the module `ogg_opus`); the decoded audio then takes the same path as PCM (VAD,
//! digests, records, audio offsets). A broken stream (bad CRC, wrong or missing headers,
//! another stream's pages, anything after the end of stream, garbage) gets an `error` event,
//! and the stream is refused: every later append of the session gets an `error` too.
//!
//! ```
//! use qwen_asr_emulator::{Emulator, EmulatorConfig};
//!
//! let emulator = Emulator::start(EmulatorConfig {
//!     api_key: Some("sk-test".into()),
//!     ..EmulatorConfig::default()
//! })?;
//! let url = emulator.url(); // ws://127.0.0.1:PORT/api-ws/v1/realtime
//! # let _ = url;
//! // ... run a client against `url` with the key "sk-test" ...
//! for session in emulator.sessions() {
//!     println!("{}: {} utterances", session.id, session.items.len());
//! }
//! emulator.shutdown(); // stops and joins every thread
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Threads: one accepts connections, one serves each connection. Both block in the kernel
//! (`poll`, `read`) while idle, and [`Emulator::shutdown`] (or dropping the [`Emulator`]) wakes
//! and joins all of them. Threads are named `qwen-emu<N>-…` ([`Emulator::thread_name_prefix`]).
//!
//! Features: `native-tls` (default) serves `wss://` through the system OpenSSL
//! ([`EmulatorConfig::tls`]); without it the emulator serves `ws://` only. `opus` decodes
//! Ogg Opus sessions (libopus, built from source: needs cmake and a C compiler).
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{error, info, warn};

mod conn;
mod digest;
#[cfg(feature = "opus")]
#[cfg_attr(docsrs, doc(cfg(feature = "opus")))]
pub mod ogg_opus;
pub mod record;
mod session;
mod vad;

#[cfg(test)]
mod tests;

pub use digest::{transcript_for, AudioDigest};
pub use vad::speech_level_dbfs;

/// The service's WebSocket path; the model is named in the query, `?model=<name>`.
pub const PATH: &str = "/api-ws/v1/realtime";
/// The model served when the request names none and [`EmulatorConfig::served_model`] is unset.
pub const DEFAULT_MODEL: &str = "qwen3-asr-flash-realtime";
/// The largest WebSocket frame the service's gateway was seen to accept (a third party's test
/// of the live service; the documentation's limit is 15 MiB per `audio` field): larger frames
/// are closed with 1009.
pub const GATEWAY_MAX_FRAME_BYTES: usize = 262_144;

/// A server certificate and key for `wss://` (feature `native-tls`).
#[cfg(feature = "native-tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "native-tls")))]
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain, PEM. A test certificate should name `localhost` (the host in
    /// [`Emulator::url`]) and `127.0.0.1`.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM, PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: Vec<u8>,
}

#[cfg(feature = "native-tls")]
impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// How the emulator behaves. Start from [`Default`] and change what the test needs.
#[derive(Clone)]
pub struct EmulatorConfig {
    /// Where to listen. Default `127.0.0.1:0` (a free port; see [`Emulator::local_addr`]).
    pub bind: SocketAddr,
    /// `Some(key)`: the upgrade request must carry `Authorization: Bearer <key>` (the scheme
    /// in any case), else the handshake fails with HTTP 401 and
    /// `{"code":"InvalidApiKey","message":"Invalid API-key provided."}`. `None` (default):
    /// no check.
    pub api_key: Option<String>,
    /// The model named in `session.created`. `None` (default): the request's `model` query
    /// parameter, or [`DEFAULT_MODEL`] without one. Set it to e.g.
    /// `"qwen-omni-turbo-realtime"` to emulate the service silently serving another model.
    pub served_model: Option<String>,
    /// `Some`: serve `wss://` with this identity.
    #[cfg(feature = "native-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "native-tls")))]
    pub tls: Option<TlsIdentity>,
    /// The largest incoming frame or message, in bytes; larger ones are closed with 1009.
    /// Default [`GATEWAY_MAX_FRAME_BYTES`].
    pub max_frame_bytes: usize,
    /// A partial transcript every this many milliseconds of audio during speech (VAD mode).
    /// Default 400. 0 disables them (the partial just before `completed` is always sent).
    pub partial_interval_ms: u64,
    /// Faults to inject, on every connection. Default none.
    pub faults: Vec<Fault>,
    /// Faults apply to the first this many sessions only (`None`: to every session). A
    /// reconnecting client replays audio, which would otherwise trip the same fault again.
    pub fault_sessions: Option<usize>,
    /// Keeps every session's audio in [`SessionRecord::audio_data`] (and an Opus session's
    /// received stream in [`SessionRecord::opus_data`]), for tests that check where a replay
    /// started. Default off (a long session's audio is large).
    pub record_audio: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            api_key: None,
            served_model: None,
            #[cfg(feature = "native-tls")]
            tls: None,
            max_frame_bytes: GATEWAY_MAX_FRAME_BYTES,
            partial_interval_ms: 400,
            faults: Vec::new(),
            fault_sessions: None,
            record_audio: false,
        }
    }
}

impl fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("EmulatorConfig");
        d.field("bind", &self.bind)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("served_model", &self.served_model);
        #[cfg(feature = "native-tls")]
        d.field("tls", &self.tls);
        d.field("max_frame_bytes", &self.max_frame_bytes)
            .field("partial_interval_ms", &self.partial_interval_ms)
            .field("faults", &self.faults)
            .finish()
    }
}

/// A fault to inject.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Fault {
    /// Fires once on each connection, right after its `n`-th `input_audio_buffer.append` frame
    /// (1-based, counting invalid ones too) has been processed and its replies sent.
    AfterAppends {
        /// Which append.
        n: u64,
        /// What to do.
        action: FaultAction,
    },
    /// Fires once on each connection when a client event of this `type` arrives (for example
    /// `session.finish`): the event is recorded but not handled, and the action runs instead.
    InsteadOf {
        /// The client event type.
        event_type: String,
        /// What to do instead.
        action: FaultAction,
    },
}

/// What an injected fault does.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FaultAction {
    /// Send this text frame (malformed JSON, an unknown event, ...).
    SendText(String),
    /// Send this binary frame.
    SendBinary(Vec<u8>),
    /// Send a text frame whose payload is these bytes, UTF-8 or not (a broken server).
    SendRawText(Vec<u8>),
    /// Send an `error` event (`type: invalid_request_error`, no param, no event_id) with this
    /// code and message; the session continues.
    SendError {
        /// `error.code`.
        code: String,
        /// `error.message`.
        message: String,
    },
    /// Send a close frame with this code and reason (truncated to 123 bytes), wait briefly for
    /// the client's reply, and end the connection.
    Close {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// Shut the TCP connection down without a close frame. The client sees end-of-stream (or
    /// a reset, if the emulator had unread data from it).
    Drop,
    /// Abort the TCP connection: SO_LINGER 0, then close, so the client gets RST.
    Reset,
    /// Stop reading the socket for this long, so the client's writes back up, then carry on.
    /// Shutdown interrupts it.
    PauseReading(Duration),
    /// Stop reading and writing but keep the socket open, until shutdown.
    Stall,
}

/// What the emulator saw of one session (one accepted WebSocket connection).
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    /// The session id, `sess_` + 21 alphanumerics.
    pub id: String,
    /// The model served.
    pub model: String,
    /// The upgrade request's headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The request URL's query string (without `?`).
    pub query: String,
    /// Every client event other than appends, parsed, in order (frames that are not JSON are
    /// not kept).
    pub client_events: Vec<serde_json::Value>,
    /// Number of `input_audio_buffer.append` frames, valid or not.
    pub appends: u64,
    /// The session configuration as last echoed: `session.created`'s, then each
    /// `session.updated`'s.
    pub config: serde_json::Value,
    /// All audio appended in this session, in order, as 16-bit little-endian PCM: for an
    /// Opus session (feature `opus`) the decoded audio.
    pub audio: AudioDigest,
    /// The audio itself, when [`EmulatorConfig::record_audio`] is on (else empty); decoded, for
    /// an Opus session.
    pub audio_data: Vec<u8>,
    /// An Opus session's appends as received (the Ogg stream's bytes, up to and including the
    /// append that broke it, if one did), when [`EmulatorConfig::record_audio`] is on and the
    /// feature `opus` decodes them (else empty).
    pub opus_data: Vec<u8>,
    /// Why an Opus session's stream was refused (the `error` event's message), if it was.
    pub opus_error: Option<String>,
    /// One per completed utterance, in order.
    pub items: Vec<ItemRecord>,
    /// Whether `session.finished` was sent.
    pub finished: bool,
    /// The first close code sent to or received from the client (1005 for a close frame
    /// without a code), if any.
    pub close_code: Option<u16>,
}

impl SessionRecord {
    /// The value of the first header with this name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The audio received but not in any item: the silence after the last utterance (VAD
    /// mode) or an uncommitted buffer. Items plus this make up [`audio`](Self::audio).
    pub fn leftover_bytes(&self) -> u64 {
        let in_items: u64 = self.items.iter().map(|i| i.audio.bytes).sum();
        self.audio.bytes.saturating_sub(in_items)
    }
}

/// One completed utterance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemRecord {
    /// Its item id, `item_` + 21 alphanumerics, the same in all of its events.
    pub item_id: String,
    /// Its audio: everything since the previous commit, up to and including the frame where
    /// the VAD declared the end (or the whole buffer, on a commit or at `session.finish`).
    pub audio: AudioDigest,
    /// Where that audio starts in the session's audio, in bytes.
    pub start: u64,
    /// The transcript sent, [`transcript_for`] its audio.
    pub transcript: String,
}

/// State shared by the emulator's handle and its threads.
pub(crate) struct Shared {
    config: EmulatorConfig,
    #[cfg(feature = "native-tls")]
    tls: Option<native_tls::TlsAcceptor>,
    state: Mutex<State>,
    /// Signalled on every change of `State` that someone may wait for.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    shutting_down: bool,
    sessions: Vec<Arc<Mutex<SessionRecord>>>,
    rejected: usize,
    sessions_ended: usize,
    /// A clone of each open connection's socket, so shutdown can shut it under its thread.
    sockets: HashMap<u64, TcpStream>,
    threads: Vec<JoinHandle<()>>,
    next_connection: u64,
}

/// Locks, recovering from poisoning: a panicking test thread must not hide the records.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Records a new session; returns how many sessions there are now (1 for the first).
    fn add_session(&self, record: Arc<Mutex<SessionRecord>>) -> usize {
        let mut state = lock(&self.state);
        state.sessions.push(record);
        state.sessions.len()
    }

    fn count_rejected(&self) {
        lock(&self.state).rejected += 1;
        self.changed.notify_all();
    }

    /// Called last by a connection thread, after its socket was closed.
    fn connection_ended(&self, key: u64, was_session: bool) {
        let mut st = lock(&self.state);
        st.sockets.remove(&key);
        if was_session {
            st.sessions_ended += 1;
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Removes a connection's socket clone from the registry (to close it).
    fn take_socket(&self, key: u64) -> Option<TcpStream> {
        lock(&self.state).sockets.remove(&key)
    }

    /// Waits until shutdown, or for at most `timeout`; returns whether shutdown began.
    fn wait_for_shutdown(&self, timeout: Option<Duration>) -> bool {
        let st = lock(&self.state);
        match timeout {
            None => {
                let st = self
                    .changed
                    .wait_while(st, |s| !s.shutting_down)
                    .unwrap_or_else(PoisonError::into_inner);
                st.shutting_down
            }
            Some(t) => {
                let (st, _) = self
                    .changed
                    .wait_timeout_while(st, t, |s| !s.shutting_down)
                    .unwrap_or_else(PoisonError::into_inner);
                st.shutting_down
            }
        }
    }

    fn spawn_connection(self: &Arc<Self>, tcp: TcpStream, instance: u64) {
        // Accepted sockets must block: their thread waits in read(), not in a polling loop.
        if let Err(e) = tcp.set_nonblocking(false) {
            warn!("emulator: dropping a connection: {e}");
            return;
        }
        let _ = tcp.set_nodelay(true);
        let registry_clone = match tcp.try_clone() {
            Ok(c) => c,
            Err(e) => {
                warn!("emulator: dropping a connection: {e}");
                return;
            }
        };
        let mut st = lock(&self.state);
        if st.shutting_down {
            return;
        }
        // Join the threads of connections that have ended, so the list stays short.
        let (ended, running): (Vec<_>, Vec<_>) =
            st.threads.drain(..).partition(JoinHandle::is_finished);
        st.threads = running;
        for t in ended {
            let _ = t.join();
        }
        let key = st.next_connection;
        st.next_connection += 1;
        let shared = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name(format!("qwen-emu{instance}-c{key}"))
            .spawn(move || conn::run(shared, tcp, key));
        match spawned {
            Ok(t) => {
                st.sockets.insert(key, registry_clone);
                st.threads.push(t);
            }
            Err(e) => warn!("emulator: cannot start a connection thread: {e}"),
        }
    }
}

static INSTANCES: AtomicU64 = AtomicU64::new(1);

/// A running emulator. Dropping it, or [`shutdown`](Emulator::shutdown), stops it.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
    instance: u64,
    /// Closing it wakes the accept thread out of poll(2).
    waker: Option<UnixStream>,
    accept: Option<JoinHandle<()>>,
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("url", &self.url())
            .field("instance", &self.instance)
            .finish()
    }
}

impl Emulator {
    /// Binds and starts serving. Fails if the address cannot be bound or the TLS identity is
    /// unusable.
    pub fn start(config: EmulatorConfig) -> io::Result<Emulator> {
        #[cfg(feature = "native-tls")]
        let tls = match &config.tls {
            Some(id) => {
                let identity = native_tls::Identity::from_pkcs8(&id.cert_pem, &id.key_pem)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let acceptor = native_tls::TlsAcceptor::new(identity)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                Some(acceptor)
            }
            None => None,
        };
        let listener = TcpListener::bind(config.bind)?;
        // Non-blocking so that a connection that vanishes between poll(2) and accept(2)
        // cannot block the thread where shutdown could not wake it.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (waker, wake_rx) = UnixStream::pair()?;
        let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            config,
            #[cfg(feature = "native-tls")]
            tls,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        #[cfg(feature = "native-tls")]
        let is_tls = shared.tls.is_some();
        #[cfg(not(feature = "native-tls"))]
        let is_tls = false;
        let accept = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("qwen-emu{instance}-acc"))
                .spawn(move || accept_loop(&shared, &listener, &wake_rx, instance))?
        };
        let emulator = Emulator {
            shared,
            addr,
            tls: is_tls,
            instance,
            waker: Some(waker),
            accept: Some(accept),
        };
        info!("emulator: listening on {}", emulator.url());
        Ok(emulator)
    }

    /// The URL to connect to: `ws://127.0.0.1:PORT/api-ws/v1/realtime`, or with TLS
    /// `wss://localhost:PORT/api-ws/v1/realtime` (the name a test certificate carries). Add
    /// `?model=…` as for the real service.
    pub fn url(&self) -> String {
        let port = self.addr.port();
        if self.tls {
            return format!("wss://localhost:{port}{PATH}");
        }
        match self.connect_ip() {
            IpAddr::V4(ip) => format!("ws://{ip}:{port}{PATH}"),
            IpAddr::V6(ip) => format!("ws://[{ip}]:{port}{PATH}"),
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address a local client connects to (loopback if bound to a wildcard address).
    fn connect_ip(&self) -> IpAddr {
        match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(ip) if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        }
    }

    /// A snapshot of every session so far (ended or not), in connection order. Connections
    /// whose handshake failed are not sessions; see [`rejected_handshakes`](Self::rejected_handshakes).
    pub fn sessions(&self) -> Vec<SessionRecord> {
        let records = lock(&self.shared.state).sessions.clone();
        records.iter().map(|r| lock(r).clone()).collect()
    }

    /// Connections whose handshake failed: wrong or missing API key, wrong path, not a
    /// WebSocket upgrade, failed TLS handshake.
    pub fn rejected_handshakes(&self) -> usize {
        lock(&self.shared.state).rejected
    }

    /// Waits until at least `n` sessions have ended (their sockets closed), or `timeout`
    /// passes; returns whether they had.
    pub fn wait_for_sessions_closed(&self, n: usize, timeout: Duration) -> bool {
        let st = lock(&self.shared.state);
        let (st, _) = self
            .shared
            .changed
            .wait_timeout_while(st, timeout, |s| s.sessions_ended < n)
            .unwrap_or_else(PoisonError::into_inner);
        st.sessions_ended >= n
    }

    /// The prefix of the names of this emulator's threads (`qwen-emu<N>-`), e.g. for a test
    /// that checks none is left after shutdown (Linux shows at most 15 bytes of a name).
    pub fn thread_name_prefix(&self) -> String {
        format!("qwen-emu{}-", self.instance)
    }

    /// Stops serving: shuts every connection down, wakes all waits, and joins every thread.
    /// Sessions that were still open end without a close frame. Dropping does the same.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.accept.is_none() {
            return;
        }
        let started = Instant::now();
        {
            let mut st = lock(&self.shared.state);
            st.shutting_down = true;
            for socket in st.sockets.values() {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
        self.shared.changed.notify_all();
        // Closing our end makes the accept thread's end readable (end of stream).
        drop(self.waker.take());
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // No connection thread can start now: the accept thread is gone.
        let threads = std::mem::take(&mut lock(&self.shared.state).threads);
        for t in threads {
            let _ = t.join();
        }
        info!(
            "emulator: {} stopped in {:?}",
            self.thread_name_prefix(),
            started.elapsed()
        );
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits in poll(2) for a connection or the wake-up; no timeout, so an idle emulator sleeps.
fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener, wake: &UnixStream, instance: u64) {
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        if poll(&mut fds, -1).is_err() {
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        loop {
            match listener.accept() {
                Ok((tcp, _)) => shared.spawn_connection(tcp, instance),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // E.g. out of file descriptors: the listener stays readable, so back off
                    // (still wakeable) instead of spinning.
                    warn!("emulator: accept failed: {e}");
                    if poll(&mut fds[1..], 100).is_err() || fds[1].revents != 0 {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

/// poll(2), retried on EINTR; clears `revents` first.
fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<()> {
    loop {
        for fd in fds.iter_mut() {
            fd.revents = 0;
        }
        // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            error!("emulator: poll failed, no longer accepting connections: {e}");
            return Err(e);
        }
    }
}

// The README's code blocks are compiled as doc tests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
