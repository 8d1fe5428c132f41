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
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tungstenite::{Message, Utf8Bytes};

use crate::io::replay::{FrameAudio, Replay};
use crate::net::Socket;

/// The only owner of the WebSocket: every byte to and from the service goes through these
/// methods, under the one lock around the link. Audio has one way in, [`Link::try_send`], for
/// both writers (a caller's thread writing its own frame, and the I/O thread writing queued
/// ones), so the rules that keep them in order live here rather than at the call sites.
pub(crate) struct Link {
    socket: Socket,
    /// A second handle on the socket, to wait for room in it and to ask the kernel what it
    /// still holds. Shared, so that a sender waiting on it keeps it open across a reconnect.
    tcp: Arc<TcpStream>,
    /// Senders waiting for room in the socket themselves (see `Shared::write_direct`); while
    /// there are any, the I/O thread leaves that wait to them.
    room_waiters: usize,
    /// Sent audio without a result yet: its frames when reconnecting is on (to send them
    /// again), and its accounting always (to report what never got a result).
    replay: Replay,
    /// Senders may write here themselves: the I/O thread is serving this connection and has
    /// not started closing it. Cleared when the connection ends or a direct write fails.
    open: bool,
    /// Part of tungstenite's write buffer is still waiting for room in the socket.
    write_blocked: bool,
    /// Why the last audio write failed: the connection is broken, which the I/O thread
    /// reports as its end.
    failure: Option<String>,
    /// Wire bytes per ms of audio in the last append frame (0 before the first).
    wire_bytes_per_ms: u64,
}

impl Link {
    /// A link closed to senders until the I/O thread has set it up.
    pub fn new(socket: Socket, tcp: Arc<TcpStream>, replay: Replay) -> Link {
        Link {
            socket,
            tcp,
            room_waiters: 0,
            replay,
            open: false,
            write_blocked: false,
            failure: None,
            wire_bytes_per_ms: 0,
        }
    }

    /// Opens the link to senders' own writes (the I/O thread serves a connection), or closes
    /// it (the connection is ending, or being replaced).
    pub fn set_open(&mut self, open: bool) {
        self.open = open;
        if open {
            self.write_blocked = false;
            self.failure = None;
        }
    }

    /// Senders may write here themselves.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Part of what was written still waits for room in the socket.
    pub fn is_write_blocked(&self) -> bool {
        self.write_blocked
    }

    /// Some sender is waiting for room in the socket itself (see [`wait_for_room`]); the
    /// I/O thread then leaves that wait to it, so that one of them wakes, not both.
    pub fn has_room_waiters(&self) -> bool {
        self.room_waiters > 0
    }

    /// The audio sent without a result yet.
    pub fn replay(&self) -> &Replay {
        &self.replay
    }

    /// The same, to record commits and results, and to start a new session.
    pub fn replay_mut(&mut self) -> &mut Replay {
        &mut self.replay
    }

    /// Replaces the replay window (when the I/O thread starts, knowing the policy).
    pub fn set_replay(&mut self, replay: Replay) {
        self.replay = replay;
    }

    /// The next message from the server, if one is whole (the socket is non-blocking).
    pub fn read(&mut self) -> Result<Message, tungstenite::Error> {
        self.socket.read()
    }

    /// True until either side has started closing.
    pub fn can_write(&self) -> bool {
        self.socket.can_write()
    }

    /// Starts the closing handshake with this frame, and closes the link to senders.
    pub fn close(&mut self, frame: tungstenite::protocol::CloseFrame) {
        self.open = false;
        // An error means the socket is gone already; the next read reports it.
        let _ = self.socket.close(Some(frame));
        self.flush();
    }

    /// Sends one append frame, for either writer: if the socket has room, the frame enters
    /// the replay accounting and tungstenite's buffer (flush to push it out). `Err` hands the
    /// frame back untouched when the socket is full: the caller waits for room or queues it.
    /// A write that fails breaks the link (see [`take_failure`](Self::take_failure)), but
    /// the frame is accounted: sent again after a reconnect, or reported as lost.
    pub fn try_send(&mut self, text: Utf8Bytes, audio: FrameAudio) -> Result<(), Utf8Bytes> {
        if self.write_blocked && !self.flush() {
            return Err(text);
        }
        if let Err(e) = self.write_audio(text, audio) {
            self.open = false;
            self.failure = Some(e.to_string());
        }
        Ok(())
    }

    /// Sends audio that the I/O thread encodes (see `opus_uplink`): `pcm` (the caller's PCM
    /// append frame, never sent itself) enters the replay accounting, which re-encodes it
    /// after a reconnect, and `wire` (the frames that carry its audio and the audio before
    /// it: whole Ogg pages, none while a page fills, each with its milliseconds) is written
    /// in its place. `failure` (the encoder failed) breaks the link like a failed write: the
    /// PCM is in the replay, so a new connection, with a new encoder, sends it again.
    /// The caller has checked that the socket has room, as [`try_send`](Self::try_send) does.
    #[cfg_attr(not(feature = "opus"), allow(dead_code))]
    pub fn send_encoded(
        &mut self,
        pcm: Utf8Bytes,
        audio: FrameAudio,
        wire: Vec<(Utf8Bytes, u64)>,
        failure: Option<String>,
    ) {
        self.replay.audio(pcm, audio);
        let mut failure = failure;
        for (text, ms) in wire {
            if let Some(per_ms) = (text.len() as u64).checked_div(ms) {
                self.wire_bytes_per_ms = per_ms.max(1);
            }
            if let Err(e) = self.write(Message::Text(text)) {
                failure.get_or_insert(e.to_string());
                break;
            }
        }
        if let Some(f) = failure {
            self.open = false;
            self.failure = Some(f);
        }
    }

    /// Why the last audio write failed, once.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    /// Takes over a new connection.
    pub fn replace_socket(&mut self, socket: Socket, tcp: Arc<TcpStream>) {
        self.socket = socket;
        self.tcp = tcp;
        // What the old socket's writes left behind is not the new one's: a stale failure
        // would end the new connection at its first write (as it did when a command held
        // over from the old connection went first and the link stayed closed to senders
        // until then, so `set_open` had not cleared it yet).
        self.write_blocked = false;
        self.failure = None;
    }

    /// A handle that keeps the socket open for a wait outside the lock.
    pub fn poll_handle(&self) -> Arc<TcpStream> {
        Arc::clone(&self.tcp)
    }

    /// Puts an append frame into tungstenite's buffer (it writes it out once the buffer is
    /// full) after adding it to the replay accounting, so that a frame lost with the
    /// connection is sent again on the next one, or reported. An error means the connection
    /// failed.
    fn write_audio(
        &mut self,
        text: Utf8Bytes,
        audio: FrameAudio,
    ) -> Result<(), tungstenite::Error> {
        // What a millisecond of this audio costs on the wire, to tell how far behind the
        // bytes still in the socket put us.
        if let Some(per_ms) = (text.len() as u64).checked_div(audio.duration_ms()) {
            self.wire_bytes_per_ms = per_ms.max(1);
        }
        self.replay.audio(text.clone(), audio);
        self.write(Message::Text(text))
    }

    /// Audio that has been written to the socket but not yet left this device: what the
    /// kernel still holds in its send queue (unsent or unacknowledged), in ms of audio.
    /// tungstenite's own write buffer is not counted: it holds at most one flush's worth
    /// (64 KiB) and only while the kernel's queue is full.
    pub fn unsent_ms(&self) -> u64 {
        if self.wire_bytes_per_ms == 0 {
            return 0;
        }
        crate::sys::unsent_bytes(self.tcp.as_raw_fd()) / self.wire_bytes_per_ms
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

/// Waits, outside the lock, for room in the socket of the link `guard` holds, at most
/// `timeout`; true if there is room. The I/O thread leaves the wait to such waiters.
pub(crate) fn wait_for_room(
    shared: &std::sync::Mutex<Link>,
    mut guard: std::sync::MutexGuard<'_, Link>,
    timeout: Duration,
) -> bool {
    guard.room_waiters += 1;
    // Our own handle on the socket: a reconnect may replace the link's meanwhile, and a bare
    // descriptor number could by then name another file.
    let socket = guard.poll_handle();
    drop(guard);
    let room = wait_writable(&socket, timeout);
    crate::sys::lock(shared).room_waiters -= 1;
    room
}

/// Sleeps until the socket can take more, or `timeout` passes; true in the first case. Only
/// writability is asked for: incoming data must not end the wait, or a sender would spin
/// while events arrive.
pub(crate) fn wait_writable(socket: &TcpStream, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: `pfd` is one valid pollfd for the duration of the call; the caller's handle
    // keeps the descriptor open (and so its number unused by any other file) until it returns.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    ready > 0 && pfd.revents & libc::POLLOUT != 0
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    use tungstenite::protocol::Role;
    use tungstenite::stream::MaybeTlsStream;
    use tungstenite::WebSocket;

    use super::Link;
    use crate::io::replay::Replay;

    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn socket(tcp: &TcpStream) -> crate::net::Socket {
        WebSocket::from_raw_socket(
            MaybeTlsStream::Plain(tcp.try_clone().unwrap()),
            Role::Client,
            None,
        )
    }

    /// Before: a sender waiting for room polled a descriptor number copied out of the link;
    /// after a reconnect closed that socket, the number could name another file. The handle
    /// keeps the old socket open, so it still names the old connection.
    #[test]
    fn a_room_wait_handle_keeps_naming_its_connection_across_a_reconnect() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, a_server) = pair(&listener);
        let mut link = Link::new(socket(&a), Arc::new(a), Replay::new(0));
        let handle = link.poll_handle();
        let (b, _b_server) = pair(&listener);
        link.replace_socket(socket(&b), Arc::new(b));
        // Every other handle on the first connection is gone; a new socket now takes the
        // lowest free descriptor, which is the old one's if it was closed.
        let (_c, _c_server) = pair(&listener);
        assert_eq!(
            handle.peer_addr().unwrap(),
            a_server.local_addr().unwrap(),
            "the handle names the connection it was taken from"
        );
        assert!(crate::io::link::wait_writable(
            &handle,
            std::time::Duration::from_millis(10)
        ));
    }
}
