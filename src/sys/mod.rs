//! The few system calls the standard library lacks, each checked and wrapped (the crate's
//! only `unsafe` on sockets), and the one `lock` helper.

pub(crate) mod wake;

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Caps the kernel's send buffer for this socket. Left alone, Linux autotunes it up to
/// `net.ipv4.tcp_wmem`'s maximum (4 MiB by default): on a link slower than the audio, that
/// is tens of seconds of audio that appends hand over without ever waiting, that nobody can
/// see, and that is lost with the connection. The kernel doubles the value for its own
/// bookkeeping; what it reports back is returned.
pub(crate) fn set_send_buffer(fd: RawFd, bytes: usize) -> io::Result<usize> {
    let value = bytes.clamp(1, i32::MAX as usize) as libc::c_int;
    // SAFETY: a socket fd and a pointer to a c_int that lives through the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid pointers to a c_int and its length, both live through the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut got as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(got).unwrap_or(0))
}

/// Bytes the kernel still holds in this TCP socket's send queue: not yet sent, or sent and
/// not yet acknowledged by the peer (`SIOCOUTQ`). 0 where the call is not available.
pub(crate) fn unsent_bytes(fd: RawFd) -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ for sockets) writes one c_int through the pointer.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
        if rc == 0 {
            return u64::try_from(n).unwrap_or(0);
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = fd;
    0
}

/// Takes a lock whether or not another thread panicked while holding it: the small pieces
/// of state behind our locks are valid after any panic, and a poisoned lock must not take
/// the conversation down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A TCP connect that another thread can interrupt: it waits for the socket in `poll(2)`
/// together with `wake_fd`, and each time that is readable asks `stop` (which may drain it)
/// whether to give up. `Err` of kind `Interrupted` when it did. Without this, a caller that
/// closes the conversation during a reconnect would wait out the connect timeout.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn connect(
    addr: &SocketAddr,
    timeout: Duration,
    wake_fd: RawFd,
    stop: &mut dyn FnMut() -> bool,
) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let (storage, len) = sockaddr(addr);
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket takes no pointers; its result is checked.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns; the stream closes it on every path.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: `storage` holds a sockaddr of `len` bytes for `addr`'s family.
    let rc = unsafe { libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                },
                libc::pollfd {
                    fd: wake_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: two valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[1].revents != 0 && stop() {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "the conversation was closed",
                ));
            }
            if fds[0].revents != 0 {
                break;
            }
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// The C form of a socket address.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage (and sockaddr_in/in6) bit pattern.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Elsewhere the standard library's connect, which cannot be interrupted.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn connect(
    addr: &SocketAddr,
    timeout: Duration,
    _wake_fd: RawFd,
    _stop: &mut dyn FnMut() -> bool,
) -> io::Result<TcpStream> {
    TcpStream::connect_timeout(addr, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn a_connect_is_made_and_can_be_interrupted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (rx, tx) = std::os::unix::net::UnixStream::pair().unwrap();
        let s = connect(&addr, Duration::from_secs(5), rx.as_raw_fd(), &mut || true).unwrap();
        assert_eq!(s.peer_addr().unwrap(), addr);
        // A connect that hangs, on loopback: a listener whose accept queue is full drops the
        // SYN. The wait ends because the wake-up fd says stop, not by the (hour-long) timeout.
        let full = TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: a listening socket; listen again only lowers its backlog.
        assert_eq!(unsafe { libc::listen(full.as_raw_fd(), 0) }, 0);
        let full_addr = full.local_addr().unwrap();
        let _queued: Vec<TcpStream> = (0..2)
            .filter_map(|_| TcpStream::connect_timeout(&full_addr, Duration::from_millis(300)).ok())
            .collect();
        (&tx).write_all(&[1]).unwrap();
        let mut asked = 0;
        let r = connect(
            &full_addr,
            Duration::from_secs(3600),
            rx.as_raw_fd(),
            &mut || {
                asked += 1;
                true
            },
        );
        let e = r.expect_err("a connect into a full accept queue went through");
        assert_eq!(e.kind(), io::ErrorKind::Interrupted, "{e:?}");
        assert_eq!(asked, 1);
    }

    #[test]
    fn the_send_buffer_is_capped_and_the_kernel_backlog_is_visible() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // Accepted but never read: what is written stays in the two kernels' buffers.
        let (_rx, _) = listener.accept().unwrap();
        let got = set_send_buffer(tx.as_raw_fd(), 16 * 1024).unwrap();
        assert!((16 * 1024..=64 * 1024).contains(&got), "SO_SNDBUF {got}");
        tx.set_nonblocking(true).unwrap();
        let chunk = [0u8; 4096];
        let mut written = 0u64;
        for _ in 0..100_000 {
            match tx.write(&chunk) {
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        // The receiver's window takes some of it; the rest waits in our send queue, and the
        // total stays far below an autotuned 4 MiB buffer.
        assert!(
            written < 2 << 20,
            "wrote {written} bytes before the socket was full"
        );
        #[cfg(target_os = "linux")]
        {
            let held = unsent_bytes(tx.as_raw_fd());
            assert!(held > 0 && held <= written, "SIOCOUTQ {held} of {written}");
        }
    }
}
