//! Holds left to expire, given back to the tester's books when their time is
//! up, without a task each.
//!
//! A session whose hold is abandoned (or whose confirm or release did not
//! end it) files the hold's lines here, due when the tester stops counting
//! the hold (its answer + hold time + [`crate::runner::EXPIRY_GRACE`]), and
//! ends at once. A ticker ([`tick`]) takes every line that is due each
//! [`EXPIRY_TICK`] and takes its units off [`SkuBook::held`]. Lines wait in
//! buckets of one tick, keyed by the tick their due time rounds *up* to, so
//! a hold is never given back before its time and at most one tick (plus
//! the ticker's own lateness) after it.
//!
//! Bound: [`HOLD_LINES_PENDING_MAX`] lines, 8 bytes each (64 MB at the
//! bound; a 15-minute soak at 5,000 one-line holds/s keeps about 4.5 M). A
//! filing that would pass it is refused, whole; the session then waits out
//! its hold in its own task as before, so the live-session bound
//! ([`crate::runner::SESSIONS_LIVE_MAX`]) caps those, and the refusal is
//! counted in the report's notes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::runner::SkuBook;

/// How often due holds are given back, and the width of a bucket.
pub const EXPIRY_TICK: Duration = Duration::from_millis(100);
/// Most lines waiting to be given back; see the module docs for what
/// happens at the bound.
pub const HOLD_LINES_PENDING_MAX: usize = 8_000_000;

/// One line of a hold waiting for its end, in 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiringLine {
    /// Index into the catalog (and the books).
    pub sku: u32,
    /// Units.
    pub qty: u32,
}

/// Why a hold was not filed (its session then waits out the hold itself).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Filing it would pass the bound.
    #[error("{pending} lines pending + {adding} > {max}")]
    Full {
        /// Lines already pending.
        pending: usize,
        /// Lines of the refused hold.
        adding: usize,
        /// The bound.
        max: usize,
    },
    /// A SKU index or quantity does not fit in 32 bits (cannot happen with a
    /// valid scenario: at most `SKUS_MAX` SKUs and `QTY_PER_LINE_MAX` units).
    #[error("line ({sku}, {qty}) does not fit in 32 bits")]
    TooLarge {
        /// The SKU index.
        sku: usize,
        /// The quantity.
        qty: u64,
    },
}

#[derive(Default)]
struct Pending {
    /// Lines by the tick their due time rounds up to.
    by_tick: BTreeMap<u64, Vec<ExpiringLine>>,
    /// Lines in `by_tick`.
    lines: usize,
}

/// The shared, bounded set of holds waiting for their end.
pub struct HoldExpiry {
    /// Tick 0.
    origin: Instant,
    lines_max: usize,
    pending: Mutex<Pending>,
}

impl HoldExpiry {
    /// An empty set counting ticks from `origin`, holding at most
    /// `lines_max` lines (the run uses [`HOLD_LINES_PENDING_MAX`]).
    pub fn new(origin: Instant, lines_max: usize) -> HoldExpiry {
        HoldExpiry {
            origin,
            lines_max,
            pending: Mutex::new(Pending::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A poisoned lock means a task panicked between two plain updates
        // of the map and its count; both stay usable.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tick_len_ns() -> u128 {
        EXPIRY_TICK.as_nanos().max(1)
    }

    /// The first tick at or after `due` (0 for anything before the origin).
    fn tick_at_or_after(&self, due: Instant) -> u64 {
        let ns = due.saturating_duration_since(self.origin).as_nanos();
        let tick = Self::tick_len_ns();
        u64::try_from(ns.div_ceil(tick)).unwrap_or(u64::MAX)
    }

    /// The last tick at or before `now`.
    fn tick_at_or_before(&self, now: Instant) -> u64 {
        let ns = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(ns / Self::tick_len_ns()).unwrap_or(u64::MAX)
    }

    /// Files a hold's lines (catalog index, units) to be given back at
    /// `due`; all or nothing.
    pub fn file(&self, due: Instant, lines: &[(usize, u64)]) -> Result<(), Refused> {
        let compact = lines
            .iter()
            .map(|&(sku, qty)| match (u32::try_from(sku), u32::try_from(qty)) {
                (Ok(s), Ok(q)) => Ok(ExpiringLine { sku: s, qty: q }),
                _ => Err(Refused::TooLarge { sku, qty }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tick = self.tick_at_or_after(due);
        let mut p = self.lock();
        if p.lines + compact.len() > self.lines_max {
            return Err(Refused::Full {
                pending: p.lines,
                adding: compact.len(),
                max: self.lines_max,
            });
        }
        p.lines += compact.len();
        p.by_tick.entry(tick).or_default().extend(compact);
        Ok(())
    }

    /// Removes and returns every line due at or before `now`.
    pub fn take_due(&self, now: Instant) -> Vec<ExpiringLine> {
        let last = self.tick_at_or_before(now);
        let mut p = self.lock();
        let later = match last.checked_add(1) {
            Some(next) => p.by_tick.split_off(&next),
            None => BTreeMap::new(),
        };
        let due = std::mem::replace(&mut p.by_tick, later);
        let lines: Vec<ExpiringLine> = due.into_values().flatten().collect();
        p.lines -= lines.len();
        lines
    }

    /// Lines still waiting.
    pub fn pending_lines(&self) -> usize {
        self.lock().lines
    }

    /// Units still waiting, over every line.
    pub fn pending_units(&self) -> u64 {
        self.lock()
            .by_tick
            .values()
            .flatten()
            .map(|l| u64::from(l.qty))
            .sum()
    }
}

/// Gives back to `books` every line of `expiry` due at `now`; returns the
/// units given back.
pub fn give_back_due(expiry: &HoldExpiry, books: &[SkuBook], now: Instant) -> u64 {
    let mut units = 0;
    for line in expiry.take_due(now) {
        if let Some(b) = books.get(line.sku as usize) {
            b.held.fetch_sub(i64::from(line.qty), Ordering::Relaxed);
            units += u64::from(line.qty);
        }
    }
    units
}

/// The ticker: every [`EXPIRY_TICK`], gives back what is due, until
/// `stop_rx` turns true.
pub async fn tick(expiry: &HoldExpiry, books: &[SkuBook], mut stop_rx: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(EXPIRY_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop_rx.wait_for(|s| *s) => return,
        }
        give_back_due(expiry, books, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(books: &[SkuBook]) -> Vec<i64> {
        books.iter().map(|b| b.held.load(Ordering::Relaxed)).collect()
    }

    /// On the paused clock, with the ticker running: a hold's units come
    /// back no earlier than its due time and within one tick after it, the
    /// pending count follows, and nothing else moves.
    #[tokio::test(start_paused = true)]
    async fn units_come_back_at_their_time() {
        let origin = Instant::now();
        let expiry = HoldExpiry::new(origin, HOLD_LINES_PENDING_MAX);
        let books: Vec<SkuBook> = (0..3).map(|_| SkuBook::default()).collect();
        // As the sessions would have booked them when their reserves were answered.
        books[0].held.store(3, Ordering::Relaxed);
        books[1].held.store(1, Ordering::Relaxed);
        books[2].held.store(7, Ordering::Relaxed);
        let ms = |n: u64| origin + Duration::from_millis(n);
        expiry.file(ms(1_000), &[(0, 1)]).unwrap();
        expiry.file(ms(2_050), &[(0, 2), (1, 1)]).unwrap();
        assert_eq!((expiry.pending_lines(), expiry.pending_units()), (3, 4));
        let (stop_tx, stop_rx) = watch::channel(false);
        let checks = async {
            let mut seen = Vec::new();
            for at in [999, 1_050, 2_049, 2_099, 2_150, 5_000] {
                tokio::time::sleep_until(ms(at)).await;
                seen.push((at, held(&books), expiry.pending_lines()));
            }
            let _ = stop_tx.send(true);
            seen
        };
        let ((), seen) = tokio::join!(tick(&expiry, &books, stop_rx), checks);
        assert_eq!(
            seen,
            vec![
                (999, vec![3, 1, 7], 3),
                (1_050, vec![2, 1, 7], 2),
                (2_049, vec![2, 1, 7], 2),
                // Due at 2,050 ms: its bucket is the tick at 2,100 ms.
                (2_099, vec![2, 1, 7], 2),
                (2_150, vec![0, 0, 7], 0),
                (5_000, vec![0, 0, 7], 0),
            ]
        );
    }

    /// The bound refuses a whole hold that would pass it, keeps what it
    /// has, and takes holds again once lines are given back; a hold due
    /// before the origin is due at once.
    #[tokio::test(start_paused = true)]
    async fn bound_refuses_whole_holds() {
        let origin = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        let expiry = HoldExpiry::new(origin, 4);
        let books: Vec<SkuBook> = (0..2).map(|_| SkuBook::default()).collect();
        expiry.file(origin, &[(0, 1), (1, 1), (0, 2)]).unwrap();
        let err = expiry.file(origin, &[(0, 1), (1, 1)]).unwrap_err();
        assert_eq!(
            err,
            Refused::Full {
                pending: 3,
                adding: 2,
                max: 4
            }
        );
        assert_eq!(expiry.pending_lines(), 3);
        assert!(matches!(
            expiry.file(origin, &[(usize::MAX, 1)]),
            Err(Refused::TooLarge { .. })
        ));
        assert_eq!(give_back_due(&expiry, &books, Instant::now()), 4);
        assert_eq!(held(&books), vec![-3, -1]);
        assert_eq!(expiry.pending_lines(), 0);
        expiry.file(origin, &[(0, 1), (1, 1)]).unwrap();
        assert_eq!(expiry.pending_lines(), 2);
    }
}
