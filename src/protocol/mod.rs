//! The wire protocol: server events parsed into types (hostile input, checked), and the
//! client events this library writes.

mod event;
pub(crate) mod writers;

pub use event::{Completed, Event, EventKind, Failed, Partial, ServerError, Session, Usage};
pub(crate) use writers::*;
