//! Opening the connection: TCP with a connect timeout, TLS, the WebSocket upgrade with our
//! headers, and the wait for `session.created`. Each phase has its own deadline and its own
//! error, because tungstenite's `connect()` has none of that. The upgrade request is written
//! and its response checked here, not by tungstenite, whose client handshake logs the request
//! (the API key with it) at trace level; tungstenite gets the socket once it is a WebSocket.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::{Request, Response};
use tungstenite::handshake::derive_accept_key;
use tungstenite::handshake::machine::TryParse;
use tungstenite::http::{HeaderName, HeaderValue, Uri};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::config::{ApiKey, ConnectParams};
use crate::error::{Error, Phase, Result};
use crate::net::proxy;
use crate::protocol::{Event, EventKind};
use crate::sys::lock;
use crate::sys::wake::Wake;

/// The socket type the I/O thread owns.
pub(crate) type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// A connection that has received `session.created`.
pub(crate) struct Opened {
    pub socket: Socket,
    /// A second handle on the same TCP socket: its fd is what the I/O thread polls.
    pub tcp: TcpStream,
    pub created: Event,
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
}

fn parse_target(params: &ConnectParams, url: &str) -> Result<Target> {
    let shown = url.split('?').next().unwrap_or(url).to_owned();
    let invalid = |reason: String| Error::InvalidUrl {
        url: shown.clone(),
        reason,
    };
    let uri: Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        other => return Err(invalid(format!("scheme {other:?} is not ws or wss"))),
    };
    let host = uri
        .host()
        .ok_or_else(|| invalid("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if !tls && !params.allow_insecure_ws && !is_loopback(&host) {
        return Err(invalid(
            "ws:// would send the API key in clear text; use wss://, or set \
             allow_insecure_ws for a trusted network"
                .into(),
        ));
    }
    #[cfg(not(feature = "native-tls"))]
    if tls {
        return Err(invalid(
            "wss:// needs the crate feature native-tls (or native-tls-vendored)".into(),
        ));
    }
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(Target { tls, host, port })
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The `user-agent` we send: this crate and its version, like the SDKs' `dashscope/<ver>; …`.
pub fn user_agent() -> String {
    format!(
        "{}/{}; rust; platform/{}; processor/{}",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// The upgrade request: URL with `model=`, then our headers, then the caller's, which
/// replace ours of the same name as in both SDKs.
pub(crate) fn build_request(params: &ConnectParams, key: &ApiKey) -> Result<Request> {
    let url = params.request_url();
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::InvalidUrl {
            url: url.split('?').next().unwrap_or("").to_owned(),
            reason: e.to_string(),
        })?;
    let mut headers: Vec<(String, String)> = vec![
        ("Authorization".into(), format!("Bearer {}", key.expose())),
        ("user-agent".into(), user_agent()),
    ];
    if let Some(ws) = &params.workspace {
        headers.push(("X-DashScope-WorkSpace".into(), ws.clone()));
    }
    if params.data_inspection {
        headers.push(("X-DashScope-DataInspection".into(), "enable".into()));
    }
    headers.extend(params.headers.iter().cloned());
    for (name, value) in headers {
        let bad = |what: &str| Error::InvalidConfig {
            field: "headers",
            message: format!("{what} in header {name:?}"),
        };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("invalid name"))?;
        // The value may be the API key: never echo it in the error.
        let v = HeaderValue::from_str(&value).map_err(|_| bad("invalid value"))?;
        req.headers_mut().insert(n, v);
    }
    Ok(req)
}

/// Lets another thread stop a connection being opened, at once: a caller who closes the
/// conversation while the I/O thread reconnects must not wait out the connect, handshake and
/// `session.created` timeouts (30 s together by default).
pub(crate) struct Cancel {
    requested: AtomicBool,
    /// A second handle on the socket being opened, to shut it down: every blocking read or
    /// write on it (TLS, the upgrade, the wait for `session.created`) then ends at once.
    opening: Mutex<Option<TcpStream>>,
    /// Signalled on cancel, for a connect still waiting for the peer.
    wake: Arc<Wake>,
}

impl Cancel {
    pub(crate) fn new(wake: Arc<Wake>) -> Cancel {
        Cancel {
            requested: AtomicBool::new(false),
            opening: Mutex::new(None),
            wake,
        }
    }

    /// Stops any opening under way, and every later one.
    pub(crate) fn cancel(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Some(s) = lock(&self.opening).take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Unconditionally: the senders' wake-up may be marked pending and not signal again.
        self.wake.signal();
    }

    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Registers the socket being opened; refused if cancel came first. Under the lock, so
    /// either this sees the request or `cancel` sees the socket.
    fn watch(&self, tcp: &TcpStream) -> Result<()> {
        let handle = tcp.try_clone().map_err(|source| Error::Io {
            phase: Phase::Connect,
            source,
        })?;
        let mut slot = lock(&self.opening);
        if self.is_requested() {
            return Err(Error::closed());
        }
        *slot = Some(handle);
        Ok(())
    }

    fn unwatch(&self) {
        lock(&self.opening).take();
    }
}

fn connect_tcp(
    host: &str,
    port: u16,
    timeout: Duration,
    cancel: Option<&Cancel>,
) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|source| Error::Io {
            phase: Phase::Connect,
            source,
        })?
        .collect();
    let mut last = io::Error::new(ErrorKind::NotFound, "the host name resolved to no address");
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout {
                phase: Phase::Connect,
                after: timeout,
            });
        }
        let attempt = match cancel {
            Some(c) => crate::sys::connect(&addr, left, c.wake.fd(), &mut || {
                // Another wake-up (a command queued) is drained: the commands stay queued
                // for the new connection, which looks at the queue first thing.
                c.wake.drain();
                c.is_requested()
            }),
            None => TcpStream::connect_timeout(&addr, left),
        };
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == ErrorKind::Interrupted => return Err(Error::closed()),
            Err(e) => last = e,
        }
    }
    if last.kind() == ErrorKind::TimedOut {
        return Err(Error::Timeout {
            phase: Phase::Connect,
            after: timeout,
        });
    }
    Err(Error::Io {
        phase: Phase::Connect,
        source: last,
    })
}

/// TCP keepalive: the kernel probes an idle connection after `idle`, then every 5 s, and
/// gives up after 3 unanswered probes, so a dead link is noticed even with pings off.
fn set_tcp_keepalive(tcp: &TcpStream, idle: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    let idle_s = idle.as_secs().clamp(1, i32::MAX as u64) as libc::c_int;
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle_s),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
    ] {
        // SAFETY: a valid socket fd and a pointer to a c_int that lives through the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn ws_config(params: &ConnectParams) -> WebSocketConfig {
    let max = params.max_incoming_message_bytes;
    WebSocketConfig::default()
        // Small read chunks: events are small, and a Pi Zero has little memory to spare.
        .read_buffer_size(16 * 1024)
        // Frames queued together leave in one write; the I/O thread flushes as soon as the
        // queue is empty, so this adds no latency, only fewer system calls under load.
        .write_buffer_size(64 * 1024)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// The longest upgrade response head we read; a real one is a few hundred bytes.
const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;

/// The most of a refusal's body kept for the error: enough for the service's JSON message.
const MAX_ERROR_BODY_BYTES: usize = 4 * 1024;

/// The upgrade request on the wire, in tungstenite's layout (the WebSocket headers first, with
/// the capitalisation some servers insist on), which the service is known to accept. We write
/// it ourselves because tungstenite's client handshake logs the whole request at trace level,
/// and the request carries the API key and whatever the caller put in its headers. Nothing
/// here may be logged.
fn request_bytes(request: &Request) -> Result<Vec<u8>> {
    const FIRST: [&str; 5] = [
        "Host",
        "Connection",
        "Upgrade",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Key",
    ];
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut out = format!("GET {path} HTTP/1.1\r\n").into_bytes();
    let headers = request.headers();
    for name in FIRST {
        let value = headers.get(name).ok_or_else(|| {
            Error::handshake(format!("the upgrade request lacks its {name} header"))
        })?;
        push_header(&mut out, name, value.as_bytes());
    }
    for (name, value) in headers {
        if FIRST.iter().any(|f| name.as_str().eq_ignore_ascii_case(f)) {
            continue;
        }
        let shown = match name.as_str() {
            "sec-websocket-protocol" => "Sec-WebSocket-Protocol",
            "origin" => "Origin",
            other => other,
        };
        push_header(&mut out, shown, value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A read bounded by what is left of the handshake's deadline.
fn read_by<S: Read>(
    stream: &mut S,
    tcp: &TcpStream,
    deadline: Instant,
    limit: Duration,
    buf: &mut [u8],
) -> Result<usize> {
    let timeout = || Error::Timeout {
        phase: Phase::Handshake,
        after: limit,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timeout());
    }
    let io_err = |source| Error::Io {
        phase: Phase::Handshake,
        source,
    };
    tcp.set_read_timeout(Some(left)).map_err(io_err)?;
    loop {
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(timeout()),
            Err(e) => return Err(io_err(e)),
        }
    }
}

/// Reads the response head; returns it parsed and the bytes read past it, which belong to
/// the WebSocket (the server may send its first frame right behind the 101).
fn read_response<S: Read>(
    stream: &mut S,
    tcp: &TcpStream,
    deadline: Instant,
    limit: Duration,
) -> Result<(Response, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = read_by(stream, tcp, deadline, limit, &mut chunk)?;
        if n == 0 {
            return Err(Error::handshake(
                "the server closed the connection before answering the upgrade",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        match Response::try_parse(&buf) {
            Ok(Some((len, response))) => return Ok((response, buf.split_off(len))),
            Ok(None) if buf.len() < MAX_RESPONSE_HEAD_BYTES => {}
            Ok(None) => {
                return Err(Error::handshake(format!(
                    "the upgrade response head is over {MAX_RESPONSE_HEAD_BYTES} bytes"
                )))
            }
            Err(e) => {
                return Err(Error::handshake(format!(
                    "the upgrade response is not HTTP: {e}"
                )))
            }
        }
    }
}

/// The body of a refusal: what came with the head, plus the rest up to its
/// `Content-Length`, within the deadline and [`MAX_ERROR_BODY_BYTES`]. A body that does not
/// arrive in time is left out: the status is what matters.
fn refusal_body<S: Read>(
    stream: &mut S,
    tcp: &TcpStream,
    deadline: Instant,
    limit: Duration,
    response: &Response,
    mut body: Vec<u8>,
) -> String {
    let want = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_ERROR_BODY_BYTES);
    let mut chunk = [0u8; 1024];
    while body.len() < want {
        match read_by(stream, tcp, deadline, limit, &mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(MAX_ERROR_BODY_BYTES);
    String::from_utf8_lossy(&body).into_owned()
}

/// RFC 6455 §4.1's checks of a 101 response (those tungstenite's client makes).
fn check_switch(request: &Request, response: &Response) -> Result<()> {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let fail = |what: &str| {
        Err(Error::handshake(format!(
            "the server's 101 response {what}"
        )))
    };
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return fail("lacks Upgrade: websocket");
    }
    if !header("connection").is_some_and(|v| {
        v.split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
    }) {
        return fail("lacks Connection: Upgrade");
    }
    let key = request
        .headers()
        .get("sec-websocket-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if header("sec-websocket-accept") != Some(derive_accept_key(key).as_str()) {
        return fail("has a wrong or no Sec-WebSocket-Accept");
    }
    let asked: Vec<&str> = request
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').map(str::trim).collect())
        .unwrap_or_default();
    match header("sec-websocket-protocol") {
        Some(p) if !asked.contains(&p) => fail("names a subprotocol that was not asked for"),
        None if !asked.is_empty() => fail("names none of the subprotocols asked for"),
        _ => Ok(()),
    }
}

/// TLS (for wss://) on the connected socket.
fn wrap_tls(
    params: &ConnectParams,
    target: &Target,
    tcp: TcpStream,
) -> Result<MaybeTlsStream<TcpStream>> {
    if !target.tls {
        return Ok(MaybeTlsStream::Plain(tcp));
    }
    #[cfg(feature = "native-tls")]
    {
        let connector = crate::net::tls::connector(params)?;
        match connector.connect(&target.host, tcp) {
            Ok(s) => Ok(MaybeTlsStream::NativeTls(s)),
            Err(native_tls::HandshakeError::Failure(e)) => Err(Error::tls_from("handshake", e)),
            // A blocking socket with a timeout reports the timeout as an interrupted handshake.
            Err(native_tls::HandshakeError::WouldBlock(_)) => Err(Error::Timeout {
                phase: Phase::Handshake,
                after: params.timeouts.handshake,
            }),
        }
    }
    #[cfg(not(feature = "native-tls"))]
    {
        let _ = (params, tcp);
        Err(Error::tls(
            "wss:// needs the crate feature native-tls (or native-tls-vendored)",
        ))
    }
}

/// TLS, then the WebSocket upgrade written and checked by us, then the socket handed to
/// tungstenite with the bytes already read past the response.
fn upgrade(
    params: &ConnectParams,
    target: &Target,
    request: &Request,
    tcp: TcpStream,
    poll_handle: &TcpStream,
    deadline: Instant,
) -> Result<Socket> {
    let limit = params.timeouts.handshake;
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::Timeout {
            phase: Phase::Handshake,
            after: limit,
        });
    }
    let io_err = |source: io::Error| {
        if is_timeout(&source) {
            Error::Timeout {
                phase: Phase::Handshake,
                after: limit,
            }
        } else {
            Error::Io {
                phase: Phase::Handshake,
                source,
            }
        }
    };
    poll_handle.set_read_timeout(Some(left)).map_err(io_err)?;
    poll_handle.set_write_timeout(Some(left)).map_err(io_err)?;
    let mut stream = wrap_tls(params, target, tcp)?;
    stream
        .write_all(&request_bytes(request)?)
        .and_then(|()| stream.flush())
        .map_err(io_err)?;
    let (response, tail) = read_response(&mut stream, poll_handle, deadline, limit)?;
    let status = response.status().as_u16();
    if status != 101 {
        let body = refusal_body(&mut stream, poll_handle, deadline, limit, &response, tail);
        return Err(if status == 401 || status == 403 {
            Error::Authentication { status, body }
        } else {
            Error::handshake(format!("HTTP {status} {body}"))
        });
    }
    check_switch(request, &response)?;
    Ok(WebSocket::from_partially_read(
        stream,
        tail,
        Role::Client,
        Some(ws_config(params)),
    ))
}

/// Opens the connection and waits for `session.created`, checking the model served. With
/// `cancel`, another thread can stop it at any point ([`Error::Closed`]).
pub(crate) fn open(
    params: &ConnectParams,
    key: &ApiKey,
    cancel: Option<&Cancel>,
) -> Result<Opened> {
    let opened = open_watched(params, key, cancel);
    if let Some(c) = cancel {
        c.unwatch();
        if c.is_requested() {
            return Err(Error::closed());
        }
    }
    opened
}

fn open_watched(params: &ConnectParams, key: &ApiKey, cancel: Option<&Cancel>) -> Result<Opened> {
    params.validate()?;
    let url = params.request_url();
    let target = parse_target(params, &url)?;
    let request = build_request(params, key)?;
    let proxy = proxy::choose(
        &params.proxy,
        target.tls,
        &target.host,
        is_loopback(&target.host),
        |name| std::env::var(name).ok(),
    )?;
    let mut tcp = match &proxy {
        Some(p) => connect_tcp(&p.host, p.port, params.timeouts.connect, cancel)?,
        None => connect_tcp(&target.host, target.port, params.timeouts.connect, cancel)?,
    };
    if let Some(c) = cancel {
        c.watch(&tcp)?;
    }
    let io_err = |phase| move |source| Error::Io { phase, source };
    // Appends are small and latency matters more than packet count.
    tcp.set_nodelay(true).map_err(io_err(Phase::Connect))?;
    if let Some(idle) = params.keepalive.tcp_keepalive {
        set_tcp_keepalive(&tcp, idle).map_err(io_err(Phase::Connect))?;
    }
    let poll_handle = tcp.try_clone().map_err(io_err(Phase::Connect))?;
    let deadline = Instant::now() + params.timeouts.handshake;
    tcp.set_read_timeout(Some(params.timeouts.handshake))
        .map_err(io_err(Phase::Handshake))?;
    tcp.set_write_timeout(Some(params.timeouts.handshake))
        .map_err(io_err(Phase::Handshake))?;
    if let Some(p) = &proxy {
        proxy::connect_tunnel(&mut tcp, p, &target.host, target.port).map_err(|e| match e {
            Error::Io { source, .. } if is_timeout(&source) => Error::Timeout {
                phase: Phase::Handshake,
                after: params.timeouts.handshake,
            },
            e => e,
        })?;
    }
    let mut socket = upgrade(params, &target, &request, tcp, &poll_handle, deadline)?;
    log::info!(
        "connected to {}",
        crate::config::redact_userinfo(url.split('?').next().unwrap_or(""))
    );
    let created = wait_session_created(&mut socket, &poll_handle, params)?;
    poll_handle
        .set_read_timeout(None)
        .map_err(io_err(Phase::SessionCreated))?;
    poll_handle
        .set_write_timeout(None)
        .map_err(io_err(Phase::SessionCreated))?;
    Ok(Opened {
        socket,
        tcp: poll_handle,
        created,
    })
}

fn wait_session_created(
    socket: &mut Socket,
    tcp: &TcpStream,
    params: &ConnectParams,
) -> Result<Event> {
    let limit = params.timeouts.session_created;
    let deadline = Instant::now() + limit;
    let timeout = || Error::Timeout {
        phase: Phase::SessionCreated,
        after: limit,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout());
        }
        tcp.set_read_timeout(Some(left))
            .map_err(|source| Error::Io {
                phase: Phase::SessionCreated,
                source,
            })?;
        let text = match socket.read() {
            Ok(Message::Text(t)) => t.as_str().to_owned(),
            Ok(Message::Close(frame)) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                    .unwrap_or((1005, String::new()));
                return Err(Error::Closed {
                    code: Some(code),
                    reason,
                });
            }
            Ok(Message::Binary(b)) => {
                return Err(Error::UnexpectedEvent {
                    expected: "session.created",
                    got: format!("a binary frame of {} bytes", b.len()),
                })
            }
            Ok(_) => continue, // ping/pong: tungstenite answers pings itself
            Err(tungstenite::Error::Io(e)) if is_timeout(&e) => return Err(timeout()),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Err(Error::Closed {
                    code: Some(1006),
                    reason: "closed before session.created".into(),
                })
            }
            Err(tungstenite::Error::Io(source)) => {
                return Err(Error::Io {
                    phase: Phase::SessionCreated,
                    source,
                })
            }
            Err(e) => {
                return Err(Error::handshake_from(
                    "while waiting for session.created",
                    e,
                ))
            }
        };
        let event = Event::parse(text);
        return match &event.kind {
            EventKind::SessionCreated(session) => {
                check_model(&params.model, session.model.as_deref())?;
                log::info!("session {} created", session.id.as_deref().unwrap_or("?"));
                Ok(event)
            }
            EventKind::Error(e) => Err(Error::Server(e.clone())),
            _ => Err(Error::UnexpectedEvent {
                expected: "session.created",
                got: event.raw().unwrap_or("").chars().take(200).collect(),
            }),
        };
    }
}

/// The service silently serves another model for a misspelled name (the service's own behaviour), so
/// the model in `session.created` must be the one asked for or a dated snapshot of it
/// (`<model>-YYYY-MM-DD`). A `session.created` without a model cannot be checked; we accept
/// it with a warning rather than refuse a server that simply omits the field.
pub(crate) fn check_model(requested: &str, served: Option<&str>) -> Result<()> {
    let Some(served) = served else {
        log::warn!("session.created carries no model; cannot check it is {requested}");
        return Ok(());
    };
    let is_snapshot = served
        .strip_prefix(requested)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|date| {
            let b = date.as_bytes();
            b.len() == 10
                && b.iter().enumerate().all(|(i, c)| {
                    if i == 4 || i == 7 {
                        *c == b'-'
                    } else {
                        c.is_ascii_digit()
                    }
                })
        });
    if served == requested || is_snapshot {
        Ok(())
    } else {
        Err(Error::ModelMismatch {
            requested: requested.to_owned(),
            served: served.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dated_snapshot_of_the_requested_model_is_accepted() {
        check_model("qwen3-asr-flash-realtime", Some("qwen3-asr-flash-realtime")).unwrap();
        check_model(
            "qwen3-asr-flash-realtime",
            Some("qwen3-asr-flash-realtime-2025-10-27"),
        )
        .unwrap();
        check_model("qwen3-asr-flash-realtime", None).unwrap();
        for served in [
            "qwen-omni-turbo-realtime",
            "qwen3-asr-flash-realtime-latest",
            "qwen3-asr-flash-realtime-2025-10-2x",
            "qwen3-asr-flash-realtimeX",
        ] {
            assert!(matches!(
                check_model("qwen3-asr-flash-realtime", Some(served)),
                Err(Error::ModelMismatch { .. })
            ));
        }
        // A dated model asked for must be served exactly.
        assert!(check_model(
            "qwen3-asr-flash-realtime-2025-10-27",
            Some("qwen3-asr-flash-realtime")
        )
        .is_err());
    }

    /// A one-shot server on loopback: reads the upgrade request's head and answers with
    /// `answer(request head)`, written in the given pieces.
    fn one_shot_server(
        answer: impl FnOnce(&str) -> Vec<Vec<u8>> + Send + 'static,
    ) -> (String, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/x", listener.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(conn.read(&mut byte).unwrap(), 1);
                head.push(byte[0]);
            }
            let head = String::from_utf8(head).unwrap();
            for piece in answer(&head) {
                conn.write_all(&piece).unwrap();
                conn.flush().unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            // Keep the socket open until the client is done with it.
            let _ = conn.read(&mut byte);
            head
        });
        (url, t)
    }

    fn accept_for(head: &str) -> String {
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        derive_accept_key(key.as_bytes())
    }

    fn short(url: &str) -> ConnectParams {
        let t = crate::Timeouts {
            handshake: Duration::from_secs(5),
            session_created: Duration::from_secs(5),
            ..Default::default()
        };
        ConnectParams::new()
            .url(url)
            .proxy(crate::Proxy::None)
            .timeouts(t)
    }

    #[test]
    fn a_frame_behind_the_101_in_the_same_segment_is_not_lost() {
        let created = br#"{"type":"session.created","session":{"id":"sess_1","model":"qwen3-asr-flash-realtime"}}"#;
        let (url, server) = one_shot_server(move |head| {
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                accept_for(head)
            )
            .into_bytes();
            out.extend_from_slice(&[0x81, created.len() as u8]);
            out.extend_from_slice(created);
            vec![out]
        });
        let opened = open(&short(&url), &ApiKey::new("k-1"), None).unwrap();
        assert!(matches!(opened.created.kind, EventKind::SessionCreated(_)));
        drop(opened);
        let head = server.join().unwrap();
        assert!(head.starts_with("GET /x?model=qwen3-asr-flash-realtime HTTP/1.1\r\nHost: "));
        assert!(head.contains("\r\nauthorization: Bearer k-1\r\n"), "{head}");
    }

    #[test]
    fn a_101_with_a_wrong_accept_key_is_refused() {
        let (url, server) = one_shot_server(|_| {
            vec![
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\n"
                    .to_vec(),
            ]
        });
        match open(&short(&url), &ApiKey::new("k"), None) {
            Err(Error::Handshake(m)) => {
                assert!(m.to_string().contains("Sec-WebSocket-Accept"), "{m}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        server.join().unwrap();
    }

    #[test]
    fn a_401_keeps_its_status_and_a_body_sent_after_the_head() {
        let body = r#"{"code":"InvalidApiKey","message":"Invalid API-key provided."}"#;
        let (url, server) = one_shot_server(move |_| {
            vec![
                format!(
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes(),
                body.as_bytes().to_vec(),
            ]
        });
        match open(&short(&url), &ApiKey::new("k"), None) {
            Err(Error::Authentication { status, body: got }) => {
                assert_eq!(status, 401);
                assert_eq!(got, body);
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        server.join().unwrap();
    }

    #[test]
    fn plain_ws_is_refused_off_loopback() {
        let p = ConnectParams::new();
        for ok in [
            "ws://127.0.0.1:1/x",
            "ws://localhost:1/x",
            "ws://[::1]:1/x",
            "ws://127.8.0.1/x",
        ] {
            parse_target(&p, ok).unwrap();
        }
        match parse_target(&p, "ws://192.0.2.1/x?model=m") {
            Err(Error::InvalidUrl { url, reason }) => {
                assert_eq!(url, "ws://192.0.2.1/x");
                assert!(reason.contains("clear text"));
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        parse_target(&p.clone().allow_insecure_ws(true), "ws://192.0.2.1/x").unwrap();
        assert!(parse_target(&p, "http://127.0.0.1/x").is_err());
    }

    #[test]
    fn headers_carry_key_agent_workspace_and_overrides() {
        let p = ConnectParams::new()
            .workspace("ws-1")
            .header("user-agent", "custom/1")
            .header("X-Extra", "1");
        let mut p2 = p.clone();
        p2.data_inspection = true;
        let req = build_request(&p2, &ApiKey::new("k1")).unwrap();
        let h = req.headers();
        assert_eq!(h["authorization"], "Bearer k1");
        assert_eq!(h["user-agent"], "custom/1");
        assert_eq!(h["x-dashscope-workspace"], "ws-1");
        assert_eq!(h["x-dashscope-datainspection"], "enable");
        assert_eq!(h["x-extra"], "1");
        assert!(req
            .uri()
            .to_string()
            .ends_with("?model=qwen3-asr-flash-realtime"));
        let req = build_request(&ConnectParams::new(), &ApiKey::new("k1")).unwrap();
        let ua = req.headers()["user-agent"].to_str().unwrap().to_owned();
        assert!(
            ua.starts_with(&format!("qwen-asr-realtime/{}", env!("CARGO_PKG_VERSION"))),
            "{ua}"
        );
        assert!(req.headers().get("x-dashscope-datainspection").is_none());
    }
}
