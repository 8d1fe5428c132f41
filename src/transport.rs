//! Opening the connection: TCP with a connect timeout, TLS, the WebSocket upgrade with our
//! headers, and the wait for `session.created`. Each phase has its own deadline and its own
//! error, because tungstenite's `connect()` has none of that.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{HeaderName, HeaderValue, Uri};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::config::{ApiKey, ConnectParams};
use crate::error::{Error, Phase, Result};
use crate::event::{Event, EventKind};
use crate::proxy;

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
pub(crate) fn build_request(
    params: &ConnectParams,
    key: &ApiKey,
) -> Result<tungstenite::handshake::client::Request> {
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

fn connect_tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream> {
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
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                last = e;
            }
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

fn handshake_error(e: tungstenite::Error, timeout: Duration) -> Error {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            if status == 401 || status == 403 {
                Error::Authentication { status, body }
            } else {
                Error::Handshake(format!("HTTP {status} {body}"))
            }
        }
        tungstenite::Error::Io(e) if is_timeout(&e) => Error::Timeout {
            phase: Phase::Handshake,
            after: timeout,
        },
        tungstenite::Error::Io(source) => Error::Io {
            phase: Phase::Handshake,
            source,
        },
        tungstenite::Error::Tls(e) => Error::Tls(e.to_string()),
        other => Error::Handshake(other.to_string()),
    }
}

fn upgrade(
    params: &ConnectParams,
    target: &Target,
    request: tungstenite::handshake::client::Request,
    tcp: TcpStream,
) -> Result<Socket> {
    let timeout = params.timeouts.handshake;
    let result = if target.tls {
        #[cfg(feature = "native-tls")]
        {
            let connector = crate::tls::connector(params)?;
            tungstenite::client_tls_with_config(
                request,
                tcp,
                Some(ws_config(params)),
                Some(tungstenite::Connector::NativeTls(connector)),
            )
        }
        #[cfg(not(feature = "native-tls"))]
        unreachable!("parse_target refuses wss:// without native-tls")
    } else {
        tungstenite::client::client_with_config(
            request,
            MaybeTlsStream::Plain(tcp),
            Some(ws_config(params)),
        )
    };
    match result {
        Ok((socket, _response)) => Ok(socket),
        Err(HandshakeError::Failure(e)) => Err(handshake_error(e, timeout)),
        // A blocking socket with a timeout reports the timeout as an interrupted handshake.
        Err(HandshakeError::Interrupted(_)) => Err(Error::Timeout {
            phase: Phase::Handshake,
            after: timeout,
        }),
    }
}

/// Opens the connection and waits for `session.created`, checking the model served.
pub(crate) fn open(params: &ConnectParams, key: &ApiKey) -> Result<Opened> {
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
        Some(p) => connect_tcp(&p.host, p.port, params.timeouts.connect)?,
        None => connect_tcp(&target.host, target.port, params.timeouts.connect)?,
    };
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
    let mut socket = upgrade(params, &target, request, tcp)?;
    if Instant::now() > deadline {
        return Err(Error::Timeout {
            phase: Phase::Handshake,
            after: params.timeouts.handshake,
        });
    }
    log::info!("connected to {}", url.split('?').next().unwrap_or(""));
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
                return Err(Error::ConnectionClosed { code, reason });
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
                return Err(Error::ConnectionClosed {
                    code: 1006,
                    reason: "closed before session.created".into(),
                })
            }
            Err(tungstenite::Error::Io(source)) => {
                return Err(Error::Io {
                    phase: Phase::SessionCreated,
                    source,
                })
            }
            Err(e) => return Err(Error::Handshake(e.to_string())),
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

/// The service silently serves another model for a misspelled name (protocol.md §1.1), so
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
