//! Protocol framing, with no I/O policy of its own.
//!
//! pgward forwards bytes, it does not terminate the protocol: frames are
//! delimited by their 5-byte header (`frame`), startup-phase packets are read
//! exactly (`startup`), and the few messages pgward itself must send are built
//! here (`errors`). The `pgwire` crate supplies message encoders where they fit;
//! its decoders are not used on network input (they panic on some malformed
//! bodies and decode text lossily — see FIELD-NOTES.md).

pub mod auth;
pub mod errors;
pub mod frame;
pub mod startup;
