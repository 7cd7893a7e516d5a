//! The wall clock, behind a trait: the leader stamps `now_ms` on every
//! command from it, and a simulation swaps in a simulated one. Beside it,
//! the other thing a proposer draws from outside the state machine: a new
//! reservation's nonce.

use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock before 1970 is a broken machine; time 0 keeps the state's
        // logical clock (max of all stamps) moving forward regardless.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// 64 random bits for a reserve's nonce, the new reservation's id (see
/// `RegionOp::Reserve`): drawn here, outside the state machine, by the node
/// that proposes the command, and carried in the log, so every replica
/// applies the same id. From the thread-local generator, seeded from the
/// operating system, so one client cannot guess another's id.
pub fn reservation_nonce() -> u64 {
    rand::random()
}
