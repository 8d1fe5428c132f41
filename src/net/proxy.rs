//! HTTP CONNECT proxies, chosen from the configuration or the environment as curl does.

use std::fmt;
use std::io::{Read, Write};
use std::net::TcpStream;

use base64::Engine;

use crate::config::Proxy;
use crate::error::{Error, Phase, Result};

/// A proxy to tunnel through.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ProxyTarget {
    pub host: String,
    pub port: u16,
    /// `user:pass`, sent as Basic `Proxy-Authorization`.
    pub credentials: Option<String>,
}

impl fmt::Debug for ProxyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The longest CONNECT response header we read; a real one is a few hundred bytes.
const MAX_RESPONSE_HEADER: usize = 8 * 1024;

/// The proxy for a connection to `host` (`tls` for wss://), reading the environment through
/// `var` when the configuration says so.
pub(crate) fn choose(
    proxy: &Proxy,
    tls: bool,
    host: &str,
    is_loopback: bool,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<ProxyTarget>> {
    let url = match proxy {
        Proxy::None => return Ok(None),
        Proxy::Url(u) => u.clone(),
        Proxy::Environment => {
            let first =
                |names: &[&str]| names.iter().find_map(|n| var(n).filter(|v| !v.is_empty()));
            let scheme_vars: &[&str] = if tls {
                &["HTTPS_PROXY", "https_proxy"]
            } else {
                &["HTTP_PROXY", "http_proxy"]
            };
            let Some(u) = first(scheme_vars).or_else(|| first(&["ALL_PROXY", "all_proxy"])) else {
                return Ok(None);
            };
            let no_proxy = first(&["NO_PROXY", "no_proxy"]).unwrap_or_default();
            if is_loopback || bypassed(&no_proxy, host) {
                return Ok(None);
            }
            u
        }
    };
    parse(&url).map(Some)
}

/// curl's NO_PROXY rules: `*` matches everything; `example.com` and `.example.com` match the
/// host and its subdomains; entries are separated by commas or spaces.
fn bypassed(no_proxy: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    no_proxy
        .split([',', ' '])
        .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|e| e == "*" || host == e || host.ends_with(&format!(".{e}")))
}

fn parse(url: &str) -> Result<ProxyTarget> {
    let bad = |reason: &str| Error::InvalidConfig {
        field: "proxy",
        message: format!("{reason} in proxy URL {:?}", redact(url)),
    };
    let rest = match url.split_once("://") {
        Some(("http", r)) => r,
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "scheme {scheme:?} is not supported (only http://)"
            )))
        }
        None => url,
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let (credentials, hostport) = match authority.rsplit_once('@') {
        Some((c, h)) => (Some(c.to_owned()), h),
        None => (None, authority),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| bad("a bad port"))?)
        }
        _ => (hostport, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(ProxyTarget {
        host: host.to_owned(),
        port,
        credentials,
    })
}

/// The URL without its credentials, for messages.
fn redact(url: &str) -> String {
    crate::config::redact_userinfo(url)
}

/// Asks the proxy for a tunnel to `host:port` over `stream` (whose timeouts bound the wait).
pub(crate) fn connect_tunnel(
    stream: &mut TcpStream,
    proxy: &ProxyTarget,
    host: &str,
    port: u16,
) -> Result<()> {
    let io = |source| Error::Io {
        phase: Phase::Handshake,
        source,
    };
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(c) = &proxy.credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(c.as_bytes());
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).map_err(io)?;
    // Read byte by byte up to the blank line: nothing of the tunnelled stream may be consumed.
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_RESPONSE_HEADER {
            return Err(Error::handshake("the proxy's CONNECT response is too long"));
        }
        match stream.read(&mut byte).map_err(io)? {
            0 => {
                return Err(Error::handshake(
                    "the proxy closed the connection during CONNECT",
                ))
            }
            _ => head.push(byte[0]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(()),
        Some(407) => {
            // The challenges say which schemes the proxy takes (we send only Basic).
            let challenges = text.lines().filter_map(|l| {
                l.split_once(':')
                    .filter(|(name, _)| name.trim().eq_ignore_ascii_case("proxy-authenticate"))
                    .map(|(_, value)| value.trim())
            });
            let response = std::iter::once(status_line.trim())
                .chain(challenges)
                .collect::<Vec<_>>()
                .join("; ");
            Err(Error::ProxyAuthentication {
                proxy: format!("{}:{}", proxy.host, proxy.port),
                credentials_sent: proxy.credentials.is_some(),
                response,
            })
        }
        _ => Err(Error::handshake(format!(
            "the proxy {}:{} refused CONNECT {authority}: {status_line}",
            proxy.host, proxy.port
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |n| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_environment_is_read_as_curl_does() {
        let e = env(&[
            ("HTTPS_PROXY", "http://user:pw@proxy.corp:3128"),
            ("NO_PROXY", "internal.corp, .example.org"),
        ]);
        let p = choose(
            &Proxy::Environment,
            true,
            "dashscope.aliyuncs.com",
            false,
            &e,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            p,
            ProxyTarget {
                host: "proxy.corp".into(),
                port: 3128,
                credentials: Some("user:pw".into())
            }
        );
        assert_eq!(
            choose(&Proxy::Environment, true, "a.internal.corp", false, &e).unwrap(),
            None
        );
        assert_eq!(
            choose(&Proxy::Environment, true, "example.org", false, &e).unwrap(),
            None
        );
        assert_eq!(
            choose(&Proxy::Environment, true, "localhost", true, &e).unwrap(),
            None,
            "loopback goes direct"
        );
        assert_eq!(
            choose(&Proxy::Environment, false, "h", false, &e).unwrap(),
            None,
            "ws:// reads HTTP_PROXY"
        );

        let e = env(&[("https_proxy", "proxy:8080"), ("ALL_PROXY", "http://all:1")]);
        assert_eq!(
            choose(&Proxy::Environment, true, "h", false, &e)
                .unwrap()
                .unwrap()
                .port,
            8080
        );
        assert_eq!(
            choose(&Proxy::Environment, false, "h", false, &e)
                .unwrap()
                .unwrap()
                .host,
            "all"
        );
        let e = env(&[("ALL_PROXY", "http://all:1"), ("no_proxy", "*")]);
        assert_eq!(
            choose(&Proxy::Environment, true, "h", false, &e).unwrap(),
            None
        );
    }

    #[test]
    fn the_configuration_overrides_the_environment() {
        let e = env(&[("HTTPS_PROXY", "http://envproxy:1")]);
        assert_eq!(choose(&Proxy::None, true, "h", false, &e).unwrap(), None);
        let p = choose(
            &Proxy::Url("http://127.0.0.1:9".into()),
            true,
            "localhost",
            true,
            &e,
        )
        .unwrap()
        .unwrap();
        assert_eq!((p.host.as_str(), p.port), ("127.0.0.1", 9));
        let err = choose(
            &Proxy::Url("socks5://u:secret@h:1".into()),
            true,
            "h",
            false,
            &e,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("socks5") && !err.contains("secret"), "{err}");
    }
}
