//! Opening a connection: TCP (interruptible), an optional HTTP proxy tunnel, TLS, the
//! WebSocket upgrade written by hand (so no library logs the key), and the wait for
//! `session.created`.

mod connect;
pub(crate) mod proxy;
#[cfg(feature = "native-tls")]
pub(crate) mod tls;

pub(crate) use connect::*;
