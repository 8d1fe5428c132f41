//! Everything between the caller's appends and the socket: the link (the only code that
//! touches the WebSocket), the frames it sends and the replay window of what it sent, and the
//! I/O thread that reads events, writes what was queued and replaces a dead connection.

pub(crate) mod arena;
pub(crate) mod device_time;
pub(crate) mod link;
pub(crate) mod opus_uplink;
pub(crate) mod outbox;
pub(crate) mod replay;
pub(crate) mod thread;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver};

use crate::config::{ApiKey, ConnectParams};
use crate::error::{Error, Result};
use crate::net;
use crate::protocol::{Event, EventKind};
use crate::sys::wake::Wake;
use link::Link;
use outbox::Shared;
use replay::Replay;
use thread::IoThread;

/// A conversation's I/O thread, running, and what the handles need to talk to it.
pub(crate) struct Started {
    pub shared: Arc<Shared>,
    pub events: Receiver<Event>,
    pub io: JoinHandle<()>,
}

/// Takes over an opened connection: sets up the queue, the link and the replay window, and
/// starts the I/O thread. `session.created` is the first event.
pub(crate) fn start(params: &ConnectParams, key: ApiKey, opened: net::Opened) -> Result<Started> {
    let wake = Wake::new()
        .map(Arc::new)
        .map_err(|e| Error::Internal(format!("wake-up handle: {e}")))?;
    let (cmd_tx, cmd_rx) = bounded(params.send_queue_frames);
    // Closed to senders (`open` false) until the I/O thread has set up its replay window.
    let tcp = Arc::new(opened.tcp);
    let link = Arc::new(Mutex::new(Link::new(
        opened.socket,
        Arc::clone(&tcp),
        // Sized by the I/O thread when it starts.
        Replay::new(0),
    )));
    let (ev_tx, ev_rx) = unbounded();
    let shared = Arc::new(Shared::new(
        params,
        cmd_tx,
        Arc::downgrade(&link),
        Arc::clone(&wake),
    ));
    shared
        .counters
        .sessions
        .store(1, std::sync::atomic::Ordering::Relaxed);
    if let EventKind::SessionCreated(s) = &opened.created.kind {
        if let Some(id) = &s.id {
            shared.set_session_id(id);
        }
    }
    // Cannot fail: we hold the receiver.
    let _ = ev_tx.send(opened.created);
    let io = IoThread {
        link,
        tcp,
        wake,
        commands: cmd_rx,
        events: ev_tx,
        shared: Arc::clone(&shared),
        params: params.clone(),
        key,
    };
    let io = std::thread::Builder::new()
        .name("qwen-asr-io".into())
        .spawn(move || io.run())
        .map_err(|e| Error::Internal(format!("cannot start the I/O thread: {e}")))?;
    Ok(Started {
        shared,
        events: ev_rx,
        io,
    })
}
