//! Scenarios as data: what load to offer, to which catalog, for how long,
//! with which spikes and partitions.
//!
//! A [`Scenario`] is plain data, loadable from TOML (`--scenario-file`) and
//! printable as TOML (`--print-scenario`), and the five built-ins are just
//! values of it. Window times are fractions of the run's duration, so
//! `--duration-s 10` runs a seconds-long version of the same shape.

use serde::{Deserialize, Serialize};

use crate::rng::Zipf;
use crate::schedule::{RateSegment, Schedule};

/// The regions of a `reservoir up` cluster, home region first.
pub const REGIONS_DEFAULT: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// Most regions a scenario names.
pub const REGIONS_MAX: usize = 8;
/// Longest run.
pub const DURATION_S_MAX: f64 = 3_600.0;
/// Shortest run.
pub const DURATION_S_MIN: f64 = 1.0;
/// Highest reserve arrival rate of one region, spikes included.
pub const RATE_PER_S_MAX: f64 = 100_000.0;
/// Most SKUs in a catalog.
pub const SKUS_MAX: usize = 100_000;
/// Most lines in one cart (the carts have 1–3).
pub const LINES_PER_CART_MAX: usize = 16;
/// Most units of one line.
pub const QTY_PER_LINE_MAX: u64 = 1_000;
/// Most windows (spikes, partitions) in a scenario.
pub const WINDOWS_MAX: usize = 16;
/// Most concurrent requests one region may have in flight.
pub const INFLIGHT_MAX: usize = 4_096;
/// Shortest hold time a scenario may ask for.
pub const HOLD_TTL_MS_MIN: u64 = 100;
/// Longest hold time: Reservoir's own limit, 4 hours. A long hold costs the
/// tester no task (abandoned holds wait in [`crate::expiry::HoldExpiry`]),
/// only its lines' 8 bytes each until it ends.
pub const HOLD_TTL_MS_MAX: u64 = 14_400_000;
/// Longest think time between a reserve's answer and its follow-up.
pub const THINK_MS_MAX: u64 = 60_000;
/// Longest top-up wait Reservoir accepts (`max_wait_ms`).
pub const MAX_WAIT_MS_MAX: u64 = 5_000;
/// Longest a request may wait for an in-flight slot before it is dropped.
pub const LATE_DROP_MS_MAX: u64 = 60_000;
/// Most units a catalog entry is stocked with.
pub const STOCK_PER_SKU_MAX: u64 = 100_000_000;

/// The built-in scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BuiltIn {
    /// Baseline rate everywhere, plenty of stock.
    Steady,
    /// Baseline everywhere, then 10× in one region while hot SKUs sell out.
    BlackFriday,
    /// One SKU, demand far above stock, all regions at once.
    FlashSale,
    /// Black Friday, with the spiking region cut off mid-spike and healed.
    Partition,
    /// Ten minutes of one region at 5,000 reserves/s, every hold abandoned
    /// (2-minute holds), to watch a region's memory, snapshots and tail
    /// latency under a large, steady population of live holds.
    Soak,
}

/// What a window does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WindowKind {
    /// Multiply the arrival rate of `region` (or all regions) by `rate_factor`.
    Spike,
    /// Cut `region` off from the others through the cluster's control API,
    /// and heal at the end. Only Reservoir has links to cut.
    Partition,
}

/// A marked stretch of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Spike or partition.
    pub kind: WindowKind,
    /// The region concerned; `None` means every region (spikes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Start, as a fraction of the duration (0–1).
    pub start_frac: f64,
    /// End, as a fraction of the duration (0–1), after the start.
    pub end_frac: f64,
    /// For spikes: the rate multiplier (1 = no change).
    #[serde(default = "one")]
    pub rate_factor: f64,
}

fn one() -> f64 {
    1.0
}

/// The catalog: how many SKUs, how popular, how much stock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogSpec {
    /// Number of SKUs.
    pub skus: usize,
    /// Zipf exponent of SKU popularity (0 = uniform; ~1 = a few hot SKUs).
    pub zipf_s: f64,
    /// The most popular `hot_skus` SKUs are stocked with `hot_stock_factor`.
    pub hot_skus: usize,
    /// Stock of a hot SKU as a fraction of its expected demand (< 1 sells out).
    pub hot_stock_factor: f64,
    /// Stock of every other SKU as a multiple of its expected demand.
    pub stock_factor: f64,
    /// Fewest units any SKU is stocked with.
    pub stock_min: u64,
    /// Carts have 1..=lines_max distinct lines.
    pub lines_max: usize,
    /// Each line asks for 1..=qty_max units.
    pub qty_max: u64,
}

impl Default for CatalogSpec {
    fn default() -> Self {
        CatalogSpec {
            skus: 200,
            zipf_s: 1.0,
            hot_skus: 0,
            hot_stock_factor: 1.0,
            stock_factor: 3.0,
            stock_min: 20,
            lines_max: 3,
            qty_max: 2,
        }
    }
}

/// How sessions end, and their timing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSpec {
    /// Weight of reserve → confirm sessions (buyers).
    pub confirm: f64,
    /// Weight of reserve → release sessions.
    pub release: f64,
    /// Weight of reserve → abandon sessions (the hold is left to expire).
    pub abandon: f64,
    /// Mean think time between a reserve's answer and the follow-up
    /// (uniform in 0..=2×mean).
    pub think_ms: u64,
    /// The hold time of every reserve. The reconciliation waits for the last
    /// holds to end unless `reconcile_wait_for_holds` is false.
    pub hold_ttl_ms: u64,
    /// Reservoir's `max_wait_ms` on reserves: 0 answers INSUFFICIENT_STOCK at
    /// once when local tokens run short (the local-hit ratio then counts
    /// exactly the reserves answered from local tokens).
    pub reserve_max_wait_ms: u64,
    /// With `reserve_max_wait_ms > 0`: an OK reserve counts as a local hit
    /// only if it was answered within this many milliseconds of being sent.
    pub local_threshold_ms: u64,
}

impl Default for SessionSpec {
    fn default() -> Self {
        SessionSpec {
            confirm: 0.6,
            release: 0.2,
            abandon: 0.2,
            think_ms: 100,
            hold_ttl_ms: 3_000,
            reserve_max_wait_ms: 0,
            local_threshold_ms: 25,
        }
    }
}

/// A whole scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Its name, for reports.
    pub name: String,
    /// One line on what it shows.
    pub description: String,
    /// Length of the load, in seconds (windows scale with it).
    pub duration_s: f64,
    /// Baseline reserve arrivals per second in each region (a session starts
    /// with one reserve; its confirm or release comes on top).
    pub rate_per_region: f64,
    /// The regions that offer load.
    pub regions: Vec<String>,
    /// Most requests one region has in flight; past it, requests wait (and
    /// are counted late) or, after `late_drop_ms`, are dropped.
    pub inflight_max: usize,
    /// 0 (default): open loop, sessions arrive at `rate_per_region`. N > 0:
    /// closed loop instead, for saturation throughput: N clients per
    /// region, each starting its next session as soon as the previous
    /// reserve is answered (`rate_per_region` and windows unused).
    pub clients_per_region: usize,
    /// How long a request may wait for an in-flight slot before it is
    /// dropped (counted, never sent).
    pub late_drop_ms: u64,
    /// True (default): after the load, wait until every hold has ended
    /// (the tester's books and the target's) before reading the books, and
    /// count a hold still live at the deadline as a failure. False: read
    /// the books at once; holds still live are reported, not an error (the
    /// books must still balance). For runs with long holds.
    pub reconcile_wait_for_holds: bool,
    /// The catalog.
    pub catalog: CatalogSpec,
    /// The session mix.
    pub sessions: SessionSpec,
    /// Spikes and partitions.
    #[serde(rename = "window")]
    pub windows: Vec<Window>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "custom".into(),
            description: String::new(),
            duration_s: 60.0,
            rate_per_region: 100.0,
            regions: REGIONS_DEFAULT.iter().map(|r| r.to_string()).collect(),
            inflight_max: 256,
            clients_per_region: 0,
            late_drop_ms: 2_000,
            reconcile_wait_for_holds: true,
            catalog: CatalogSpec::default(),
            sessions: SessionSpec::default(),
            windows: Vec::new(),
        }
    }
}

/// The region that spikes in `black-friday` and `partition` (not the
/// ledger's home region, so its top-ups cross the WAN).
pub const SPIKE_REGION: &str = "eu-west";
/// The one region of `soak`: the region of `reservoir up --standalone`.
pub const SOAK_REGION: &str = "us-east";

impl Scenario {
    /// A built-in scenario at its default duration and rate.
    pub fn built_in(which: BuiltIn) -> Scenario {
        let spike = Window {
            kind: WindowKind::Spike,
            region: Some(SPIKE_REGION.into()),
            start_frac: 1.0 / 3.0,
            end_frac: 2.0 / 3.0,
            rate_factor: 10.0,
        };
        let hot_catalog = CatalogSpec {
            skus: 200,
            zipf_s: 1.1,
            hot_skus: 3,
            hot_stock_factor: 0.3,
            stock_factor: 4.0,
            ..CatalogSpec::default()
        };
        match which {
            BuiltIn::Steady => Scenario {
                name: "steady".into(),
                description: "baseline rate in every region; stock for every SKU lasts".into(),
                duration_s: 60.0,
                ..Scenario::default()
            },
            BuiltIn::BlackFriday => Scenario {
                name: "black-friday".into(),
                description: format!(
                    "baseline everywhere, then 10x in {SPIKE_REGION} for the middle third while the \
                     3 hottest SKUs sell out, then recovery"
                ),
                duration_s: 180.0,
                catalog: hot_catalog,
                windows: vec![spike],
                ..Scenario::default()
            },
            BuiltIn::FlashSale => Scenario {
                name: "flash-sale".into(),
                description: "one SKU, demand 20x the stock, every region at once".into(),
                duration_s: 60.0,
                catalog: CatalogSpec {
                    skus: 1,
                    zipf_s: 0.0,
                    hot_skus: 1,
                    hot_stock_factor: 0.05,
                    lines_max: 1,
                    qty_max: 1,
                    ..CatalogSpec::default()
                },
                ..Scenario::default()
            },
            BuiltIn::Partition => Scenario {
                name: "partition".into(),
                description: format!(
                    "black-friday, with {SPIKE_REGION} cut off from the other regions in the middle \
                     of its spike and healed before it ends"
                ),
                duration_s: 180.0,
                catalog: hot_catalog,
                windows: vec![
                    spike,
                    Window {
                        kind: WindowKind::Partition,
                        region: Some(SPIKE_REGION.into()),
                        start_frac: 0.4,
                        end_frac: 0.6,
                        rate_factor: 1.0,
                    },
                ],
                ..Scenario::default()
            },
            BuiltIn::Soak => Scenario {
                name: "soak".into(),
                description: format!(
                    "{SOAK_REGION} alone (reservoir up --standalone), 5,000 reserves/s of one unit \
                     over 1,000 Zipf-popular SKUs, every hold abandoned to expire (2-minute holds \
                     unless overridden)"
                ),
                duration_s: 600.0,
                rate_per_region: 5_000.0,
                regions: vec![SOAK_REGION.into()],
                inflight_max: 2_048,
                catalog: CatalogSpec {
                    skus: 1_000,
                    zipf_s: 1.1,
                    hot_skus: 0,
                    // Every SKU gets the most stock a catalog entry may
                    // have: the hottest one's demand over 600 s at 5,000/s
                    // is about 0.5 M units, and even RATE_PER_S_MAX for
                    // DURATION_S_MAX asks it for about 65 M, so nothing
                    // sells out and every reserve is a hold.
                    stock_min: STOCK_PER_SKU_MAX,
                    lines_max: 1,
                    qty_max: 1,
                    ..CatalogSpec::default()
                },
                sessions: SessionSpec {
                    confirm: 0.0,
                    release: 0.0,
                    abandon: 1.0,
                    think_ms: 0,
                    hold_ttl_ms: 120_000,
                    ..SessionSpec::default()
                },
                ..Scenario::default()
            },
        }
    }

    /// A scenario from TOML text (every field optional; missing ones take
    /// the defaults of [`Scenario::default`]).
    pub fn from_toml(text: &str) -> Result<Scenario, String> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// The scenario as TOML, e.g. to start a file from a built-in.
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string(self).map_err(|e| e.to_string())
    }

    /// Checks every bound; the message names the field and the value.
    pub fn validate(&self) -> Result<(), String> {
        let in_range = |name: &str, v: f64, lo: f64, hi: f64| {
            if v.is_finite() && v >= lo && v <= hi {
                Ok(())
            } else {
                Err(format!("{name} must be in {lo}..={hi}, got {v}"))
            }
        };
        in_range("duration_s", self.duration_s, DURATION_S_MIN, DURATION_S_MAX)?;
        in_range("rate_per_region", self.rate_per_region, 0.0, RATE_PER_S_MAX)?;
        if self.regions.is_empty() || self.regions.len() > REGIONS_MAX {
            return Err(format!(
                "regions: 1-{REGIONS_MAX} regions, got {}",
                self.regions.len()
            ));
        }
        let mut seen = self.regions.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.regions.len() {
            return Err("regions must be distinct".into());
        }
        if self.clients_per_region > INFLIGHT_MAX {
            return Err(format!(
                "clients_per_region must be 0-{INFLIGHT_MAX}, got {}",
                self.clients_per_region
            ));
        }
        if !(1..=INFLIGHT_MAX).contains(&self.inflight_max) {
            return Err(format!(
                "inflight_max must be 1-{INFLIGHT_MAX}, got {}",
                self.inflight_max
            ));
        }
        in_range(
            "late_drop_ms",
            self.late_drop_ms as f64,
            0.0,
            LATE_DROP_MS_MAX as f64,
        )?;
        let c = &self.catalog;
        if !(1..=SKUS_MAX).contains(&c.skus) {
            return Err(format!("catalog.skus must be 1-{SKUS_MAX}, got {}", c.skus));
        }
        in_range("catalog.zipf_s", c.zipf_s, 0.0, 5.0)?;
        if c.hot_skus > c.skus {
            return Err(format!(
                "catalog.hot_skus {} > catalog.skus {}",
                c.hot_skus, c.skus
            ));
        }
        in_range("catalog.hot_stock_factor", c.hot_stock_factor, 0.0, 1_000.0)?;
        in_range("catalog.stock_factor", c.stock_factor, 0.0, 1_000.0)?;
        in_range(
            "catalog.stock_min",
            c.stock_min as f64,
            0.0,
            STOCK_PER_SKU_MAX as f64,
        )?;
        if !(1..=LINES_PER_CART_MAX).contains(&c.lines_max) || c.lines_max > c.skus {
            return Err(format!(
                "catalog.lines_max must be 1-{LINES_PER_CART_MAX} and at most catalog.skus, got {}",
                c.lines_max
            ));
        }
        if !(1..=QTY_PER_LINE_MAX).contains(&c.qty_max) {
            return Err(format!(
                "catalog.qty_max must be 1-{QTY_PER_LINE_MAX}, got {}",
                c.qty_max
            ));
        }
        let s = &self.sessions;
        for (name, w) in [
            ("confirm", s.confirm),
            ("release", s.release),
            ("abandon", s.abandon),
        ] {
            in_range(&format!("sessions.{name}"), w, 0.0, 1e6)?;
        }
        if s.confirm + s.release + s.abandon <= 0.0 {
            return Err("sessions: confirm + release + abandon must be > 0".into());
        }
        in_range("sessions.think_ms", s.think_ms as f64, 0.0, THINK_MS_MAX as f64)?;
        in_range(
            "sessions.hold_ttl_ms",
            s.hold_ttl_ms as f64,
            HOLD_TTL_MS_MIN as f64,
            HOLD_TTL_MS_MAX as f64,
        )?;
        in_range(
            "sessions.reserve_max_wait_ms",
            s.reserve_max_wait_ms as f64,
            0.0,
            MAX_WAIT_MS_MAX as f64,
        )?;
        if self.windows.len() > WINDOWS_MAX {
            return Err(format!(
                "at most {WINDOWS_MAX} windows, got {}",
                self.windows.len()
            ));
        }
        for (i, w) in self.windows.iter().enumerate() {
            if !(w.start_frac >= 0.0 && w.start_frac < w.end_frac && w.end_frac <= 1.0) {
                return Err(format!(
                    "window {i}: need 0 <= start_frac < end_frac <= 1, got {}..{}",
                    w.start_frac, w.end_frac
                ));
            }
            in_range(&format!("window {i}: rate_factor"), w.rate_factor, 0.0, 1_000.0)?;
            if let Some(r) = &w.region {
                if !self.regions.contains(r) {
                    return Err(format!("window {i}: unknown region {r:?}"));
                }
            } else if w.kind == WindowKind::Partition {
                return Err(format!("window {i}: a partition needs a region"));
            }
        }
        for region in &self.regions {
            let peak = self.peak_rate(region);
            if peak > RATE_PER_S_MAX {
                return Err(format!("{region}: peak rate {peak}/s is over {RATE_PER_S_MAX}/s"));
            }
        }
        Ok(())
    }

    /// The windows in seconds since the start: `(kind, region, start_s, end_s, factor)`.
    pub fn windows_s(&self) -> Vec<(WindowKind, Option<String>, f64, f64, f64)> {
        self.windows
            .iter()
            .map(|w| {
                (
                    w.kind,
                    w.region.clone(),
                    w.start_frac * self.duration_s,
                    w.end_frac * self.duration_s,
                    w.rate_factor,
                )
            })
            .collect()
    }

    /// The arrival rate of `region` at `t_s`, spikes applied.
    pub fn rate_at(&self, region: &str, t_s: f64) -> f64 {
        let mut rate = self.rate_per_region;
        for (kind, r, start, end, factor) in self.windows_s() {
            let applies = r.as_deref().is_none_or(|r| r == region);
            if kind == WindowKind::Spike && applies && start <= t_s && t_s < end {
                rate *= factor;
            }
        }
        rate
    }

    /// The highest rate `region` ever sees.
    pub fn peak_rate(&self, region: &str) -> f64 {
        self.boundaries()
            .iter()
            .map(|t| self.rate_at(region, *t))
            .fold(self.rate_per_region, f64::max)
    }

    /// Every time the rate may change, with 0 and the end.
    fn boundaries(&self) -> Vec<f64> {
        let mut b = vec![0.0, self.duration_s];
        for (kind, _, start, end, _) in self.windows_s() {
            if kind == WindowKind::Spike {
                b.push(start);
                b.push(end);
            }
        }
        b.sort_by(f64::total_cmp);
        b.dedup();
        b
    }

    /// The arrival schedule of `region`.
    pub fn schedule(&self, region: &str) -> Schedule {
        let b = self.boundaries();
        let segments = b
            .windows(2)
            .map(|w| RateSegment {
                start_s: w[0],
                end_s: w[1],
                rate_per_s: self.rate_at(region, w[0]),
            })
            .collect();
        Schedule::new(segments)
    }

    /// Expected sessions (reserve arrivals) over all regions.
    pub fn expected_sessions(&self) -> f64 {
        self.regions
            .iter()
            .map(|r| self.schedule(r).expected_arrivals())
            .sum()
    }

    /// Units each SKU rank (1-based index 0 = rank 1) is stocked with:
    /// expected units asked for by reserves over the run times the SKU's
    /// stock factor, at least `stock_min`.
    pub fn stock_plan(&self) -> Vec<u64> {
        let c = &self.catalog;
        let zipf = Zipf::new(c.skus, c.zipf_s);
        let sessions = self.expected_sessions();
        let lines_mean = (1 + c.lines_max) as f64 / 2.0;
        let qty_mean = (1 + c.qty_max) as f64 / 2.0;
        (1..=c.skus)
            .map(|k| {
                // A cart holds a SKU at most once, so its chance to be in a
                // cart is at most 1 (a first-order estimate; good enough to
                // size stock against).
                let in_cart = (lines_mean * zipf.probability(k)).min(1.0);
                let demand = sessions * in_cart * qty_mean;
                let factor = if k <= c.hot_skus {
                    c.hot_stock_factor
                } else {
                    c.stock_factor
                };
                ((demand * factor).round() as u64).clamp(c.stock_min, STOCK_PER_SKU_MAX)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every built-in validates, round-trips through TOML, and scales its
    /// windows with the duration.
    #[test]
    fn built_ins_valid_and_round_trip() {
        for which in [
            BuiltIn::Steady,
            BuiltIn::BlackFriday,
            BuiltIn::FlashSale,
            BuiltIn::Partition,
            BuiltIn::Soak,
        ] {
            let mut s = Scenario::built_in(which);
            s.validate().unwrap();
            let text = s.to_toml().unwrap();
            assert_eq!(Scenario::from_toml(&text).unwrap(), s, "{text}");
            s.duration_s = 9.0;
            for (_, _, start, end, _) in s.windows_s() {
                assert!(start >= 0.0 && end <= 9.0);
            }
        }
    }

    /// The black-friday spike is 10× in one region only, inside its window.
    #[test]
    fn black_friday_rates() {
        let mut s = Scenario::built_in(BuiltIn::BlackFriday);
        s.duration_s = 30.0;
        s.rate_per_region = 10.0;
        assert_eq!(s.rate_at(SPIKE_REGION, 15.0), 100.0);
        assert_eq!(s.rate_at(SPIKE_REGION, 5.0), 10.0);
        assert_eq!(s.rate_at("us-east", 15.0), 10.0);
        // 10/s × 30 s in two regions, plus 10/s × 20 s + 100/s × 10 s in the spiking one.
        assert!((s.expected_sessions() - (600.0 + 1200.0)).abs() < 1e-6);
        let stock = s.stock_plan();
        assert_eq!(stock.len(), 200);
        // Hot SKUs are stocked under their demand, the rest above it.
        assert!(stock[0] < stock[3] * 10);
    }

    /// The soak is the run it reproduces: one region, 5,000/s for 600 s,
    /// one unit of one of 1,000 SKUs per reserve, every hold abandoned for
    /// 2 minutes, 2,048 in flight; no SKU can sell out even at the highest
    /// rate for the longest run; the 15-minute and 4-hour holds validate,
    /// longer ones do not; an older TOML without the reconcile switch waits.
    #[test]
    fn soak_shape() {
        let mut s = Scenario::built_in(BuiltIn::Soak);
        assert_eq!(s.regions, vec![SOAK_REGION.to_string()]);
        assert_eq!(
            (s.duration_s, s.rate_per_region, s.inflight_max),
            (600.0, 5_000.0, 2_048)
        );
        assert_eq!((s.catalog.skus, s.catalog.zipf_s), (1_000, 1.1));
        assert_eq!((s.catalog.lines_max, s.catalog.qty_max), (1, 1));
        assert_eq!((s.sessions.confirm, s.sessions.release), (0.0, 0.0));
        assert_eq!(s.sessions.hold_ttl_ms, 120_000);
        assert!(s.reconcile_wait_for_holds && s.windows.is_empty());
        s.rate_per_region = RATE_PER_S_MAX;
        s.duration_s = DURATION_S_MAX;
        let zipf = Zipf::new(s.catalog.skus, s.catalog.zipf_s);
        for (i, stock) in s.stock_plan().into_iter().enumerate() {
            let demand = s.expected_sessions() * zipf.probability(i + 1);
            assert!(
                stock as f64 > 1.5 * demand,
                "rank {}: stock {stock}, demand {demand}",
                i + 1
            );
        }
        s.sessions.hold_ttl_ms = 900_000;
        s.validate().unwrap();
        s.sessions.hold_ttl_ms = 14_400_000;
        s.validate().unwrap();
        s.sessions.hold_ttl_ms = 14_400_001;
        assert!(s.validate().unwrap_err().contains("hold_ttl_ms"));
        assert!(
            Scenario::from_toml("duration_s = 5")
                .unwrap()
                .reconcile_wait_for_holds
        );
        let s = Scenario::from_toml("reconcile_wait_for_holds = false").unwrap();
        assert!(!s.reconcile_wait_for_holds);
    }

    /// A TOML file may give only what differs from the defaults; bad values
    /// are refused with the field named.
    #[test]
    fn partial_toml_and_errors() {
        let s = Scenario::from_toml(
            "name = 'mine'\nduration_s = 5\n[catalog]\nskus = 10\n\
             [[window]]\nkind = 'spike'\nregion = 'ap-south'\nstart_frac = 0.5\nend_frac = 1.0\nrate_factor = 3\n",
        )
        .unwrap();
        assert_eq!(s.catalog.skus, 10);
        assert_eq!(s.rate_at("ap-south", 4.0), 300.0);
        let err = Scenario::from_toml("duration_s = 0").unwrap_err();
        assert!(err.contains("duration_s"), "{err}");
        let err = Scenario::from_toml("[[window]]\nkind = 'partition'\nstart_frac = 0.1\nend_frac = 0.2\n")
            .unwrap_err();
        assert!(err.contains("needs a region"), "{err}");
        assert!(Scenario::from_toml("bogus = 1").is_err());
    }
}
