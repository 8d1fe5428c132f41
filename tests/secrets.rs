//! No secret leaks: with a logger that records every record of every crate at trace level, a
//! whole conversation (direct over ws://, and over wss:// through an HTTP CONNECT proxy that
//! wants credentials) leaves neither the API key, nor a custom header's value, nor the proxy's
//! password in any log message. And a proxy's 407 is reported as the proxy's credentials
//! failing, not the API key. Its own test binary, because it installs the process's logger.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use base64::Engine;
use common::*;
use qwen_asr_emulator::{EmulatorConfig, TlsIdentity};
use qwen_asr_realtime::{Conversation, Error, Proxy, SessionConfig};

const API_KEY: &str = "sk-log-secret-0123456789abcdef";
const HEADER_VALUE: &str = "hdr-secret-9876543210fedcba";
const PROXY_USER: &str = "corp-user";
const PROXY_PASSWORD: &str = "proxy-secret-5555aaaa";

/// Every record, as `target: message`.
struct Recorder(Mutex<Vec<String>>);

impl log::Log for Recorder {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{}: {}", record.target(), record.args());
        self.0.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

fn recorder() -> &'static Recorder {
    static RECORDER: OnceLock<&'static Recorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let r: &'static Recorder = Box::leak(Box::new(Recorder(Mutex::new(Vec::new()))));
        log::set_logger(r).expect("the only logger of this binary");
        log::set_max_level(log::LevelFilter::Trace);
        r
    })
}

fn proxy_credentials_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{PROXY_USER}:{PROXY_PASSWORD}"))
}

/// A tiny HTTP CONNECT proxy on loopback. It answers every CONNECT with 407 (`refuse`), or
/// checks for our Basic credentials and tunnels to the requested loopback address.
struct FakeProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// The CONNECT request heads it received.
    requests: Arc<Mutex<Vec<String>>>,
    /// Every socket it holds, to cut them on drop.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeProxy {
    fn start(refuse: bool) -> FakeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, requests, sockets, threads) = (
                Arc::clone(&stop),
                Arc::clone(&requests),
                Arc::clone(&sockets),
                Arc::clone(&threads),
            );
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    sockets.lock().unwrap().push(conn.try_clone().unwrap());
                    let (requests, sockets2, threads2) = (
                        Arc::clone(&requests),
                        Arc::clone(&sockets),
                        Arc::clone(&threads),
                    );
                    let t = std::thread::spawn(move || {
                        serve(conn, refuse, &requests, &sockets2, &threads2)
                    });
                    threads.lock().unwrap().push(t);
                }
            })
        };
        FakeProxy {
            addr,
            stop,
            requests,
            sockets,
            threads,
            acceptor: Some(acceptor),
        }
    }

    fn url(&self, with_credentials: bool) -> String {
        if with_credentials {
            format!("http://{PROXY_USER}:{PROXY_PASSWORD}@{}", self.addr)
        } else {
            format!("http://{}", self.addr)
        }
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the acceptor
        for s in self.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(a) = self.acceptor.take() {
            a.join().unwrap();
        }
        // Each connection thread may still add its pumps: join until none is left.
        for _ in 0..100 {
            let Some(t) = self.threads.lock().unwrap().pop() else {
                return;
            };
            let _ = t.join();
            for s in self.sockets.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

fn serve(
    mut conn: TcpStream,
    refuse: bool,
    requests: &Mutex<Vec<String>>,
    sockets: &Mutex<Vec<TcpStream>>,
    threads: &Mutex<Vec<JoinHandle<()>>>,
) {
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    requests.lock().unwrap().push(head.clone());
    let authorized = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.eq_ignore_ascii_case("proxy-authorization")
                && v.trim() == format!("Basic {}", proxy_credentials_b64())
        })
    });
    if refuse || !authorized {
        let _ = conn.write_all(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\
              Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n",
        );
        return;
    }
    let target = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("CONNECT "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
        .replace("localhost", "127.0.0.1");
    let Ok(upstream) = target.parse::<SocketAddr>() else {
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    assert!(
        upstream.ip().is_loopback(),
        "the fake proxy only tunnels to loopback"
    );
    let Ok(up) = TcpStream::connect(upstream) else {
        let _ = conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    conn.set_read_timeout(None).unwrap();
    sockets.lock().unwrap().push(up.try_clone().unwrap());
    conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .unwrap();
    let pump = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        })
    };
    let a = pump(conn.try_clone().unwrap(), up.try_clone().unwrap());
    let b = pump(up, conn);
    threads.lock().unwrap().extend([a, b]);
}

/// A short session with the key and a custom header; checks the server got both.
fn run_session(params: qwen_asr_realtime::ConnectParams, emu: &qwen_asr_emulator::Emulator) {
    let params = params
        .api_key(API_KEY)
        .header("X-Custom-Token", HEADER_VALUE);
    let conv = Conversation::start(params, &SessionConfig::vad()).unwrap();
    for chunk in utterances(16000, 1).chunks(1600) {
        conv.append_pcm(chunk).unwrap();
    }
    conv.end_session(WAIT).unwrap();
    let events = collect_until_closed(&conv);
    assert_eq!(transcripts(&events).len(), 1);
    let s = emu.sessions().pop().unwrap();
    assert_eq!(
        s.header("authorization"),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    assert_eq!(s.header("x-custom-token"), Some(HEADER_VALUE));
}

#[test]
fn no_secret_reaches_a_logger_that_records_everything() {
    let rec = recorder();

    // Direct, over ws://.
    let emu = start_emulator(EmulatorConfig {
        api_key: Some(API_KEY.into()),
        ..Default::default()
    });
    run_session(params_for(&emu), &emu);

    // Over wss:// through a proxy that wants credentials.
    let (cert, key) = self_signed_cert();
    let emu = start_emulator(EmulatorConfig {
        api_key: Some(API_KEY.into()),
        tls: Some(TlsIdentity {
            cert_pem: cert.clone(),
            key_pem: key,
        }),
        ..Default::default()
    });
    let proxy = FakeProxy::start(false);
    run_session(
        params_for(&emu)
            .root_certificate(cert)
            .proxy(Proxy::Url(proxy.url(true))),
        &emu,
    );
    let requests = proxy.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "the session went through the proxy");
    assert!(requests[0].contains(&proxy_credentials_b64()));
    drop(proxy);

    let records = rec.0.lock().unwrap().clone();
    // The logger does see the WebSocket library's trace records (its frames), so their
    // absence of secrets means something.
    assert!(
        records.iter().any(|r| r.starts_with("tungstenite")),
        "no trace record from tungstenite among {} records",
        records.len()
    );
    let secrets = [
        API_KEY.to_owned(),
        HEADER_VALUE.to_owned(),
        PROXY_PASSWORD.to_owned(),
        proxy_credentials_b64(),
    ];
    for r in &records {
        for s in &secrets {
            assert!(!r.contains(s.as_str()), "a secret in a log record: {r}");
        }
    }
}

#[test]
fn a_proxy_407_names_the_proxy_credentials_not_the_api_key() {
    recorder();
    let emu = start_emulator(EmulatorConfig::default());
    let proxy = FakeProxy::start(true);
    for with_credentials in [true, false] {
        let params = params_for(&emu)
            .api_key(API_KEY)
            .proxy(Proxy::Url(proxy.url(with_credentials)));
        match Conversation::connect(params) {
            Err(e @ Error::ProxyAuthentication { .. }) => {
                let shown = e.to_string();
                let Error::ProxyAuthentication {
                    proxy: name,
                    credentials_sent,
                    response,
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(name, &proxy.addr.to_string());
                assert_eq!(*credentials_sent, with_credentials);
                assert!(response.contains("407"), "{response}");
                assert!(response.contains("Basic realm"), "{response}");
                assert!(shown.contains(&proxy.addr.to_string()), "{shown}");
                assert!(!shown.contains("API key"), "{shown}");
                if with_credentials {
                    assert!(shown.contains("user and password"), "{shown}");
                }
                for s in [PROXY_PASSWORD, API_KEY] {
                    assert!(!shown.contains(s) && !format!("{e:?}").contains(s), "{e:?}");
                }
            }
            other => panic!("expected a proxy authentication error, got {other:?}"),
        }
    }
    assert_eq!(proxy.requests.lock().unwrap().len(), 2);
    assert!(emu.sessions().is_empty(), "nothing reached the server");
}
