//! The handles a caller holds: [`Conversation`] and the cloneable [`AudioSender`]. They only
//! talk to the I/O thread through the outbox (`io::outbox`), never to the socket.

mod conversation;
mod sender;

pub use crate::io::outbox::Stats;
pub use conversation::Conversation;
pub use sender::AudioSender;
