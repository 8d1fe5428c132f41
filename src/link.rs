//! The WebSocket and the audio sent on it, behind one lock.
//!
//! The I/O thread holds the lock for each pass of its loop and lets go of it while it sleeps
//! in `poll(2)`. A sender takes it without waiting, to write its own append frame when the
//! connection is up and nothing is queued ahead of it: handing each frame to the I/O thread
//! (a wake-up, a context switch, a `poll` return) cost more than the rest of an append
//! together (README, "Performance"). When the socket is full, a blocking append waits for
//! room itself, as a blocking write would. Whenever the lock is busy, a reconnect is under
//! way, commands are queued, or a non-blocking append finds the socket full, the frame takes
//! the queue as before, so order is kept and the bounded queue stays the backpressure.

use std::io::ErrorKind;
use std::os::fd::RawFd;
use std::time::Duration;

use tungstenite::{Message, Utf8Bytes};

use crate::replay::{FrameAudio, Replay};
use crate::transport::Socket;

pub(crate) struct Link {
    pub socket: Socket,
    /// The socket's descriptor, to wait for room in it.
    pub fd: RawFd,
    /// Senders waiting for room in the socket themselves (see `Shared::write_direct`); while
    /// there are any, the I/O thread leaves that wait to them.
    pub room_waiters: usize,
    /// Sent audio without a result yet; only kept when reconnecting is on.
    pub replay: Option<Replay>,
    /// Senders may write here themselves: the I/O thread is serving this connection and has
    /// not started closing it. Cleared when the connection ends or a direct write fails.
    pub open: bool,
    /// Part of tungstenite's write buffer is still waiting for room in the socket.
    pub write_blocked: bool,
}

impl Link {
    /// Puts an append frame into tungstenite's buffer (it writes it out once the buffer is
    /// full) after adding it to the replay window, so that a frame lost with the connection is
    /// sent again on the next one. An error means the connection failed.
    pub fn write_audio(
        &mut self,
        text: Utf8Bytes,
        audio: FrameAudio,
    ) -> Result<(), tungstenite::Error> {
        if let Some(replay) = &mut self.replay {
            replay.audio(text.clone(), audio);
        }
        self.write(Message::Text(text))
    }

    /// Writes any message; a full socket is not an error but sets `write_blocked`.
    pub fn write(&mut self, message: Message) -> Result<(), tungstenite::Error> {
        match self.socket.write(message) {
            Ok(()) => Ok(()),
            // The frame is buffered; the rest waits until the socket drains.
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                self.write_blocked = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Pushes tungstenite's buffer into the socket. True if all of it went: otherwise the
    /// socket is full (`write_blocked`), or the write failed, which the I/O thread's next
    /// read reports as the connection's end.
    pub fn flush(&mut self) -> bool {
        match self.socket.flush() {
            Ok(()) => {
                self.write_blocked = false;
                true
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                self.write_blocked = true;
                false
            }
            Err(_) => {
                self.write_blocked = false;
                false
            }
        }
    }
}

/// Sleeps until the socket can take more, or `timeout` passes; true in the first case. Only
/// writability is asked for: incoming data must not end the wait, or a sender would spin
/// while events arrive.
pub(crate) fn wait_writable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: `pfd` is one valid pollfd for the duration of the call. Should the descriptor
    // have been closed meanwhile (a reconnect), poll reports POLLNVAL at once and the caller
    // looks at the connection again under the lock.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    ready > 0 && pfd.revents & libc::POLLOUT != 0
}
