//! TLS connectors, built once per set of extra root certificates and kept for the process.
//!
//! Building a `native_tls::TlsConnector` parses the system's whole CA bundle, and with OpenSSL
//! native-tls 0.2 parses it twice (once for OpenSSL's default paths, once for the path
//! openssl-probe found): about 60 ms of CPU and a megabyte of heap on the benchmark machine,
//! several times that on a Pi Zero 2. Without a cache every reconnect on a flaky link and every
//! new conversation paid it again. A clone shares the OpenSSL context, so handing out clones
//! is free. A CA bundle updated while the process runs is read at its next start.

use std::sync::Mutex;

use crate::config::ConnectParams;
use crate::error::{Error, Result};
use crate::sys::lock;

/// Distinct sets of extra roots kept at most; past it the oldest is dropped. One is the
/// usual case (none, or the one of a private gateway).
const KEPT: usize = 4;

static CONNECTORS: Mutex<Connectors> = Mutex::new(Connectors::new());

/// The connector for `params`' extra root certificates.
pub(crate) fn connector(params: &ConnectParams) -> Result<native_tls::TlsConnector> {
    // Held while building, so that two conversations starting at once build it only once.
    lock(&CONNECTORS).get(&params.root_certificates, || {
        build(&params.root_certificates)
    })
}

fn build(roots: &[Vec<u8>]) -> Result<native_tls::TlsConnector> {
    let mut b = native_tls::TlsConnector::builder();
    for pem in roots {
        let cert = native_tls::Certificate::from_pem(pem)
            .map_err(|e| Error::tls_from("bad root certificate", e))?;
        b.add_root_certificate(cert);
    }
    b.build()
        .map_err(|e| Error::tls_from("cannot set up TLS", e))
}

/// Connectors by the PEM of their extra roots, newest last.
struct Connectors {
    kept: Vec<(Vec<Vec<u8>>, native_tls::TlsConnector)>,
}

impl Connectors {
    const fn new() -> Connectors {
        Connectors { kept: Vec::new() }
    }

    /// The connector kept for `roots`, or a new one from `build`, kept unless it failed.
    fn get(
        &mut self,
        roots: &[Vec<u8>],
        build: impl FnOnce() -> Result<native_tls::TlsConnector>,
    ) -> Result<native_tls::TlsConnector> {
        if let Some((_, c)) = self.kept.iter().find(|(r, _)| r == roots) {
            return Ok(c.clone());
        }
        let c = build()?;
        if self.kept.len() == KEPT {
            self.kept.remove(0);
        }
        self.kept.push((roots.to_vec(), c.clone()));
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connector_is_built_once_per_set_of_roots() {
        let mut cache = Connectors::new();
        let builds = std::cell::Cell::new(0);
        let (a, b) = (vec![b"a".to_vec()], vec![b"b".to_vec()]);
        for roots in [&[][..], &[], &a, &a, &[], &b] {
            cache
                .get(roots, || {
                    builds.set(builds.get() + 1);
                    build(&[])
                })
                .unwrap();
        }
        assert_eq!(builds.get(), 3);
    }

    #[test]
    fn at_most_kept_sets_are_kept_and_failures_are_not() {
        let mut cache = Connectors::new();
        for i in 0..10u8 {
            cache.get(&[vec![i]], || build(&[])).unwrap();
        }
        assert_eq!(cache.kept.len(), KEPT);
        assert_eq!(cache.kept[KEPT - 1].0, vec![vec![9u8]]);
        let failed = cache.get(&[b"not a certificate".to_vec()], || {
            build(&[b"not a certificate".to_vec()])
        });
        assert!(matches!(failed, Err(Error::Tls(_))), "{failed:?}");
        assert!(cache.kept.iter().all(|(r, _)| r[0] != b"not a certificate"));
    }
}
