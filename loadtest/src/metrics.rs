//! Measurement: HdrHistograms per (operation, region, outcome), a per-second
//! timeline per region, and counters of what did not go as scheduled.
//!
//! Every session task records into its region's [`RegionStats`] behind a
//! short `std::sync::Mutex` (held for a few hundred nanoseconds, never across
//! an `.await`). Seconds are rolled over lazily by whoever records first in a
//! new second, and by the progress ticker, so an idle second still gets its
//! (empty) row.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

/// Highest latency the histograms track, in microseconds (two minutes, above
/// any request's timeout plus retries); a longer one is recorded as this.
pub const LATENCY_US_MAX: u64 = 120_000_000;
/// Precision of the run's histograms: 3 significant digits (0.1 %).
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// Precision of the per-second histograms: 2 significant digits (1 %),
/// enough for a chart and a tenth of the memory.
pub const TIMELINE_SIGNIFICANT_DIGITS: u8 = 2;
/// Distinct outcomes counted by name per operation and region; later ones
/// are counted under [`OUTCOME_OTHER`], so a server inventing reasons cannot
/// grow the maps.
pub const OUTCOMES_MAX: usize = 32;
/// The outcome of a successful request.
pub const OUTCOME_OK: &str = "OK";
/// The bucket for outcomes past [`OUTCOMES_MAX`].
pub const OUTCOME_OTHER: &str = "OTHER";
/// Most rows of a region's timeline (the longest run plus a generous drain);
/// later answers are counted in the last row.
pub const TIMELINE_SECONDS_MAX: usize = 3_600 + 900;

/// An operation the load sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// `Reserve`.
    Reserve,
    /// `Confirm`.
    Confirm,
    /// `Release`.
    Release,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 3] = [Op::Reserve, Op::Confirm, Op::Release];

    /// Its lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Reserve => "reserve",
            Op::Confirm => "confirm",
            Op::Release => "release",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A fresh histogram with the run's bounds.
pub fn new_histogram(significant_digits: u8) -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (1 ≤ low, high ≥
    // 2 × low, digits ≤ 5), so this cannot fail.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, significant_digits)
        .expect("constant histogram bounds are valid")
}

/// Records `value_us` into `h`, clamped into its range.
pub fn record(h: &mut Histogram<u64>, value_us: u64) {
    h.saturating_record(value_us.clamp(1, LATENCY_US_MAX));
}

/// Adds every histogram of `parts` into one. Histograms made by
/// [`new_histogram`] share bounds, so adding cannot fail; one that does not
/// fit is skipped rather than abort a report.
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut out = new_histogram(LATENCY_SIGNIFICANT_DIGITS);
    for h in parts {
        let _ = out.add(h);
    }
    out
}

/// The figures of one histogram, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl LatencySummary {
    /// The figures of `h` (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// One second of one region.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SecondRow {
    /// Seconds since the start of the load.
    pub t_s: u64,
    /// Sessions that arrived (reserves scheduled) in this second.
    pub arrivals: u64,
    /// Requests answered in this second, any outcome.
    pub answered: u64,
    /// Reserves answered in this second, any outcome.
    pub reserves: u64,
    /// Successful answers by operation: reserve, confirm, release.
    pub ok: [u64; 3],
    /// Error answers by outcome (reason).
    pub errors: BTreeMap<String, u64>,
    /// Requests sent later than scheduled (see [`crate::runner::LATE_SLACK`]).
    pub late: u64,
    /// Requests dropped: no in-flight slot within `late_drop_ms`, or too
    /// many live sessions.
    pub dropped: u64,
    /// Reserve latency (any outcome) of the answers in this second.
    pub reserve_p50_us: u64,
    /// 99th percentile of the same.
    pub reserve_p99_us: u64,
    /// 99.9th percentile of the same.
    pub reserve_p999_us: u64,
    /// Largest of the same.
    pub reserve_max_us: u64,
}

/// Counters of one region over the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RegionCounters {
    /// Sessions that arrived.
    pub arrivals: u64,
    /// Requests sent (after any wait for an in-flight slot).
    pub sent: u64,
    /// Requests sent later than scheduled.
    pub late: u64,
    /// Requests dropped because no in-flight slot freed within `late_drop_ms`.
    pub dropped_late: u64,
    /// Sessions dropped at arrival because too many were live.
    pub dropped_sessions: u64,
    /// Retries of retryable errors (same request id).
    pub retries: u64,
    /// Reserves answered OK that count as local hits.
    pub local_hits: u64,
    /// Reserves answered OK that do not count as local hits (waited past
    /// the local threshold).
    pub remote_hits: u64,
    /// Reserves refused INSUFFICIENT_STOCK while the tester's books said
    /// the stock existed globally (a local miss).
    pub local_misses: u64,
    /// Reserves refused INSUFFICIENT_STOCK when global stock was gone (not a
    /// miss: nothing could have served them).
    pub sold_out: u64,
}

/// Everything one region recorded.
pub struct RegionStats {
    /// Per (operation, outcome) latency over the whole run.
    pub histograms: BTreeMap<(Op, String), Histogram<u64>>,
    /// Finished seconds.
    pub timeline: Vec<SecondRow>,
    /// Run counters.
    pub counters: RegionCounters,
    /// Reserve latency (any outcome) of each finished second, by second,
    /// so that any window of seconds can be merged exactly.
    pub second_reserves: Vec<Histogram<u64>>,
    current: SecondRow,
    current_reserve: Histogram<u64>,
}

impl RegionStats {
    fn new() -> RegionStats {
        RegionStats {
            histograms: BTreeMap::new(),
            timeline: Vec::new(),
            counters: RegionCounters::default(),
            second_reserves: Vec::new(),
            current: SecondRow::default(),
            current_reserve: new_histogram(TIMELINE_SIGNIFICANT_DIGITS),
        }
    }

    /// Closes every second before `second`.
    fn roll_to(&mut self, second: u64) {
        let second = second.min(TIMELINE_SECONDS_MAX as u64 - 1);
        while self.current.t_s < second {
            self.close_current();
        }
    }

    fn close_current(&mut self) {
        let h = &self.current_reserve;
        if !h.is_empty() {
            self.current.reserve_p50_us = h.value_at_quantile(0.50);
            self.current.reserve_p99_us = h.value_at_quantile(0.99);
            self.current.reserve_p999_us = h.value_at_quantile(0.999);
            self.current.reserve_max_us = h.max();
        }
        let next = SecondRow {
            t_s: self.current.t_s + 1,
            ..SecondRow::default()
        };
        self.timeline.push(std::mem::replace(&mut self.current, next));
        self.second_reserves.push(self.current_reserve.clone());
        self.current_reserve.reset();
    }

    fn answer(&mut self, op: Op, outcome: &str, latency_us: u64) {
        // One slot per operation stays free for OTHER.
        let named = (op, outcome.to_string());
        let key = if self.histograms.contains_key(&named)
            || self.histograms.keys().filter(|(o, _)| *o == op).count() < OUTCOMES_MAX - 1
        {
            named
        } else {
            (op, OUTCOME_OTHER.to_string())
        };
        record(
            self.histograms
                .entry(key.clone())
                .or_insert_with(|| new_histogram(LATENCY_SIGNIFICANT_DIGITS)),
            latency_us,
        );
        self.current.answered += 1;
        if outcome == OUTCOME_OK {
            self.current.ok[op.index()] += 1;
        } else if self.current.errors.len() < OUTCOMES_MAX - 1 || self.current.errors.contains_key(&key.1) {
            *self.current.errors.entry(key.1).or_insert(0) += 1;
        } else {
            *self.current.errors.entry(OUTCOME_OTHER.into()).or_insert(0) += 1;
        }
        if op == Op::Reserve {
            self.current.reserves += 1;
            record(&mut self.current_reserve, latency_us);
        }
    }
}

/// Something a session reports besides an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A session arrived.
    Arrival,
    /// A request went out.
    Sent,
    /// A request went out later than scheduled.
    Late,
    /// A request was dropped after waiting `late_drop_ms` for a slot.
    DroppedLate,
    /// A session was dropped at arrival: too many live sessions.
    DroppedSession,
    /// A retryable error was retried.
    Retry,
    /// A reserve answered OK from local tokens.
    LocalHit,
    /// A reserve answered OK, but not as a local hit.
    RemoteHit,
    /// INSUFFICIENT_STOCK while stock existed globally.
    LocalMiss,
    /// INSUFFICIENT_STOCK with global stock gone.
    SoldOut,
}

/// The run's recorder, shared by every task.
pub struct Recorder {
    start: Instant,
    regions: Vec<Mutex<RegionStats>>,
}

impl Recorder {
    /// A recorder for `regions` regions whose second 0 starts at `start`.
    pub fn new(regions: usize, start: Instant) -> Recorder {
        Recorder {
            start,
            regions: (0..regions).map(|_| Mutex::new(RegionStats::new())).collect(),
        }
    }

    /// When the load started.
    pub fn start(&self) -> Instant {
        self.start
    }

    fn second_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_secs()
    }

    fn lock(&self, region: usize) -> Option<MutexGuard<'_, RegionStats>> {
        // A poisoned lock means a recording task panicked mid-update; the
        // figures are still counters, so keep using them.
        self.regions
            .get(region)
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records an answer of `op` with `outcome` ("OK" or a reason), its
    /// latency measured from the intended send time.
    pub fn answer(&self, region: usize, op: Op, outcome: &str, latency: Duration) {
        let second = self.second_of(Instant::now());
        if let Some(mut s) = self.lock(region) {
            s.roll_to(second);
            s.answer(op, outcome, latency.as_micros() as u64);
        }
    }

    /// Counts one event in `region`, in the current second.
    pub fn event(&self, region: usize, event: Event) {
        let second = self.second_of(Instant::now());
        if let Some(mut s) = self.lock(region) {
            s.roll_to(second);
            let c = &mut s.counters;
            match event {
                Event::Arrival => c.arrivals += 1,
                Event::Sent => c.sent += 1,
                Event::Late => c.late += 1,
                Event::DroppedLate => c.dropped_late += 1,
                Event::DroppedSession => c.dropped_sessions += 1,
                Event::Retry => c.retries += 1,
                Event::LocalHit => c.local_hits += 1,
                Event::RemoteHit => c.remote_hits += 1,
                Event::LocalMiss => c.local_misses += 1,
                Event::SoldOut => c.sold_out += 1,
            }
            match event {
                Event::Arrival => s.current.arrivals += 1,
                Event::Late => s.current.late += 1,
                Event::DroppedLate | Event::DroppedSession => s.current.dropped += 1,
                _ => {}
            }
        }
    }

    /// Closes every second that has passed (the progress ticker calls it, so
    /// idle seconds get rows too).
    pub fn tick(&self) {
        let second = self.second_of(Instant::now());
        for r in 0..self.regions.len() {
            if let Some(mut s) = self.lock(r) {
                s.roll_to(second);
            }
        }
    }

    /// The last finished second of `region`, for the progress line.
    pub fn last_second(&self, region: usize) -> Option<SecondRow> {
        self.lock(region).and_then(|s| s.timeline.last().cloned())
    }

    /// Counters of `region` so far.
    pub fn counters(&self, region: usize) -> RegionCounters {
        self.lock(region).map(|s| s.counters.clone()).unwrap_or_default()
    }

    /// Ends recording: closes the current second and hands back each
    /// region's stats.
    pub fn finish(self) -> Vec<RegionStats> {
        self.regions
            .into_iter()
            .map(|m| {
                let mut s = m.into_inner().unwrap_or_else(|e| e.into_inner());
                if s.current.answered > 0 || s.current.arrivals > 0 || s.current.dropped > 0 {
                    s.close_current();
                }
                s
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Merging histograms gives the same count, percentiles and max as one
    /// histogram of all the values.
    #[test]
    fn histogram_merge() {
        let mut a = new_histogram(LATENCY_SIGNIFICANT_DIGITS);
        let mut b = new_histogram(LATENCY_SIGNIFICANT_DIGITS);
        let mut all = new_histogram(LATENCY_SIGNIFICANT_DIGITS);
        for v in 1..=10_000u64 {
            let value = v * 37 % 9_973 + 1;
            if v % 3 == 0 {
                record(&mut a, value);
            } else {
                record(&mut b, value * 10);
            }
            record(&mut all, if v % 3 == 0 { value } else { value * 10 });
        }
        let merged = merge([&a, &b]);
        assert_eq!(merged.len(), 10_000);
        assert_eq!(LatencySummary::of(&merged), LatencySummary::of(&all));
        assert_eq!(merged.max(), a.max().max(b.max()));
        // Merging nothing is empty, and summarises to zeros.
        assert_eq!(LatencySummary::of(&merge([])), LatencySummary::default());
        // Out-of-range values are clamped, not lost.
        let mut c = new_histogram(LATENCY_SIGNIFICANT_DIGITS);
        record(&mut c, 0);
        record(&mut c, u64::MAX);
        assert_eq!(c.len(), 2);
    }

    /// Answers land in the second they were recorded in; empty seconds get
    /// rows; outcomes past the bound fold into OTHER.
    #[tokio::test(start_paused = true)]
    async fn timeline_rows() {
        let rec = Recorder::new(1, Instant::now());
        rec.event(0, Event::Arrival);
        rec.answer(0, Op::Reserve, OUTCOME_OK, Duration::from_millis(2));
        tokio::time::advance(Duration::from_millis(2_500)).await;
        rec.answer(0, Op::Confirm, "RESERVATION_EXPIRED", Duration::from_millis(5));
        for i in 0..OUTCOMES_MAX + 3 {
            rec.answer(0, Op::Release, &format!("R{i}"), Duration::from_millis(1));
        }
        let stats = rec.finish().pop().unwrap();
        assert_eq!(stats.timeline.len(), 3);
        assert_eq!(stats.timeline[0].arrivals, 1);
        assert_eq!(stats.timeline[0].ok, [1, 0, 0]);
        assert!(stats.timeline[0].reserve_p50_us >= 1_900);
        assert_eq!(stats.timeline[1].answered, 0);
        assert_eq!(stats.timeline[2].errors["RESERVATION_EXPIRED"], 1);
        assert_eq!(stats.second_reserves.len(), 3);
        assert_eq!(stats.second_reserves[0].len(), 1);
        assert_eq!(stats.second_reserves[1].len(), 0);
        let release_keys = stats
            .histograms
            .keys()
            .filter(|(op, _)| *op == Op::Release)
            .count();
        assert_eq!(release_keys, OUTCOMES_MAX);
        assert_eq!(
            stats.histograms[&(Op::Release, OUTCOME_OTHER.to_string())].len(),
            4
        );
    }
}
