//! `qwen-asr-emulator`: the emulator as a standalone server on loopback, for benchmarks,
//! manual tests and the CI of clients in any language. It prints its URL on stdout, then serves
//! until stdin reaches end of file (Ctrl-D), or until Ctrl-C. Run with `--help` for the options.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use qwen_asr_emulator::{record, Emulator, EmulatorConfig};

const USAGE: &str = "\
qwen-asr-emulator: a local stand-in for the Qwen-ASR-Realtime service on 127.0.0.1

usage: qwen-asr-emulator [OPTIONS]
   or: cargo run -p qwen-asr-emulator -- [OPTIONS]   (in the qwen-asr-realtime workspace)

Prints the URL to connect to (add ?model=NAME as for the real service), then serves
until stdin is closed (Ctrl-D) or the process is interrupted (Ctrl-C). To run it in the
background, where stdin may be at end of file at once, pass --forever.

options:
  --port N                 listen on 127.0.0.1:N (default: a free port)
  --api-key KEY            require `Authorization: Bearer KEY` (default: no check)
  --model NAME             report NAME as the served model, whatever the client asks for
  --partial-interval-ms N  a partial transcript every N ms of speech (default 400, 0 = none)
  --tls-cert PEM           serve wss:// with this certificate chain (with --tls-key)
  --tls-key PEM            ... and this PKCS#8 private key; the URL names localhost
  --record DIR             keep every session's audio; at the end write DIR/session-N.pcm
                           (16-bit mono, as received, or decoded from Opus), for an Opus
                           session DIR/session-N.opus too (the Ogg stream as received, for
                           opusdec), and DIR/sessions.json (each session's audio digest,
                           items with their place in that audio, close code)
  --forever                ignore stdin; serve until killed
  -h, --help               this text
";

struct Options {
    config: EmulatorConfig,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    record: Option<String>,
    forever: bool,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    let mut o = Options {
        config: EmulatorConfig::default(),
        tls_cert: None,
        tls_key: None,
        record: None,
        forever: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--port" => {
                let v = value("--port")?;
                let port: u16 = v.parse().map_err(|_| format!("--port: not a port: {v}"))?;
                o.config.bind = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            }
            "--api-key" => o.config.api_key = Some(value("--api-key")?),
            "--model" => o.config.served_model = Some(value("--model")?),
            "--partial-interval-ms" => {
                let v = value("--partial-interval-ms")?;
                o.config.partial_interval_ms = v
                    .parse()
                    .map_err(|_| format!("--partial-interval-ms: not a number: {v}"))?;
            }
            "--tls-cert" => o.tls_cert = Some(value("--tls-cert")?),
            "--tls-key" => o.tls_key = Some(value("--tls-key")?),
            "--record" => o.record = Some(value("--record")?),
            "--forever" => o.forever = true,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(Some(o))
}

#[cfg(feature = "native-tls")]
fn set_tls(config: &mut EmulatorConfig, cert: &str, key: &str) -> Result<(), String> {
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("{path}: {e}"));
    config.tls = Some(qwen_asr_emulator::TlsIdentity {
        cert_pem: read(cert)?,
        key_pem: read(key)?,
    });
    Ok(())
}

#[cfg(not(feature = "native-tls"))]
fn set_tls(_: &mut EmulatorConfig, _: &str, _: &str) -> Result<(), String> {
    Err("this build has no TLS: rebuild with the native-tls feature".into())
}

fn main() -> ExitCode {
    let mut options = match parse(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e} (see --help)");
            return ExitCode::from(2);
        }
    };
    match (&options.tls_cert, &options.tls_key) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            if let Err(e) = set_tls(&mut options.config, cert, key) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        _ => {
            eprintln!("error: --tls-cert and --tls-key go together (see --help)");
            return ExitCode::from(2);
        }
    }
    options.config.record_audio = options.record.is_some();
    let emulator = match Emulator::start(options.config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot start the emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", emulator.url());
    let _ = io::stdout().flush();

    if options.forever {
        // park() may return spuriously; nothing ever unparks this thread on purpose.
        loop {
            std::thread::park();
        }
    }
    // Serve until stdin ends, discarding whatever is typed.
    let mut buf = [0u8; 1024];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let sessions = emulator.sessions();
    eprintln!(
        "emulator: {} sessions, {} rejected handshakes",
        sessions.len(),
        emulator.rejected_handshakes()
    );
    emulator.shutdown();
    if let Some(dir) = &options.record {
        if let Err(e) = record::write_sessions(dir.as_ref(), &sessions) {
            eprintln!("error: --record {dir}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
