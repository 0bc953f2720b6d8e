//! In-memory twins of the pipeline's ports, for the protocol tests (`tests/protocol.rs`).
//!
//! They keep the semantics the commit protocol relies on, not a simplification of them:
//!
//! - [`MemorySource`] is a partitioned log with a consumer position and a committed offset per
//!   partition, an assignment that a test can revoke, and the same [`OffsetLedger`] rules as the
//!   Kafka adapter; `restart` is what a new member sees after a crash.
//! - Images go to the real [`ImageStore`] over its in-memory twin (`store/memory.rs`): the same
//!   `put_image` as the service, create-only, the checksum refused on a mismatch, a conflict on
//!   different bytes under a taken key.
//! - [`MemoryIndex`] answers a batch insert the way the PostgreSQL statement does (first entry
//!   of an id wins, identical rows are replays, different ones conflicts).
//! - [`MemoryDeadLetters`] keeps what it was sent; [`MemorySchemas`] serves writer schemas.
//!
//! [`Flaky`] wraps any sink with a [`Faults`] script: transient or fatal failures on the next
//! calls, or a call that hangs until released (a crash point, or a stuck service).
//!
//! [`OffsetLedger`]: crate::pipeline::ledger::OffsetLedger
//! [`ImageStore`]: crate::store::ImageStore

mod faults;
mod sinks;
mod source;

pub use faults::{Faults, Flaky};
pub use sinks::{MemoryDeadLetters, MemoryIndex, MemorySchemas};
pub use source::MemorySource;
