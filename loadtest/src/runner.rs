//! The open-loop engine: one generator per region sends sessions on the
//! scenario's Poisson schedule, whatever the server does; each session is
//! its own task; latency is measured from each request's *intended* send
//! time, so a stall shows in full (no coordinated omission).
//!
//! Bounds and what happens at them:
//! - in flight per region: `scenario.inflight_max` requests (a semaphore).
//!   A request that finds no free slot waits for one and is counted *late*;
//!   its latency still runs from its intended time. If no slot frees within
//!   `scenario.late_drop_ms` of the intended time, the request is *dropped*:
//!   counted, never sent, and its session ends.
//! - live sessions per region: [`SESSIONS_LIVE_MAX`] (a session lives through
//!   its reserve, its think time and its follow-up); an arrival beyond it is
//!   dropped and counted. A hold left to expire does not keep its session:
//!   its lines wait in the shared [`HoldExpiry`] (at most
//!   [`HOLD_LINES_PENDING_MAX`] lines; past it, a session waits out its
//!   hold itself, under this bound) until a ticker gives its units back to
//!   the books.
//! - retries: a retryable error (UNAVAILABLE, a timeout) is retried with the
//!   same request id at most [`RETRIES_MAX`] times, with backoff; the
//!   request keeps its slot meanwhile.
//! - time: generators stop at the scenario's end; sessions get a bounded
//!   drain, after which any left are aborted and counted; then, unless the
//!   scenario says not to (`reconcile_wait_for_holds = false`), the last
//!   holds get until the same deadline to end; settlement gets
//!   [`RECONCILE_DEADLINE`] (plus the hold time when waiting for holds).
//! - server samples (Reservoir): one `GET /status` per node per second,
//!   each with a short timeout, in their own task (see [`crate::servers`]).
//! - count: every region sends at most [`SESSIONS_PER_REGION_MAX`] sessions.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reservoir_client::connect::unix_ms;
use serde::Serialize;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::acknowledged::{self, AckReport, Fate};
use crate::expiry::{self, HOLD_LINES_PENDING_MAX, HoldExpiry};
use crate::metrics::{Event, OUTCOME_OK, OUTCOMES_MAX, Op, Recorder, RegionStats};
use crate::rng::Rng;
use crate::scenario::{Scenario, WindowKind};
use crate::servers::{self, ServerSamples};
use crate::target::{OpError, ServerView, Target, TargetError, reason};
use crate::workload::{Catalog, SessionKind, SessionMix, SessionPlan};

/// Most live sessions per region.
pub const SESSIONS_LIVE_MAX: usize = 50_000;
/// Most sessions one region sends in a run.
pub const SESSIONS_PER_REGION_MAX: u64 = 20_000_000;
/// Refusals the workload expects (stock runs out, a buyer confirms too
/// late); any other error a retry would not change is a failure.
pub const EXPECTED_REFUSALS: [&str; 2] = [reason::INSUFFICIENT_STOCK, reason::RESERVATION_EXPIRED];
/// Retries of one request after a retryable error.
pub const RETRIES_MAX: u32 = 3;
/// Backoff before the first retry; doubles each time.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// A request sent more than this after its intended time counts as late.
pub const LATE_SLACK: Duration = Duration::from_millis(10);
/// How long after a hold's time runs out the tester still counts its units
/// as held (servers expire holds on a timer: Reservoir's region leader, the
/// baselines' sweepers every 100 ms).
pub const EXPIRY_GRACE: Duration = Duration::from_secs(1);
/// Extra time sessions get to finish after their longest possible life.
pub const DRAIN_SLACK: Duration = Duration::from_secs(5);
/// Longest one request can take, retries included (Reservoir's 8 s call
/// timeout, four tries, backoff): part of the drain bound.
pub const REQUEST_LIFETIME_MAX: Duration = Duration::from_secs(34);
/// How long settlement and hold expiry have to catch up after the load.
pub const RECONCILE_DEADLINE: Duration = Duration::from_secs(60);
/// How often the progress line is printed and idle seconds are closed.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// How often stranded tokens are sampled (Reservoir).
pub const STRANDED_INTERVAL: Duration = Duration::from_secs(1);
/// Most stranded-token samples kept.
pub const STRANDED_SAMPLES_MAX: usize = crate::metrics::TIMELINE_SECONDS_MAX;
/// Closed-loop clients draw their carts from random streams numbered from
/// here (the open-loop generators use 0..2 × regions).
pub const CLOSED_LOOP_STREAMS: u64 = 1_000;

/// What the tester believes about one SKU, from the answers it got.
#[derive(Debug, Default)]
pub struct SkuBook {
    /// Units stocked before the run.
    pub stocked: u64,
    /// Units in holds that the tester believes live (reserved OK, not yet
    /// confirmed, released or past their hold time).
    pub held: AtomicI64,
    /// Units whose confirm was answered OK.
    pub confirmed: AtomicU64,
    /// Units whose confirm ended without an answer (retries exhausted): the
    /// server may or may not have sold them.
    pub unknown: AtomicU64,
    /// Units asked for by buyer (reserve → confirm) sessions.
    pub demand: AtomicU64,
    /// Units asked for by reserves sent and not yet answered: they may be
    /// taking the last units right now.
    pub pending: AtomicI64,
}

impl SkuBook {
    /// Units the tester believes could still be reserved somewhere: stock
    /// less what is held, sold, or being reserved by requests in flight.
    /// It errs towards "gone" (holds are forgotten only after the answer
    /// that ends them), so a refusal it calls a local miss is one.
    pub fn remaining(&self) -> i64 {
        self.stocked as i64
            - self.held.load(Ordering::Relaxed)
            - self.pending.load(Ordering::Relaxed)
            - self.confirmed.load(Ordering::Relaxed) as i64
    }
}

/// A window as it actually ran.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mark {
    /// `spike` or `partition`.
    pub kind: WindowKind,
    /// The region, or `None` for all.
    pub region: Option<String>,
    /// Seconds since the start of the load.
    pub start_s: f64,
    /// Seconds since the start of the load.
    pub end_s: f64,
    /// Spike multiplier (1 for partitions).
    pub rate_factor: f64,
    /// What happened, e.g. "cut", "skipped: ...".
    pub note: String,
    /// False when the window was skipped or failed (charts leave it out).
    pub applied: bool,
}

/// Everything a run produced, before it is turned into a report.
pub struct RunOutput {
    /// The scenario as run (duration and rate overrides applied).
    pub scenario: Scenario,
    /// The target's name.
    pub target: String,
    /// The seed.
    pub seed: u64,
    /// Unix ms when the load started.
    pub started_unix_ms: u64,
    /// Seconds the load generators ran.
    pub load_s: f64,
    /// The catalog.
    pub catalog: Catalog,
    /// The tester's books, by catalog index.
    pub books: Vec<SkuBook>,
    /// Each region's recorded stats, by scenario region index.
    pub stats: Vec<RegionStats>,
    /// Windows as they ran.
    pub marks: Vec<Mark>,
    /// `(second, stranded tokens)` samples (Reservoir).
    pub stranded: Vec<(u64, u64)>,
    /// Each node's `/status` once a second (Reservoir only).
    pub servers: Option<ServerSamples>,
    /// The target's books after the run.
    pub server: Result<ServerView, String>,
    /// Sessions aborted at the end of the drain.
    pub aborted_sessions: u64,
    /// Things worth telling the reader.
    pub notes: Vec<String>,
    /// The target answers reserves from regional tokens (Reservoir's
    /// `tokens` design); the local-hit ratio means nothing otherwise.
    pub local_tokens: bool,
    /// Every acknowledged reservation read back (`check_acknowledged`,
    /// Reservoir).
    pub acknowledged: Option<AckReport>,
    /// Requests that failed with an error a retry would not change, by
    /// reason, other than [`EXPECTED_REFUSALS`].
    pub failed_not_retryable: BTreeMap<String, u64>,
}

/// Shared by every task of a run.
struct Ctx {
    target: Target,
    recorder: Recorder,
    catalog: Catalog,
    books: Vec<SkuBook>,
    scenario: Scenario,
    inflight: Vec<Semaphore>,
    live: Vec<AtomicUsize>,
    /// Holds waiting for their end, given back to `books` by a ticker.
    expiry: HoldExpiry,
    /// Holds the expiry refused (full): their sessions waited them out.
    expiry_refused: AtomicU64,
    request_prefix: String,
    request_seq: AtomicU64,
    /// Acknowledged reservations and their fates (`check_acknowledged`).
    acknowledged: Option<acknowledged::Ledger>,
    /// Requests that failed with an error a retry would not change, other
    /// than the refusals the workload expects ([`EXPECTED_REFUSALS`]).
    failed_not_retryable: Mutex<BTreeMap<String, u64>>,
}

/// What happened to one request.
enum Sent<T> {
    /// Never sent: no in-flight slot in time.
    Dropped,
    /// Answered (or given up after retries).
    Answered {
        result: Result<T, OpError>,
        sent_at: Instant,
        answered_at: Instant,
    },
}

/// A run-unique prefix for SKUs and request ids: `lt{seed % 10^4}-{unix s % 10^6}`.
pub fn run_prefix(seed: u64) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("lt{}-{:06}", seed % 10_000, secs % 1_000_000)
}

impl Ctx {
    fn fresh_request_id(&self, region: usize) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{region}-{n}", self.request_prefix)
    }

    /// Sends one request at (or after) `intended`: waits for an in-flight
    /// slot (late, or dropped), then tries, retrying retryable errors with
    /// the same arguments (so the same request id), and records the answer
    /// with its latency from `intended`.
    async fn send<T, F, Fut>(&self, region: usize, op: Op, intended: Instant, mut attempt: F) -> Sent<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OpError>>,
    {
        let Some(slots) = self.inflight.get(region) else {
            return Sent::Dropped;
        };
        let drop_at = intended + Duration::from_millis(self.scenario.late_drop_ms);
        let permit = match slots.try_acquire() {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout_at(drop_at, slots.acquire()).await {
                Ok(Ok(p)) => p,
                _ => {
                    self.recorder.event(region, Event::DroppedLate);
                    return Sent::Dropped;
                }
            },
        };
        let sent_at = Instant::now();
        if sent_at > intended + LATE_SLACK {
            self.recorder.event(region, Event::Late);
        }
        self.recorder.event(region, Event::Sent);
        let mut tries = 0;
        let result = loop {
            match attempt().await {
                Err(e) if e.retryable && tries < RETRIES_MAX => {
                    self.recorder.event(region, Event::Retry);
                    tokio::time::sleep(RETRY_BACKOFF * 2u32.pow(tries)).await;
                    tries += 1;
                }
                other => break other,
            }
        };
        drop(permit);
        if let Err(e) = &result
            && !e.retryable
            && !EXPECTED_REFUSALS.contains(&e.reason.as_str())
        {
            let mut failed = self
                .failed_not_retryable
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if failed.len() < OUTCOMES_MAX || failed.contains_key(&e.reason) {
                *failed.entry(e.reason.clone()).or_insert(0) += 1;
            }
        }
        let answered_at = Instant::now();
        let outcome = match &result {
            Ok(_) => OUTCOME_OK,
            Err(e) => e.reason.as_str(),
        };
        self.recorder.answer(
            region,
            op,
            outcome,
            answered_at.saturating_duration_since(intended),
        );
        Sent::Answered {
            result,
            sent_at,
            answered_at,
        }
    }

    /// Files an acknowledged reservation's fate (with `check_acknowledged`).
    fn file(&self, region: usize, reservation_id: &str, fate: Fate) {
        if let Some(ledger) = &self.acknowledged {
            ledger.file(region, reservation_id, fate);
        }
    }

    fn book(&self, sku: usize) -> Option<&SkuBook> {
        self.books.get(sku)
    }

    fn add_held(&self, lines: &[(usize, u64)], sign: i64) {
        for (sku, qty) in lines {
            if let Some(b) = self.book(*sku) {
                b.held.fetch_add(sign * *qty as i64, Ordering::Relaxed);
            }
        }
    }

    /// Stops counting a hold's units at `hold_ends`: files it with the
    /// shared expiry, so the session ends now; when that refuses (full),
    /// waits it out here as sessions did before.
    async fn forget_hold_at(&self, hold_ends: Instant, lines: &[(usize, u64)]) {
        if self.expiry.file(hold_ends, lines).is_err() {
            self.expiry_refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep_until(hold_ends).await;
            self.add_held(lines, -1);
        }
    }
}

/// One session: reserve, then (after the think time) confirm or release, or
/// nothing (abandoned: the tester forgets the hold when its time is up,
/// through the shared expiry; the session ends at once).
async fn session(
    ctx: Arc<Ctx>,
    region: usize,
    plan: SessionPlan,
    intended: Instant,
    answered: Option<oneshot::Sender<()>>,
) {
    let lines: Vec<(usize, u64)> = plan.lines.iter().map(|l| (l.sku, l.qty)).collect();
    let wire: Vec<(String, u64)> = lines
        .iter()
        .filter_map(|(i, q)| ctx.catalog.skus.get(*i).map(|s| (s.sku.clone(), *q)))
        .collect();
    if plan.kind == SessionKind::Confirm {
        for (sku, qty) in &lines {
            if let Some(b) = ctx.book(*sku) {
                b.demand.fetch_add(*qty, Ordering::Relaxed);
            }
        }
    }
    let stock_existed = lines
        .iter()
        .all(|(sku, qty)| ctx.book(*sku).is_some_and(|b| b.remaining() >= *qty as i64));
    for (sku, qty) in &lines {
        if let Some(b) = ctx.book(*sku) {
            b.pending.fetch_add(*qty as i64, Ordering::Relaxed);
        }
    }
    let request_id = ctx.fresh_request_id(region);
    let ttl_ms = ctx.scenario.sessions.hold_ttl_ms;
    let max_wait_ms = ctx.scenario.sessions.reserve_max_wait_ms;
    let target = &ctx.target;
    let sent = ctx
        .send(region, Op::Reserve, intended, || {
            target.reserve(region, &request_id, &wire, ttl_ms, max_wait_ms)
        })
        .await;
    if let Some(tx) = answered {
        let _ = tx.send(());
    }
    for (sku, qty) in &lines {
        if let Some(b) = ctx.book(*sku) {
            b.pending.fetch_sub(*qty as i64, Ordering::Relaxed);
        }
    }
    let Sent::Answered {
        result,
        sent_at,
        answered_at,
    } = sent
    else {
        return;
    };
    let reservation_id = match result {
        Ok(id) => {
            let local = max_wait_ms == 0
                || answered_at.saturating_duration_since(sent_at)
                    <= Duration::from_millis(ctx.scenario.sessions.local_threshold_ms);
            if ctx.target.has_local_tokens() {
                ctx.recorder
                    .event(region, if local { Event::LocalHit } else { Event::RemoteHit });
            }
            ctx.add_held(&lines, 1);
            id
        }
        Err(e) => {
            if e.reason == reason::INSUFFICIENT_STOCK {
                let event = match stock_existed {
                    true if ctx.target.has_local_tokens() => Some(Event::LocalMiss),
                    true => None,
                    false => Some(Event::SoldOut),
                };
                if let Some(event) = event {
                    ctx.recorder.event(region, event);
                }
            }
            return;
        }
    };
    // When the tester stops counting a hold that runs out: its hold time
    // after the answer, plus the time a server takes to notice.
    let hold_ends = answered_at + Duration::from_millis(ttl_ms) + EXPIRY_GRACE;
    let follow_up = answered_at + Duration::from_millis(plan.think_ms);
    match plan.kind {
        SessionKind::Abandon => {
            ctx.file(region, &reservation_id, Fate::Held);
            ctx.forget_hold_at(hold_ends, &lines).await
        }
        SessionKind::Confirm => {
            tokio::time::sleep_until(follow_up).await;
            let order_id = format!("o-{request_id}");
            let sent = ctx
                .send(region, Op::Confirm, follow_up, || {
                    target.confirm(region, &reservation_id, &order_id)
                })
                .await;
            match sent {
                Sent::Answered { result: Ok(()), .. } => {
                    ctx.file(region, &reservation_id, Fate::Confirmed);
                    for (sku, qty) in &lines {
                        if let Some(b) = ctx.book(*sku) {
                            b.confirmed.fetch_add(*qty, Ordering::Relaxed);
                        }
                    }
                    ctx.add_held(&lines, -1);
                }
                Sent::Answered { result: Err(e), .. } => {
                    let fate = if e.retryable { Fate::Unknown } else { Fate::Held };
                    ctx.file(region, &reservation_id, fate);
                    if e.retryable {
                        for (sku, qty) in &lines {
                            if let Some(b) = ctx.book(*sku) {
                                b.unknown.fetch_add(*qty, Ordering::Relaxed);
                            }
                        }
                    }
                    // Refused (expired, ...) or unknown: the units come back
                    // when the server expires the hold, if it has not yet.
                    ctx.forget_hold_at(hold_ends, &lines).await;
                }
                Sent::Dropped => {
                    ctx.file(region, &reservation_id, Fate::Held);
                    ctx.forget_hold_at(hold_ends, &lines).await
                }
            }
        }
        SessionKind::Release => {
            tokio::time::sleep_until(follow_up).await;
            let sent = ctx
                .send(region, Op::Release, follow_up, || {
                    target.release(region, &reservation_id)
                })
                .await;
            match sent {
                Sent::Dropped => {
                    ctx.file(region, &reservation_id, Fate::Held);
                    ctx.forget_hold_at(hold_ends, &lines).await
                }
                Sent::Answered { result, .. } => {
                    let fate = match result {
                        Ok(()) => Fate::Released,
                        Err(e) if e.retryable => Fate::Unknown,
                        Err(_) => Fate::Held,
                    };
                    ctx.file(region, &reservation_id, fate);
                    ctx.add_held(&lines, -1)
                }
            }
        }
    }
}

/// Decrements a region's live-session count when a session ends, however.
struct LiveGuard(Arc<Ctx>, usize);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Some(l) = self.0.live.get(self.1) {
            l.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One region's generator: spawns sessions at their arrival times until the
/// schedule ends or `stop_rx` says stop; returns the sessions still running.
async fn generate(
    ctx: Arc<Ctx>,
    region: usize,
    seed: u64,
    mut stop_rx: watch::Receiver<bool>,
) -> JoinSet<()> {
    let Some(name) = ctx.scenario.regions.get(region).cloned() else {
        return JoinSet::new();
    };
    let mut schedule = ctx.scenario.schedule(&name);
    let mut arrivals = Rng::stream(seed, 2 * region as u64);
    let mut carts = Rng::stream(seed, 2 * region as u64 + 1);
    let mix = SessionMix::new(&ctx.scenario);
    let start = ctx.recorder.start();
    let mut sessions = JoinSet::new();
    let mut sent = 0u64;
    while sent < SESSIONS_PER_REGION_MAX {
        let Some(t_s) = schedule.next(&mut arrivals) else {
            break;
        };
        let plan = mix.session(&ctx.catalog, &mut carts);
        let intended = start + Duration::from_secs_f64(t_s);
        if intended > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(intended) => {}
                _ = stop_rx.changed() => break,
            }
        }
        if *stop_rx.borrow() {
            break;
        }
        while sessions.try_join_next().is_some() {}
        sent += 1;
        ctx.recorder.event(region, Event::Arrival);
        let Some(live) = ctx.live.get(region) else { break };
        if live.load(Ordering::Relaxed) >= SESSIONS_LIVE_MAX {
            ctx.recorder.event(region, Event::DroppedSession);
            continue;
        }
        live.fetch_add(1, Ordering::Relaxed);
        let guard = LiveGuard(ctx.clone(), region);
        let ctx = ctx.clone();
        sessions.spawn(async move {
            let _guard = guard;
            session(ctx, region, plan, intended, None).await;
        });
    }
    sessions
}

/// One region's closed-loop clients (`clients_per_region` > 0): each starts
/// a session, waits for its reserve's answer, and starts the next, until the
/// scenario's duration has passed. A session's later steps (confirm,
/// release) run on their own. Latency is then service time: the intended
/// send time is when the client sends.
async fn closed_loop(
    ctx: Arc<Ctx>,
    region: usize,
    seed: u64,
    mut stop_rx: watch::Receiver<bool>,
) -> JoinSet<()> {
    let clients = ctx.scenario.clients_per_region;
    let end = ctx.recorder.start() + Duration::from_secs_f64(ctx.scenario.duration_s);
    let mix = Arc::new(SessionMix::new(&ctx.scenario));
    let sessions = Arc::new(std::sync::Mutex::new(JoinSet::new()));
    let mut workers = JoinSet::new();
    for client in 0..clients {
        let (ctx, mix, sessions) = (ctx.clone(), mix.clone(), sessions.clone());
        let mut stop_rx = stop_rx.clone();
        let mut carts = Rng::stream(seed, CLOSED_LOOP_STREAMS + (region * clients + client) as u64);
        workers.spawn(async move {
            let mut sent = 0u64;
            while Instant::now() < end && !*stop_rx.borrow() && sent < SESSIONS_PER_REGION_MAX {
                sent += 1;
                let plan = mix.session(&ctx.catalog, &mut carts);
                ctx.recorder.event(region, Event::Arrival);
                let (tx, rx) = oneshot::channel();
                {
                    let mut set = sessions.lock().unwrap_or_else(|e| e.into_inner());
                    while set.try_join_next().is_some() {}
                    set.spawn(session(ctx.clone(), region, plan, Instant::now(), Some(tx)));
                }
                tokio::select! {
                    _ = rx => {}
                    _ = stop_rx.changed() => break,
                }
            }
        });
    }
    tokio::select! {
        _ = async { while workers.join_next().await.is_some() {} } => {}
        _ = async { stop_rx.wait_for(|s| *s).await.is_ok() } => {
            workers.abort_all();
            while workers.join_next().await.is_some() {}
        }
    }
    let mut set = sessions.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *set)
}

/// Prints one progress line per second to stderr until `stop_rx` fires.
async fn progress(ctx: Arc<Ctx>, total_s: f64, mut stop_rx: watch::Receiver<bool>, print: bool) {
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop_rx.changed() => return,
            _ = tick.tick() => {}
        }
        ctx.recorder.tick();
        if !print {
            continue;
        }
        let elapsed = ctx.recorder.start().elapsed().as_secs_f64();
        let mut parts = Vec::new();
        for (i, name) in ctx.scenario.regions.iter().enumerate() {
            let row = ctx.recorder.last_second(i).unwrap_or_default();
            let errors: u64 = row.errors.values().sum();
            let c = ctx.recorder.counters(i);
            parts.push(format!(
                "{name} {}/s p99 {:.1}ms err {errors} late {} drop {} live {}",
                row.arrivals,
                row.reserve_p99_us as f64 / 1000.0,
                c.late,
                c.dropped_late + c.dropped_sessions,
                ctx.live.get(i).map_or(0, |l| l.load(Ordering::Relaxed)),
            ));
        }
        let phase = if elapsed > total_s { " draining" } else { "" };
        eprintln!(
            "[{elapsed:>5.0}s/{total_s:.0}s{phase}] {} | holds waiting to expire {}",
            parts.join(" | "),
            ctx.expiry.pending_lines()
        );
    }
}

/// Runs the partition windows against the target's control API, healing at
/// each window's end; returns what happened.
async fn control(ctx: Arc<Ctx>, mut stop_rx: watch::Receiver<bool>) -> Vec<Mark> {
    let start = ctx.recorder.start();
    let mut marks = Vec::new();
    let mut windows = ctx.scenario.windows_s();
    windows.sort_by(|a, b| a.2.total_cmp(&b.2));
    for (kind, region, start_s, end_s, factor) in windows {
        let mut mark = Mark {
            kind,
            region: region.clone(),
            start_s,
            end_s,
            rate_factor: factor,
            note: String::new(),
            applied: false,
        };
        if kind == WindowKind::Spike {
            mark.note = format!("{factor}x arrivals");
            mark.applied = true;
            marks.push(mark);
            continue;
        }
        let Some(region) = region else { continue };
        if !ctx.target.can_partition() {
            mark.note = "skipped: this target has no links to cut".into();
            marks.push(mark);
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(start + Duration::from_secs_f64(start_s)) => {}
            _ = stop_rx.changed() => { mark.note = "not run: stopped early".into(); marks.push(mark); break; }
        }
        mark.start_s = start.elapsed().as_secs_f64();
        match ctx.target.partition(&region).await {
            Ok(()) => {
                mark.note = format!("{region} cut off");
                mark.applied = true;
            }
            Err(e) => mark.note = format!("partition failed: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep_until(start + Duration::from_secs_f64(end_s)) => {}
            _ = stop_rx.changed() => {}
        }
        mark.end_s = start.elapsed().as_secs_f64();
        if let Err(e) = ctx.target.heal().await {
            mark.note.push_str(&format!("; heal failed: {e}"));
        }
        marks.push(mark);
    }
    marks
}

/// Samples stranded tokens once a second (Reservoir) until `stop_rx` fires.
async fn sample_stranded(ctx: Arc<Ctx>, mut stop_rx: watch::Receiver<bool>) -> Vec<(u64, u64)> {
    let mut samples = Vec::new();
    if !ctx.target.can_partition() {
        return samples;
    }
    let mut tick = tokio::time::interval(STRANDED_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while samples.len() < STRANDED_SAMPLES_MAX {
        tokio::select! {
            _ = stop_rx.changed() => break,
            _ = tick.tick() => {}
        }
        let t = ctx.recorder.start().elapsed().as_secs();
        if let Some(n) = ctx.target.stranded(&ctx.catalog).await {
            samples.push((t, n));
        }
    }
    samples
}

/// What a run needs besides the scenario.
pub struct RunOptions {
    /// The scenario (overrides already applied).
    pub scenario: Scenario,
    /// The connected target.
    pub target: Target,
    /// The target's name for the report.
    pub target_name: String,
    /// The seed of every random draw.
    pub seed: u64,
    /// Print the per-second progress line to stderr.
    pub progress: bool,
    /// Ends the load early when it turns true (e.g. on Ctrl-C); the drain,
    /// heal and reconciliation still run.
    pub stop_rx: Option<watch::Receiver<bool>>,
    /// File every acknowledged reservation and read each back after the
    /// run (Reservoir; see [`crate::acknowledged`]).
    pub check_acknowledged: bool,
}

/// Runs the whole thing: stock, load, drain, reconcile. The target is not
/// shut down here (the caller owns it).
pub async fn run(options: RunOptions) -> Result<RunOutput, TargetError> {
    let RunOptions {
        scenario,
        target,
        target_name,
        seed,
        progress: print_progress,
        stop_rx: external_stop_rx,
        check_acknowledged,
    } = options;
    scenario.validate().map_err(TargetError::Setup)?;
    let prefix = run_prefix(seed);
    let catalog = Catalog::new(&scenario, &prefix);
    let mut notes = Vec::new();
    if let Some(warning) = target.stock(&catalog).await? {
        eprintln!("warning: {warning}");
        notes.push(warning);
    }
    let books = catalog
        .skus
        .iter()
        .map(|s| SkuBook {
            stocked: s.stock,
            ..SkuBook::default()
        })
        .collect();
    let regions = scenario.regions.len();
    let start = Instant::now();
    let started_unix_ms = unix_ms();
    let ctx = Arc::new(Ctx {
        target: target.clone(),
        recorder: Recorder::new(regions, start),
        catalog,
        books,
        inflight: (0..regions)
            .map(|_| Semaphore::new(scenario.inflight_max))
            .collect(),
        live: (0..regions).map(|_| AtomicUsize::new(0)).collect(),
        expiry: HoldExpiry::new(start, HOLD_LINES_PENDING_MAX),
        expiry_refused: AtomicU64::new(0),
        request_prefix: prefix,
        request_seq: AtomicU64::new(0),
        scenario: scenario.clone(),
        acknowledged: check_acknowledged.then(acknowledged::Ledger::default),
        failed_not_retryable: Mutex::new(BTreeMap::new()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (bg_stop_tx, bg_stop_rx) = watch::channel(false);
    let total_s = scenario.duration_s;
    let progress_task = tokio::spawn(progress(ctx.clone(), total_s, bg_stop_rx.clone(), print_progress));
    let control_task = tokio::spawn(control(ctx.clone(), stop_rx.clone()));
    let stranded_task = tokio::spawn(sample_stranded(ctx.clone(), bg_stop_rx.clone()));
    let expiry_task = {
        let (ctx, stop_rx) = (ctx.clone(), bg_stop_rx.clone());
        tokio::spawn(async move { expiry::tick(&ctx.expiry, &ctx.books, stop_rx).await })
    };
    let server_nodes = target.server_nodes();
    let servers_task = (!server_nodes.is_empty())
        .then(|| tokio::spawn(servers::sample(server_nodes, start, bg_stop_rx.clone())));
    let mut generators = JoinSet::new();
    for region in 0..regions {
        if scenario.clients_per_region > 0 {
            generators.spawn(closed_loop(ctx.clone(), region, seed, stop_rx.clone()));
        } else {
            generators.spawn(generate(ctx.clone(), region, seed, stop_rx.clone()));
        }
    }
    let forward_stop = external_stop_rx.map(|mut external| {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            if external.wait_for(|s| *s).await.is_ok() {
                let _ = stop_tx.send(true);
            }
        })
    });
    let mut sessions = Vec::new();
    while let Some(done) = generators.join_next().await {
        match done {
            Ok(set) => sessions.push(set),
            Err(e) => notes.push(format!("a generator failed: {e}")),
        }
    }
    let load_s = start.elapsed().as_secs_f64();
    let s = &scenario.sessions;
    let drain =
        Duration::from_millis(2 * s.think_ms + s.hold_ttl_ms) + 2 * REQUEST_LIFETIME_MAX + DRAIN_SLACK;
    let drain_deadline = Instant::now() + drain;
    let mut aborted = 0u64;
    for mut set in sessions {
        loop {
            match tokio::time::timeout_at(drain_deadline, set.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    aborted += set.len() as u64;
                    set.abort_all();
                    while set.join_next().await.is_some() {}
                    break;
                }
            }
        }
    }
    if aborted > 0 {
        notes.push(format!(
            "{aborted} sessions were still running after the drain and were aborted"
        ));
    }
    let refused = ctx.expiry_refused.load(Ordering::Relaxed);
    if refused > 0 {
        notes.push(format!(
            "{refused} holds found the tester's expiry set full ({HOLD_LINES_PENDING_MAX} lines) \
             and were waited out by their sessions"
        ));
    }
    if scenario.reconcile_wait_for_holds {
        // The last holds end within the drain's bound (it includes the hold
        // time); waiting here keeps the timeline and the server samples
        // running while they do.
        while ctx.expiry.pending_lines() > 0 && Instant::now() < drain_deadline {
            tokio::time::sleep(expiry::EXPIRY_TICK).await;
        }
        let left = ctx.expiry.pending_lines();
        if left > 0 {
            notes.push(format!(
                "{left} hold lines had not reached their end by the drain deadline"
            ));
        }
    } else {
        let units = ctx.expiry.pending_units();
        if units > 0 {
            notes.push(format!(
                "{units} units were in holds the tester still counted live when the load ended \
                 (not waited for: reconcile_wait_for_holds = false)"
            ));
        }
    }
    let _ = stop_tx.send(true);
    let marks = control_task.await.unwrap_or_default();
    if marks.iter().any(|m| m.kind == WindowKind::Partition) && target.can_partition() {
        // The control task heals after each window; heal once more in case
        // it was stopped between a cut and its heal.
        let _ = target.heal().await;
    }
    let _ = bg_stop_tx.send(true);
    let stranded = stranded_task.await.unwrap_or_default();
    let _ = expiry_task.await;
    let servers = match servers_task {
        Some(task) => task.await.ok(),
        None => None,
    };
    let _ = progress_task.await;
    if let Some(task) = forward_stop {
        task.abort();
    }

    let expected: BTreeMap<String, (u64, u64)> = ctx
        .catalog
        .skus
        .iter()
        .zip(&ctx.books)
        .map(|(s, b)| {
            (
                s.sku.clone(),
                (
                    b.confirmed.load(Ordering::Relaxed),
                    b.unknown.load(Ordering::Relaxed),
                ),
            )
        })
        .collect();
    let wait_for_holds = scenario.reconcile_wait_for_holds;
    let hold_wait = if wait_for_holds {
        Duration::from_millis(s.hold_ttl_ms)
    } else {
        Duration::ZERO
    };
    let deadline = Instant::now() + RECONCILE_DEADLINE + hold_wait;
    let server = target
        .reconcile(&ctx.catalog, &expected, deadline, wait_for_holds)
        .await
        .map_err(|e| e.to_string());
    let acknowledged = match &ctx.acknowledged {
        Some(ledger) => {
            if print_progress {
                eprintln!("reading every acknowledged reservation back");
            }
            ledger.check(&ctx.target).await
        }
        None => None,
    };
    let failed_not_retryable =
        std::mem::take(&mut *ctx.failed_not_retryable.lock().unwrap_or_else(|p| p.into_inner()));

    let ctx = Arc::try_unwrap(ctx).map_err(|_| {
        TargetError::Setup("internal: a task still holds the run's state after the drain".into())
    })?;
    Ok(RunOutput {
        scenario,
        target: target_name,
        seed,
        started_unix_ms,
        load_s,
        catalog: ctx.catalog,
        books: ctx.books,
        stats: ctx.recorder.finish(),
        marks,
        stranded,
        servers,
        server,
        aborted_sessions: aborted,
        notes,
        local_tokens: ctx.target.has_local_tokens(),
        acknowledged,
        failed_not_retryable,
    })
}
