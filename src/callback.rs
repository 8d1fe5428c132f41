//! A callback adapter for code ported from the official SDKs' `OmniRealtimeCallback`: a
//! thread of ours reads the event stream and calls `on_open`, `on_event`, `on_error` and
//! `on_close`. New code can read the events directly instead.

use std::thread::JoinHandle;

use crossbeam_channel::{bounded, select, Sender};

use crate::error::{Error, Result};
use crate::events::Events;
use crate::protocol::{Event, EventKind};

/// The SDKs' callback interface. Calls come one at a time, in event order, on one thread.
pub trait Callback: Send + 'static {
    /// Called once, first, when the callback thread starts (the connection is open).
    fn on_open(&mut self) {}
    /// Every event except the final `client.closed`.
    fn on_event(&mut self, event: &Event);
    /// The connection ended abnormally (any close code but 1000), before `on_close`.
    fn on_error(&mut self, _error: &Error) {}
    /// The connection ended; the last call.
    fn on_close(&mut self, _code: u16, _reason: &str) {}
}

/// The thread running a [`Callback`]. Dropping it stops the callbacks (after the one in
/// progress) and joins the thread.
#[must_use = "dropping the handle stops the callbacks"]
#[derive(Debug)]
pub struct CallbackThread {
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl CallbackThread {
    /// Starts calling `callback` with the events from `events`.
    pub fn spawn(events: Events, mut callback: impl Callback) -> Result<CallbackThread> {
        let (stop_tx, stop_rx) = bounded::<()>(1);
        let handle = std::thread::Builder::new()
            .name("qwen-asr-callback".into())
            .spawn(move || {
                callback.on_open();
                loop {
                    let event = select! {
                        recv(events.receiver()) -> e => match e { Ok(e) => e, Err(_) => break },
                        recv(stop_rx) -> _ => break,
                    };
                    if let EventKind::Closed { code, reason } = &event.kind {
                        if *code != 1000 {
                            callback.on_error(&Error::Closed {
                                code: Some(*code),
                                reason: reason.clone(),
                            });
                        }
                        callback.on_close(*code, reason);
                        break;
                    }
                    callback.on_event(&event);
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the callback thread: {e}")))?;
        Ok(CallbackThread {
            stop: Some(stop_tx),
            handle: Some(handle),
        })
    }

    /// Waits until the callbacks are over (after `on_close`).
    pub fn join(mut self) {
        // Hold the stop sender while waiting: its drop is the stop signal.
        let _keep_running = self.stop.take();
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                log::error!("a callback panicked");
            }
        }
    }
}

impl Drop for CallbackThread {
    fn drop(&mut self) {
        // Disconnecting the stop channel wakes the thread's select.
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                log::error!("a callback panicked");
            }
        }
    }
}
