//! One connection, on its own thread, which alone owns the socket: TLS and WebSocket
//! handshakes, then a blocking read loop (an idle session costs no CPU), fault injection, and
//! the close. [`Emulator::shutdown`](super::Emulator::shutdown) ends it by shutting the socket
//! down under it and waking its condition-variable waits.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{header, HeaderValue, StatusCode};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Error as WsError, Message, WebSocket};

use super::session::{error_event, Reply, Session};
use super::{lock, EmulatorConfig, Fault, FaultAction, SessionRecord, Shared, DEFAULT_MODEL, PATH};

/// A client that connects and never completes its handshake does not hold a thread forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the client's close frame after sending ours.
const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// RFC 6455 caps a close reason at 123 bytes.
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// The socket, with or without TLS.
enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "native-tls")]
    Tls(Box<native_tls::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath, for timeouts, shutdown and SO_LINGER.
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            #[cfg(feature = "native-tls")]
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            #[cfg(feature = "native-tls")]
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            #[cfg(feature = "native-tls")]
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            #[cfg(feature = "native-tls")]
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// What the upgrade request told us.
struct Upgrade {
    headers: Vec<(String, String)>,
    query: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    End,
}

/// The connection thread's body. `key` names the socket's clone in the shared registry.
pub(super) fn run(shared: Arc<Shared>, tcp: TcpStream, key: u64) {
    let was_session = serve(&shared, tcp, key);
    shared.connection_ended(key, was_session);
}

/// Returns whether the connection became a session.
// The large Err is tungstenite's handshake callback type (an HTTP response), not ours to box.
#[allow(clippy::result_large_err)]
fn serve(shared: &Arc<Shared>, tcp: TcpStream, key: u64) -> bool {
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let _ = tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let stream = match wrap_tls(shared, tcp) {
        Ok(s) => s,
        Err(e) => {
            info!("emulator: TLS handshake with {peer} failed: {e}");
            shared.count_rejected();
            return false;
        }
    };
    let config = &shared.config;
    let max = config.max_frame_bytes.max(1);
    let ws_config = WebSocketConfig::default()
        .max_frame_size(Some(max))
        .max_message_size(Some(max));
    let mut upgrade = None;
    let mut refused = false;
    let callback = |req: &Request, resp: Response| {
        let r = check_request(config, req, resp, &mut upgrade);
        if r.is_err() {
            // Counted before the refusal is written, so a client that has seen it can rely
            // on `rejected_handshakes`.
            shared.count_rejected();
            refused = true;
        }
        r
    };
    let ws = match tungstenite::accept_hdr_with_config(stream, callback, Some(ws_config)) {
        Ok(ws) => ws,
        Err(e) => {
            info!("emulator: handshake with {peer} refused or failed: {e}");
            if !refused {
                shared.count_rejected();
            }
            return false;
        }
    };
    let Some(Upgrade { headers, query }) = upgrade else {
        return false;
    };
    let _ = ws.get_ref().tcp().set_read_timeout(None);

    let model = config
        .served_model
        .clone()
        .or_else(|| query_param(&query, "model").filter(|m| !m.is_empty()))
        .unwrap_or_else(|| DEFAULT_MODEL.to_owned());
    let session = Session::new(model, config.partial_interval_ms, config.record_audio);
    let record = Arc::new(Mutex::new(session.new_record(headers, query)));
    let number = shared.add_session(Arc::clone(&record));
    let faults_on = config.fault_sessions.is_none_or(|n| number <= n);
    info!(
        "emulator: session {} opened from {peer} (model {})",
        session.id(),
        lock(&record).model
    );
    let mut conn = Conn {
        shared: Arc::clone(shared),
        key,
        ws,
        record,
        session,
        appends: 0,
        fired_instead: Default::default(),
        faults_on,
    };
    conn.run();
    info!("emulator: session {} ended", conn.session.id());
    true
}

fn wrap_tls(shared: &Shared, tcp: TcpStream) -> io::Result<Stream> {
    #[cfg(feature = "native-tls")]
    if let Some(acceptor) = &shared.tls {
        return match acceptor.accept(tcp) {
            Ok(s) => Ok(Stream::Tls(Box::new(s))),
            Err(native_tls::HandshakeError::Failure(e)) => Err(io::Error::other(e)),
            Err(native_tls::HandshakeError::WouldBlock(_)) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        };
    }
    let _ = shared;
    Ok(Stream::Plain(tcp))
}

/// Checks the path and the API key, and keeps the headers and query for the session record.
#[allow(clippy::result_large_err)]
fn check_request(
    config: &EmulatorConfig,
    req: &Request,
    resp: Response,
    upgrade: &mut Option<Upgrade>,
) -> Result<Response, ErrorResponse> {
    let path = req.uri().path();
    if path != PATH {
        return Err(json_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("No such endpoint: {path}. Use {PATH}?model=<model>."),
        ));
    }
    if let Some(key) = &config.api_key {
        // The Python SDK up to 1.25.10 sends a lower-case "bearer".
        let ok = req
            .headers()
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.trim().split_once(' '))
            .any(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && token.trim() == key);
        if !ok {
            return Err(json_error(
                StatusCode::UNAUTHORIZED,
                "InvalidApiKey",
                "Invalid API-key provided.",
            ));
        }
    }
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_owned(), v)
        })
        .collect();
    let query = req.uri().query().unwrap_or("").to_owned();
    *upgrade = Some(Upgrade { headers, query });
    Ok(resp)
}

/// An HTTP error reply with a DashScope-style JSON body.
fn json_error(status: StatusCode, code: &str, message: &str) -> ErrorResponse {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    let len = body.len();
    let mut r = ErrorResponse::new(Some(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The percent-decoded value of `name` in a query string.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A live session.
struct Conn {
    shared: Arc<Shared>,
    key: u64,
    ws: WebSocket<Stream>,
    record: Arc<Mutex<SessionRecord>>,
    session: Session,
    /// Append frames so far, for the faults.
    appends: u64,
    /// The `InsteadOf` faults (by index) that already fired on this connection.
    fired_instead: std::collections::HashSet<usize>,
    /// Whether faults apply to this session (`EmulatorConfig::fault_sessions`).
    faults_on: bool,
}

impl Conn {
    fn run(&mut self) {
        let created = self.session.created();
        if self.send(vec![created]) == Flow::End {
            return;
        }
        loop {
            let message = match self.ws.read() {
                Ok(m) => m,
                Err(e) => {
                    self.read_failed(e);
                    return;
                }
            };
            let mut out = Vec::new();
            let mut appended = false;
            match message {
                Message::Text(text) => {
                    if let Some(action) = self.instead_of(text.as_str()) {
                        if self.fault(&action) == Flow::End {
                            return;
                        }
                        continue;
                    }
                    let mut rec = lock(&self.record);
                    let before = rec.appends;
                    self.session.on_text(text.as_str(), &mut rec, &mut out);
                    appended = rec.appends != before;
                }
                Message::Binary(data) => self.session.on_binary(data.len(), &mut out),
                Message::Close(frame) => {
                    // 1005: "no status code" (RFC 6455 §7.4.1), for a close frame without one.
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    debug!("emulator {}: <- close {code}", self.session.id());
                    self.note_close(code);
                    // tungstenite queued the reply; flushing sends it.
                    let _ = self.ws.flush();
                    return;
                }
                // Pongs are queued by tungstenite and go out with the next read or write.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
            if self.send(out) == Flow::End {
                return;
            }
            if appended {
                self.appends += 1;
                if self.run_faults() == Flow::End {
                    return;
                }
            }
        }
    }

    fn read_failed(&mut self, e: WsError) {
        match e {
            WsError::Capacity(e) => {
                debug!("emulator {}: {e}", self.session.id());
                self.abort(1009, "message too big");
            }
            WsError::Utf8(_) => self.abort(1007, "invalid UTF-8 in a text frame"),
            WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
                debug!(
                    "emulator {}: client left without a close frame",
                    self.session.id()
                );
            }
            WsError::Protocol(e) => {
                debug!("emulator {}: protocol error: {e}", self.session.id());
                self.abort(1002, "protocol error");
            }
            e => debug!("emulator {}: read ended: {e}", self.session.id()),
        }
    }

    /// Writes the replies in order and flushes; a [`Reply::Close`] ends the connection.
    fn send(&mut self, out: Vec<Reply>) -> Flow {
        for reply in out {
            match reply {
                Reply::Send(text) => {
                    if let Err(e) = self.ws.write(Message::text(text)) {
                        debug!("emulator {}: write failed: {e}", self.session.id());
                        return Flow::End;
                    }
                }
                Reply::Close { code, reason } => {
                    self.close(code, &reason);
                    return Flow::End;
                }
            }
        }
        match self.ws.flush() {
            Ok(()) => Flow::Continue,
            Err(e) => {
                debug!("emulator {}: write failed: {e}", self.session.id());
                Flow::End
            }
        }
    }

    fn note_close(&self, code: u16) {
        let mut rec = lock(&self.record);
        rec.close_code.get_or_insert(code);
    }

    fn close_frame(code: u16, reason: &str) -> CloseFrame {
        let mut end = reason.len().min(MAX_CLOSE_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        CloseFrame {
            code: CloseCode::from(code),
            reason: reason[..end].to_owned().into(),
        }
    }

    /// An orderly close: our close frame, then the client's reply (or a bounded wait for it).
    fn close(&mut self, code: u16, reason: &str) {
        debug!("emulator {}: -> close {code}", self.session.id());
        self.note_close(code);
        if self
            .ws
            .close(Some(Self::close_frame(code, reason)))
            .is_err()
        {
            return;
        }
        let deadline = Instant::now() + CLOSE_REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero()
                || self
                    .ws
                    .get_ref()
                    .tcp()
                    .set_read_timeout(Some(left))
                    .is_err()
            {
                return;
            }
            // Messages after our close are ignored; the reply ends it with ConnectionClosed.
            if self.ws.read().is_err() {
                return;
            }
        }
    }

    /// A close after a framing error: the rest of the offending frame is still unread, so the
    /// WebSocket layer cannot be used any more. Send the close frame, stop writing, and discard
    /// what the client still sends (so closing the socket does not turn into a reset that
    /// could destroy the close frame before the client reads it).
    fn abort(&mut self, code: u16, reason: &str) {
        debug!("emulator {}: -> close {code} ({reason})", self.session.id());
        self.note_close(code);
        let _ = self.ws.close(Some(Self::close_frame(code, reason)));
        let tcp = self.ws.get_ref().tcp();
        let _ = tcp.shutdown(Shutdown::Write);
        discard_input(tcp, CLOSE_REPLY_TIMEOUT);
    }

    fn run_faults(&mut self) -> Flow {
        if !self.faults_on {
            return Flow::Continue;
        }
        let shared = Arc::clone(&self.shared);
        for fault in &shared.config.faults {
            if let Fault::AfterAppends { n, action } = fault {
                if *n == self.appends && self.fault(action) == Flow::End {
                    return Flow::End;
                }
            }
        }
        Flow::Continue
    }

    /// The action of an `InsteadOf` fault that this client event triggers (once each), after
    /// recording the event as received.
    fn instead_of(&mut self, text: &str) -> Option<FaultAction> {
        if !self.faults_on {
            return None;
        }
        let shared = Arc::clone(&self.shared);
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let event_type = value.get("type")?.as_str()?;
        let (index, action) =
            shared
                .config
                .faults
                .iter()
                .enumerate()
                .find_map(|(i, f)| match f {
                    Fault::InsteadOf {
                        event_type: t,
                        action,
                    } if t == event_type => Some((i, action)),
                    _ => None,
                })?;
        if !self.fired_instead.insert(index) {
            return None;
        }
        lock(&self.record).client_events.push(value.clone());
        Some(action.clone())
    }

    fn fault(&mut self, action: &FaultAction) -> Flow {
        let id = self.session.id().to_owned();
        info!(
            "emulator {id}: injecting fault after append {}: {action:?}",
            self.appends
        );
        match action {
            FaultAction::SendText(text) => self.send(vec![Reply::Send(text.clone())]),
            FaultAction::SendRawText(data) => {
                use tungstenite::protocol::frame::coding::{Data, OpCode};
                use tungstenite::protocol::frame::Frame;
                let frame = Frame::message(data.clone(), OpCode::Data(Data::Text), true);
                match self.ws.send(Message::Frame(frame)) {
                    Ok(()) => Flow::Continue,
                    Err(_) => Flow::End,
                }
            }
            FaultAction::SendBinary(data) => match self.ws.send(Message::binary(data.clone())) {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::End,
            },
            FaultAction::SendError { code, message } => {
                // invalid_request_error: the class of error after which the service keeps the
                // connection open (server_error closes it), as this fault does.
                let e = error_event("invalid_request_error", code, message, None, None);
                self.send(vec![e])
            }
            FaultAction::Close { code, reason } => {
                self.close(*code, reason);
                Flow::End
            }
            FaultAction::Drop => {
                // Shutdown reaches the socket despite the registry's clone of it.
                let _ = self.ws.get_ref().tcp().shutdown(Shutdown::Both);
                Flow::End
            }
            FaultAction::Reset => {
                if let Err(e) = set_linger_zero(self.ws.get_ref().tcp()) {
                    warn!("emulator {id}: SO_LINGER failed, the reset becomes a close: {e}");
                }
                // Close every descriptor of the socket (the registry's clone too): with a
                // zero linger, the last close sends RST instead of FIN.
                drop(self.shared.take_socket(self.key));
                Flow::End
            }
            FaultAction::PauseReading(d) => {
                if self.shared.wait_for_shutdown(Some(*d)) {
                    Flow::End
                } else {
                    Flow::Continue
                }
            }
            FaultAction::Stall => {
                self.shared.wait_for_shutdown(None);
                Flow::End
            }
        }
    }
}

/// Reads and drops whatever the peer sends, until it closes or `timeout` passes.
fn discard_input(mut tcp: &TcpStream, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// SO_LINGER on, with a zero timeout: closing the socket then sends RST.
fn set_linger_zero(tcp: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is open for the duration of the call (borrowed from `tcp`), and the
    // option value is a properly sized and aligned `linger`.
    let r = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_percent_decoded() {
        assert_eq!(
            query_param("a=1&model=qwen3-asr%2Dflash+x", "model").as_deref(),
            Some("qwen3-asr-flash x")
        );
        assert_eq!(query_param("model", "model").as_deref(), Some(""));
        assert_eq!(query_param("x=1", "model"), None);
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%"), "%");
    }
}
