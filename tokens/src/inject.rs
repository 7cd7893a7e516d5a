//! Bugs the whole-cluster simulation (`sim/`) injects, one at a time, to
//! prove that its checkers catch them. Compiled in only with the `inject`
//! feature (which only the simulation turns on); without it [`on`] is a
//! constant `false` and the code paths it guards vanish.
//!
//! A bug is switched on for the current thread only: a simulation runs on
//! one thread, and tests in one binary run side by side on others.

/// A bug the simulation can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// A log store acknowledges an append before its fsync.
    AckBeforeFsync,
    /// A region forgets its request ids when its state is restored from a
    /// snapshot (a restart, or an install from the leader).
    ForgetRequestIds,
    /// A region applies a grant it has already applied.
    GrantTwice,
    /// A node that believes it leads serves a read as current without
    /// confirming its leadership.
    StaleLeaderRead,
}

impl Bug {
    /// Every bug, in order.
    pub const ALL: [Bug; 4] = [
        Bug::AckBeforeFsync,
        Bug::ForgetRequestIds,
        Bug::GrantTwice,
        Bug::StaleLeaderRead,
    ];

    /// The bug's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::ForgetRequestIds => "forget-request-ids",
            Bug::GrantTwice => "grant-twice",
            Bug::StaleLeaderRead => "stale-leader-read",
        }
    }

    /// The bug named `name`.
    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

#[cfg(feature = "inject")]
thread_local! {
    static ON: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Switches `bug` on for this thread (`None`: no bug).
#[cfg(feature = "inject")]
pub fn set(bug: Option<Bug>) {
    ON.with(|on| on.set(bug));
}

/// True when `bug` is switched on for this thread.
#[inline]
pub fn on(bug: Bug) -> bool {
    #[cfg(feature = "inject")]
    {
        ON.with(|on| on.get() == Some(bug))
    }
    #[cfg(not(feature = "inject"))]
    {
        let _ = bug;
        false
    }
}
