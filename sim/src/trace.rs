//! The trace of one seed's run: one line per event (a fault, a client's
//! call and its answer, a checker's finding), stamped with simulated time.
//! Two runs of a seed must give the same trace; its hash (FNV-1a 64) is
//! what the determinism check compares.

use std::sync::{Arc, Mutex, PoisonError};

/// A shared trace.
#[derive(Clone, Default)]
pub struct Trace {
    inner: Arc<Mutex<Lines>>,
}

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    hash: u64,
}

/// FNV-1a's offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a's prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Trace {
    /// Records `text` at simulated time `at_ms`.
    pub fn event(&self, at_ms: u64, text: impl Into<String>) {
        let line = format!("{at_ms:>7} {}", text.into());
        let mut t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut h = if t.lines.is_empty() { FNV_OFFSET } else { t.hash };
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        t.hash = h;
        t.lines.push(line);
    }

    /// The hash of every line so far.
    pub fn hash(&self) -> u64 {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).hash
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        t.lines[t.lines.len().saturating_sub(n)..].to_vec()
    }

    /// Every line.
    pub fn lines(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines
            .clone()
    }
}
