//! A small TCP proxy on loopback that the fault tests put between the client and the
//! emulator: it can cut every connection, stop listening (connection refused), reset the
//! next N connections, and switch to another upstream. Its threads are joined on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Default)]
struct State {
    upstream: Mutex<Option<SocketAddr>>,
    /// Connections to reset at once, before any byte is forwarded.
    refuse_next: Mutex<u32>,
    accepted: AtomicU32,
    listening: Mutex<bool>,
    listening_changed: Condvar,
    stop: AtomicBool,
    /// Both ends of every live connection, to cut them.
    live: Mutex<Vec<TcpStream>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

pub struct Forwarder {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl Forwarder {
    pub fn start(upstream: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind forwarder");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        *state.upstream.lock().unwrap() = Some(upstream);
        *state.listening.lock().unwrap() = true;
        let st = Arc::clone(&state);
        let acceptor = std::thread::Builder::new()
            .name("test-fwd-accept".into())
            .spawn(move || accept_loop(listener, addr, st))
            .unwrap();
        Forwarder {
            addr,
            state,
            acceptor: Some(acceptor),
        }
    }

    /// The emulator URL as seen through this forwarder.
    pub fn url(&self) -> String {
        format!("ws://{}/api-ws/v1/realtime", self.addr)
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> u32 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Closes every live connection (FIN both ways): a link that just died.
    pub fn cut(&self) {
        for s in self.state.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Resets the next `n` connections as soon as they are accepted.
    pub fn refuse_next(&self, n: u32) {
        *self.state.refuse_next.lock().unwrap() = n;
    }

    /// Sends new connections to another upstream.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.state.upstream.lock().unwrap() = Some(upstream);
    }

    /// Stops listening: connection attempts are refused by the kernel until `listen`.
    pub fn stop_listening(&self) {
        *self.state.listening.lock().unwrap() = false;
        // Wake the blocked accept so that it drops the listener.
        let _ = TcpStream::connect(self.addr);
    }

    pub fn listen(&self) {
        *self.state.listening.lock().unwrap() = true;
        self.state.listening_changed.notify_all();
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.listen();
        let _ = TcpStream::connect(self.addr);
        self.cut();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for p in self.state.pumps.lock().unwrap().drain(..) {
            let _ = p.join();
        }
    }
}

fn accept_loop(mut listener: TcpListener, addr: SocketAddr, st: Arc<State>) {
    loop {
        let Ok((client, _)) = listener.accept() else {
            return;
        };
        if st.stop.load(Ordering::SeqCst) {
            return;
        }
        if !*st.listening.lock().unwrap() {
            drop(client);
            drop(listener);
            let mut listening = st.listening.lock().unwrap();
            while !*listening {
                listening = st.listening_changed.wait(listening).unwrap();
            }
            drop(listening);
            if st.stop.load(Ordering::SeqCst) {
                return;
            }
            // The same port again; std sets SO_REUSEADDR, so this does not wait for TIME_WAIT.
            listener = TcpListener::bind(addr).expect("listen again on the same port");
            continue;
        }
        st.accepted.fetch_add(1, Ordering::SeqCst);
        let refuse = {
            let mut left = st.refuse_next.lock().unwrap();
            let refuse = *left > 0;
            *left = left.saturating_sub(1);
            refuse
        };
        if refuse {
            reset(client);
            continue;
        }
        let upstream = st.upstream.lock().unwrap().expect("upstream");
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
            reset(client);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let mut live = st.live.lock().unwrap();
        live.push(client.try_clone().unwrap());
        live.push(server.try_clone().unwrap());
        drop(live);
        let mut pumps = st.pumps.lock().unwrap();
        for (from, to) in [
            (client.try_clone().unwrap(), server.try_clone().unwrap()),
            (server, client),
        ] {
            pumps.push(
                std::thread::Builder::new()
                    .name("test-fwd-pump".into())
                    .spawn(move || pump(from, to))
                    .unwrap(),
            );
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Drops the connection with a TCP reset (SO_LINGER 0).
fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a pointer to a linger struct that outlives the call.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
