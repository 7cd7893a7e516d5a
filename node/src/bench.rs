//! `reservoir bench`: a small closed-loop benchmark of `Inventory.Reserve`.
//!
//! N clients share C gRPC connections round-robin. Each client loops: reserve
//! one unit of one hot SKU under a fresh `request_id`, wait for the answer,
//! record its latency, repeat, until the deadline or until
//! [`REQUESTS_MAX`] requests have been sent by all clients together. Because
//! every client waits for its answer before sending the next request, the
//! offered load adapts to the server (a closed loop): this measures latency
//! at a given concurrency and the throughput that concurrency reaches, not
//! behaviour under a fixed arrival rate. That is the load tester's job
//! (`reservoir-loadtest`, in `loadtest/`).
//!
//! The run: add `--stock` units of the SKU with `Admin.AdjustStock` (so the
//! benchmark does not run out), then a warm-up whose requests are neither
//! timed nor counted, then the measured window. Latencies of successful
//! reserves go into one `hdrhistogram` per client, merged at the end; errors
//! are counted by their `google.rpc.ErrorInfo` reason and not retried.
//!
//! Caveats: the client runs wherever it is started, usually on the same
//! machine as the nodes, and competes with them for CPU. Holds are taken with
//! the server's default hold time and never released, so a long run leaves
//! many live holds in the region until they expire.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use reservoir_proto::v1;
use reservoir_proto::v1::admin_client::AdminClient;
use reservoir_proto::v1::inventory_client::InventoryClient;
use serde::Serialize;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::cli::{BenchArgs, ClientError, NodeAddr, connect, fresh_request_id};
use reservoir_client::reason_or_code;

/// Connections when `--connections` is not given: one per client up to this.
pub const CONNECTIONS_DEFAULT_MAX: u64 = 8;
/// Most requests one run sends, all clients and the warm-up together.
pub const REQUESTS_MAX: u64 = 10_000_000;
/// Distinct error reasons counted by name; further ones are counted under
/// [`REASON_OTHER`], so a server inventing reasons cannot grow the map.
pub const REASONS_MAX: usize = 64;
/// The bucket for reasons past [`REASONS_MAX`].
pub const REASON_OTHER: &str = "OTHER";
/// Highest latency the histograms track, in microseconds (one minute, far
/// above the client's call timeout); a longer one is recorded as this.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Precision of the histograms: 3 significant digits (0.1 % error).
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// How often a progress line is printed to stderr.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// What to run, resolved from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    /// The node the clients send to (ideally the leader).
    pub addr: NodeAddr,
    /// Concurrent clients.
    pub clients: u64,
    /// gRPC connections, shared round-robin by the clients; at most `clients`.
    pub connections: u64,
    /// The measured window.
    pub duration: Duration,
    /// Untimed requests before the measured window.
    pub warmup: Duration,
    /// The hot SKU every client reserves.
    pub sku: String,
    /// Units added with `AdjustStock` before the run; 0 adds none.
    pub stock: u64,
}

impl BenchOptions {
    /// The options `reservoir bench` was given, with their defaults resolved.
    pub fn from_args(args: BenchArgs) -> BenchOptions {
        let connections = args
            .connections
            .unwrap_or_else(|| args.clients.min(CONNECTIONS_DEFAULT_MAX))
            .min(args.clients);
        BenchOptions {
            addr: args.target.addr,
            clients: args.clients,
            connections,
            duration: Duration::from_secs(args.duration_s),
            warmup: Duration::from_secs(args.warmup_s),
            sku: args.sku,
            stock: args.stock,
        }
    }
}

/// A finished run: what was measured, ready to print.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Concurrent clients.
    pub clients: u64,
    /// gRPC connections they shared.
    pub connections: u64,
    /// The SKU reserved.
    pub sku: String,
    /// Warm-up, not measured.
    pub warmup_s: f64,
    /// The measured window: from the end of the warm-up to the last answer
    /// to a request sent inside it.
    pub window_s: f64,
    /// Requests sent in the measured window and answered.
    pub requests: u64,
    /// Of those, successful reserves.
    pub ok: u64,
    /// Of those, errors by reason.
    pub errors: BTreeMap<String, u64>,
    /// Answered requests per second of the measured window.
    pub throughput_rps: f64,
    /// Successful reserves per second of the measured window.
    pub reserves_per_s: f64,
    /// Latency of the successful reserves.
    pub latency_ms: Latency,
}

/// Latency percentiles in milliseconds, with microsecond resolution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    /// Slowest.
    pub max: f64,
}

impl Latency {
    /// The percentiles of a histogram of microseconds; all zero when empty.
    pub fn from_histogram(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p99_9: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// An empty latency histogram: 1 µs to [`LATENCY_US_MAX`], 3 digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy hdrhistogram's rules (low >= 1,
    // high >= 2 * low, sigfig <= 5), so creation cannot fail.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Records one latency, clamped into the histogram's range.
pub fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(us.clamp(1, LATENCY_US_MAX));
}

/// Merges per-client histograms into one.
pub fn merge_histograms<'a>(histograms: impl IntoIterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut merged = new_histogram();
    for histogram in histograms {
        // Every histogram comes from `new_histogram` and holds only clamped
        // values, so each fits the merged one's range.
        merged
            .add(histogram)
            .expect("histograms with the same bounds merge");
    }
    merged
}

/// Adds `count` errors of `reason`, keeping at most [`REASONS_MAX`] names.
pub fn count_error(errors: &mut BTreeMap<String, u64>, reason: &str, count: u64) {
    let key = if errors.contains_key(reason) || errors.len() < REASONS_MAX {
        reason
    } else {
        REASON_OTHER
    };
    *errors.entry(key.to_string()).or_insert(0) += count;
}

/// Milliseconds as printed: three decimals (microseconds).
pub fn format_ms(ms: f64) -> String {
    format!("{ms:.3}")
}

impl Report {
    /// The report as a few aligned lines.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let errors: u64 = self.errors.values().sum();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "closed-loop Reserve benchmark: {} clients on {} connections, sku {}, qty 1",
            self.clients, self.connections, self.sku
        );
        let _ = writeln!(
            out,
            "requests:    {} ({} ok, {} errors) in {:.2} s after {:.0} s warm-up",
            self.requests, self.ok, errors, self.window_s, self.warmup_s
        );
        let by_reason: Vec<String> = self
            .errors
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "errors:      {}",
            if by_reason.is_empty() {
                "none".to_string()
            } else {
                by_reason.join(", ")
            }
        );
        let _ = writeln!(
            out,
            "throughput:  {:.0} req/s ({:.0} reserves/s)",
            self.throughput_rps, self.reserves_per_s
        );
        let l = &self.latency_ms;
        let _ = write!(
            out,
            "latency ms:  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            format_ms(l.p50),
            format_ms(l.p90),
            format_ms(l.p99),
            format_ms(l.p99_9),
            format_ms(l.max)
        );
        out
    }

    /// The report as one JSON object on one line.
    pub fn json(&self) -> String {
        // A struct of numbers, strings and a string-keyed map always
        // serializes.
        serde_json::to_string(self).expect("a report serializes")
    }
}

/// What one client measured.
struct ClientResult {
    histogram: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    /// When its last measured request was answered.
    last_answer: Option<Instant>,
}

/// The run's timeline and the counters every client shares.
struct Plan {
    sku: String,
    /// Prefix of every request id of this run.
    run_id: String,
    /// Requests sent before this are warm-up.
    measure_from: Instant,
    /// No request is sent at or after this.
    end: Instant,
    /// Requests sent so far, bounded by [`REQUESTS_MAX`].
    sent: AtomicU64,
    /// Answers so far, warm-up included, for the progress line.
    answered: AtomicU64,
    /// Errors so far, warm-up included, for the progress line.
    failed: AtomicU64,
}

impl Plan {
    /// Takes one request from the run's budget; false once it is spent.
    fn take_request(&self) -> bool {
        self.sent.fetch_add(1, Ordering::Relaxed) < REQUESTS_MAX
    }
}

/// Runs the benchmark: stock, connections, warm-up, measured window.
pub async fn run(options: &BenchOptions) -> Result<Report, ClientError> {
    let mut channels = Vec::new();
    for _ in 0..options.connections.max(1) {
        channels.push(connect(&options.addr).await?);
    }
    if options.stock > 0 {
        let delta = i64::try_from(options.stock)
            .map_err(|_| ClientError::Malformed("--stock does not fit a stock delta"))?;
        let request = v1::AdjustStockRequest {
            request_id: fresh_request_id(),
            sku: options.sku.clone(),
            delta,
        };
        AdminClient::new(channels[0].clone())
            .adjust_stock(request)
            .await?;
    }

    let start = Instant::now();
    let plan = Arc::new(Plan {
        sku: options.sku.clone(),
        run_id: fresh_request_id().replacen("cli-", "bench-", 1),
        measure_from: start + options.warmup,
        end: start + options.warmup + options.duration,
        sent: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let progress = tokio::spawn(progress_loop(plan.clone(), start));
    let mut tasks = Vec::new();
    for client in 0..options.clients {
        let channel = channels[(client % channels.len() as u64) as usize].clone();
        tasks.push(tokio::spawn(client_loop(client, channel, plan.clone())));
    }
    let mut results = Vec::new();
    for task in tasks {
        // A client task only panics on a bug; surface it rather than report
        // a partial run as a whole one.
        results.push(task.await.expect("a bench client panicked"));
    }
    progress.abort();
    Ok(report(options, &plan, &results))
}

/// One client: reserve, wait, record, until the deadline or the budget.
async fn client_loop(client: u64, channel: Channel, plan: Arc<Plan>) -> ClientResult {
    let mut inventory = InventoryClient::new(channel);
    let mut result = ClientResult {
        histogram: new_histogram(),
        ok: 0,
        errors: BTreeMap::new(),
        last_answer: None,
    };
    for n in 0u64.. {
        let sent = Instant::now();
        if sent >= plan.end || !plan.take_request() {
            break;
        }
        let request = v1::ReserveRequest {
            request_id: format!("{}-{client}-{n}", plan.run_id),
            lines: vec![v1::Line {
                sku: plan.sku.clone(),
                quantity: 1,
            }],
            ttl_ms: 0,
            allow_partial: false,
            max_wait_ms: 0,
        };
        let answer = inventory.reserve(request).await;
        let answered = Instant::now();
        plan.answered.fetch_add(1, Ordering::Relaxed);
        let measured = sent >= plan.measure_from;
        match answer {
            Ok(_) if measured => {
                record_latency(&mut result.histogram, answered - sent);
                result.ok += 1;
            }
            Ok(_) => {}
            Err(status) => {
                plan.failed.fetch_add(1, Ordering::Relaxed);
                if measured {
                    let reason = reason_or_code(&status);
                    count_error(&mut result.errors, &reason, 1);
                }
            }
        }
        if measured {
            result.last_answer = Some(answered);
        }
    }
    result
}

/// Prints one line a second to stderr until aborted.
async fn progress_loop(plan: Arc<Plan>, start: Instant) {
    let mut tick = tokio::time::interval_at(start + PROGRESS_INTERVAL, PROGRESS_INTERVAL);
    let mut answered_before = 0;
    loop {
        let now = tick.tick().await;
        let answered = plan.answered.load(Ordering::Relaxed);
        let failed = plan.failed.load(Ordering::Relaxed);
        let phase = if now < plan.measure_from {
            "warm-up"
        } else {
            "measure"
        };
        eprintln!(
            "bench: {:>4} s {phase}: {answered} answered, {failed} errors, {} req/s",
            (now - start).as_secs(),
            answered - answered_before
        );
        answered_before = answered;
    }
}

/// Merges the clients' results into the report.
fn report(options: &BenchOptions, plan: &Plan, results: &[ClientResult]) -> Report {
    let histogram = merge_histograms(results.iter().map(|r| &r.histogram));
    let mut errors = BTreeMap::new();
    for r in results {
        for (reason, n) in &r.errors {
            count_error(&mut errors, reason, *n);
        }
    }
    let ok: u64 = results.iter().map(|r| r.ok).sum();
    let requests = ok + errors.values().sum::<u64>();
    let window_s = results
        .iter()
        .filter_map(|r| r.last_answer)
        .max()
        .map_or(0.0, |last| (last - plan.measure_from).as_secs_f64());
    Report {
        clients: options.clients,
        connections: options.connections,
        sku: options.sku.clone(),
        warmup_s: options.warmup.as_secs_f64(),
        window_s,
        requests,
        ok,
        errors,
        throughput_rps: per_second(requests, window_s),
        reserves_per_s: per_second(ok, window_s),
        latency_ms: Latency::from_histogram(&histogram),
    }
}

/// `count` per second of `window_s`; 0 for an empty window.
pub fn per_second(count: u64, window_s: f64) -> f64 {
    if window_s > 0.0 {
        count as f64 / window_s
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(extra: &[&str]) -> Result<BenchOptions, clap::Error> {
        let mut argv = vec!["reservoir", "bench", "--addr", "127.0.0.1:7001"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Bench(args) => Ok(BenchOptions::from_args(args)),
            other => panic!("parsed as {other:?}"),
        }
    }

    /// With only `--addr`, every option takes its documented default.
    #[test]
    fn defaults() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.addr.authority, "127.0.0.1:7001");
        assert_eq!((o.clients, o.connections), (1, 1));
        assert_eq!(o.duration, Duration::from_secs(10));
        assert_eq!(o.warmup, Duration::from_secs(2));
        assert_eq!(o.sku, "bench-hot");
        assert_eq!(o.stock, 100_000_000);
    }

    /// Connections default to one per client up to 8, and never exceed the clients.
    #[test]
    fn connections_default_and_bound() {
        assert_eq!(parse(&["--clients", "4"]).unwrap().connections, 4);
        assert_eq!(parse(&["--clients", "64"]).unwrap().connections, 8);
        let o = parse(&["--clients", "64", "--connections", "2"]).unwrap();
        assert_eq!(o.connections, 2);
        let o = parse(&["--clients", "3", "--connections", "16"]).unwrap();
        assert_eq!(o.connections, 3);
    }

    /// Out-of-range counts and bad SKUs are refused by the parser.
    #[test]
    fn bounds_are_enforced() {
        for bad in [
            &["--clients", "0"][..],
            &["--clients", "4097"],
            &["--connections", "0"],
            &["--duration-s", "0"],
            &["--duration-s", "3601"],
            &["--warmup-s", "3601"],
            &["--stock", "1000000001"],
            &["--sku", "has space"],
            &["--sku", ""],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        let o = parse(&["--warmup-s", "0", "--stock", "0", "--json"]).unwrap();
        assert_eq!((o.warmup, o.stock), (Duration::ZERO, 0));
    }

    /// Percentiles come out in milliseconds with microsecond resolution; an empty histogram gives zeros.
    #[test]
    fn percentiles_in_ms() {
        assert_eq!(Latency::from_histogram(&new_histogram()), Latency::default());
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            record_latency(&mut h, Duration::from_micros(us));
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(
            (l.p50, l.p90, l.p99, l.p99_9, l.max),
            (0.5, 0.9, 0.99, 0.999, 1.0)
        );
        assert_eq!(format_ms(l.p50), "0.500");
        assert_eq!(format_ms(12.3456), "12.346");
    }

    /// Latencies outside the histogram's range are clamped, not lost.
    #[test]
    fn latencies_are_clamped() {
        let mut h = new_histogram();
        record_latency(&mut h, Duration::ZERO);
        record_latency(&mut h, Duration::from_secs(3600));
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= LATENCY_US_MAX, "max {}", h.max());
    }

    /// Merging keeps every sample: the merged percentiles are those of all clients' samples together.
    #[test]
    fn merge_keeps_every_sample() {
        let (mut fast, mut slow) = (new_histogram(), new_histogram());
        for _ in 0..90 {
            record_latency(&mut fast, Duration::from_micros(1_000));
        }
        for _ in 0..10 {
            record_latency(&mut slow, Duration::from_micros(20_000));
        }
        let merged = merge_histograms([&fast, &slow]);
        assert_eq!(merged.len(), 100);
        let l = Latency::from_histogram(&merged);
        assert_eq!((l.p50, l.p90), (1.0, 1.0));
        assert!((l.p99 - 20.0).abs() < 0.02, "p99 {}", l.p99);
        assert!((l.max - 20.0).abs() < 0.02, "max {}", l.max);
    }

    /// Error reasons are counted by name up to the bound, then under OTHER.
    #[test]
    fn error_reasons_are_bounded() {
        let mut errors = BTreeMap::new();
        count_error(&mut errors, "OVERLOADED", 2);
        count_error(&mut errors, "OVERLOADED", 1);
        assert_eq!(errors["OVERLOADED"], 3);
        for i in 0..2 * REASONS_MAX {
            count_error(&mut errors, &format!("R{i}"), 1);
        }
        assert_eq!(errors.len(), REASONS_MAX + 1);
        count_error(&mut errors, "OVERLOADED", 1);
        assert_eq!(errors["OVERLOADED"], 4, "a known reason keeps its own count");
        assert_eq!(errors.values().sum::<u64>(), 4 + 2 * REASONS_MAX as u64);
    }

    fn sample_report() -> Report {
        Report {
            clients: 64,
            connections: 8,
            sku: "bench-hot".into(),
            warmup_s: 2.0,
            window_s: 15.0,
            requests: 150_010,
            ok: 150_000,
            errors: BTreeMap::from([("OVERLOADED".to_string(), 10)]),
            throughput_rps: per_second(150_010, 15.0),
            reserves_per_s: per_second(150_000, 15.0),
            latency_ms: Latency {
                p50: 3.5,
                p90: 5.25,
                p99: 9.0,
                p99_9: 14.125,
                max: 30.0,
            },
        }
    }

    /// The text report names every figure the README quotes.
    #[test]
    fn text_report() {
        let text = sample_report().text();
        for want in [
            "64 clients on 8 connections, sku bench-hot",
            "requests:    150010 (150000 ok, 10 errors) in 15.00 s after 2 s warm-up",
            "errors:      OVERLOADED 10",
            "throughput:  10001 req/s (10000 reserves/s)",
            "latency ms:  p50 3.500  p90 5.250  p99 9.000  p99.9 14.125  max 30.000",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        let mut clean = sample_report();
        clean.errors.clear();
        assert!(clean.text().contains("errors:      none"));
    }

    /// `--json` prints one object with the same figures.
    #[test]
    fn json_report() {
        let json = sample_report().json();
        assert!(!json.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["clients"], 64);
        assert_eq!(v["requests"], 150_010);
        assert_eq!(v["errors"]["OVERLOADED"], 10);
        assert_eq!(v["latency_ms"]["p99.9"], 14.125);
        assert_eq!(v["latency_ms"]["p50"], 3.5);
        assert!((v["throughput_rps"].as_f64().unwrap() - 10_000.666).abs() < 0.01);
    }

    /// Throughput over an empty window is zero, not a division by zero.
    #[test]
    fn empty_window() {
        assert_eq!(per_second(10, 0.0), 0.0);
        assert_eq!(per_second(30, 2.0), 15.0);
    }
}
