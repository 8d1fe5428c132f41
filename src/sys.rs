//! Thin, checked wrappers over the few socket system calls the standard library lacks.

use std::io;
use std::os::fd::RawFd;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

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
