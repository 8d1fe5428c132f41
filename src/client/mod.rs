//! The handles a caller holds: [`Conversation`] and the cloneable [`AudioSender`].

mod conversation;

pub(crate) use conversation::*;
pub use conversation::{AudioSender, Conversation, Stats};
