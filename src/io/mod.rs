//! Everything between the caller's appends and the socket: the link (the only code that
//! touches the WebSocket), the frames it sends and the replay window of what it sent, and the
//! I/O thread that reads events, writes what was queued and replaces a dead connection.

pub(crate) mod arena;
pub(crate) mod link;
pub(crate) mod replay;
pub(crate) mod thread;
