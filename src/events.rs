//! [`Events`]: the one consumer of a conversation's event stream.
//!
//! A channel receiver that could be cloned would split the stream silently, each event going
//! to one of the clones; so there is exactly one `Events` per conversation, taken once with
//! [`Conversation::take_events`](crate::Conversation::take_events), or read through the
//! conversation's own `recv` methods until then. The channel behind it is an implementation
//! detail: its error types are this crate's, so that a new channel crate is not a breaking
//! change.

use std::fmt;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::protocol::Event;

/// Why [`Events::try_recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// No event is ready yet.
    Empty,
    /// The stream has ended: `client.closed` was the last event.
    Disconnected,
}

/// Why [`Events::recv_timeout`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvTimeoutError {
    /// No event came within the timeout.
    Timeout,
    /// The stream has ended: `client.closed` was the last event.
    Disconnected,
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TryRecvError::Empty => "no event is ready",
            TryRecvError::Disconnected => "the event stream has ended",
        })
    }
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecvTimeoutError::Timeout => "no event came in time",
            RecvTimeoutError::Disconnected => "the event stream has ended",
        })
    }
}

impl std::error::Error for TryRecvError {}
impl std::error::Error for RecvTimeoutError {}

/// A conversation's event stream, in order, ending after `client.closed`. Not `Clone`: one
/// consumer sees every event. Move it to the thread that reads the events.
pub struct Events {
    rx: Receiver<Event>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("waiting", &self.rx.len())
            .finish()
    }
}

impl Events {
    pub(crate) fn new(rx: Receiver<Event>) -> Events {
        Events { rx }
    }

    /// The channel, for a `select!` of the crate's own threads.
    pub(crate) fn receiver(&self) -> &Receiver<Event> {
        &self.rx
    }

    /// The next event, waiting for it; `None` once the stream has ended.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => RecvTimeoutError::Timeout,
            crossbeam_channel::RecvTimeoutError::Disconnected => RecvTimeoutError::Disconnected,
        })
    }

    /// The next event if one is ready.
    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        self.rx.try_recv().map_err(|e| match e {
            crossbeam_channel::TryRecvError::Empty => TryRecvError::Empty,
            crossbeam_channel::TryRecvError::Disconnected => TryRecvError::Disconnected,
        })
    }

    /// Events waiting to be read.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// True if no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Iterates, waiting for each event, until the stream ends.
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.rx.iter()
    }
}

impl IntoIterator for Events {
    type Item = Event;
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter(self.rx.into_iter())
    }
}

/// The events of an [`Events`] it owns, waiting for each, until the stream ends.
#[derive(Debug)]
pub struct IntoIter(crossbeam_channel::IntoIter<Event>);

impl Iterator for IntoIter {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.0.next()
    }
}
