//! reservoir-sim: the whole three-region cluster in one process, on
//! simulated time, deterministic from a `u64` seed.
//!
//! One seed's run ([`run_seed`]): nine nodes built from the real parts
//! ([`cluster`]: region groups, the ledger group and its host — rebalancer,
//! reconciler, audit —, the expiry and gossip loops, the Inventory and
//! Control services; openraft itself) over a simulated disk, network and
//! clock; clients that reserve, confirm, release, extend, read and resend
//! ([`workload`]); a fault schedule drawn from the seed ([`faults`]); the
//! checkers ([`check`]) on every answer, every 250 ms of simulated time,
//! and at the end, after the faults heal, with liveness bounds; a panic in
//! any task of the simulation is a violation too.
//!
//! Determinism: everything runs on one thread, in one current-thread tokio
//! runtime with its clock paused (time advances only when every task
//! waits) and its own random choices seeded (`--cfg tokio_unstable`,
//! `.cargo/config.toml`); openraft's election timeouts and the nodes'
//! reservation nonces come from [`reservoir_raft::runtime`]'s seeded
//! stream; the network, the fault schedule and the clients draw from
//! their own [`rng::Rng`] streams of the seed. Work that would go to
//! another thread (snapshot writes, `spawn_blocking`) runs inline. The
//! trace's hash ([`trace::Trace::hash`]) is compared across two runs of a
//! seed by the tests.
//!
//! Injected bugs ([`reservoir_tokens::inject::Bug`]) are switched on for
//! the simulating thread only ([`Options::bug`]).

pub mod check;
pub mod cluster;
pub mod faults;
pub mod net;
pub mod rng;
pub mod trace;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reservoir_node::server::LEDGER_GROUP;
use reservoir_raft::NodeId;
use reservoir_tokens::inject::{self, Bug};
use reservoir_tokens::{LedgerCommand, LedgerOp};
use tokio::time::Instant;

use crate::check::History;
use crate::cluster::{Cluster, REGIONS, node_ids, nodes_of};
use crate::faults::{FAULTS_UNTIL_MS, Fault, Scheduled, Target};
use crate::net::Weather;
use crate::rng::Rng;
use crate::trace::Trace;
use crate::workload::{Client, SKUS, STOCK_PER_SKU, Shared};

/// How long after the faults heal every confirmed sale must be settled,
/// every group led and the books balanced (simulated).
pub const LIVENESS_MS: u64 = 30_000;
/// How often the state checkers run (simulated).
pub const CHECK_EVERY_MS: u64 = 250;
/// How long the cluster may take to elect its first leaders.
pub const STARTUP_MS: u64 = 10_000;

/// How to run a seed.
#[derive(Clone, Debug)]
pub struct Options {
    /// The injected bug, if any.
    pub bug: Option<Bug>,
    /// Faults of the schedule to leave out, by position (shrinking).
    pub skip: BTreeSet<usize>,
    /// Clients per region.
    pub clients_per_region: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bug: None,
            skip: BTreeSet::new(),
            clients_per_region: 3,
        }
    }
}

/// What one seed's run came to.
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Every violation found (empty: the seed passed).
    pub violations: Vec<String>,
    /// The trace.
    pub trace: Trace,
    /// The fault schedule (before `skip`).
    pub faults: Vec<Scheduled>,
    /// Acknowledged reserves.
    pub acked: u64,
    /// Current reads checked.
    pub reads: u64,
    /// Simulated time the run took.
    pub simulated: Duration,
}

impl SeedReport {
    /// True when nothing was found.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

thread_local! {
    /// Panics on this (simulating) thread not yet reported.
    static PANICS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records panics on simulating threads instead of printing them: a task
/// of a node that panics is a finding (tokio drops the task and the run
/// goes on), reported as a violation by [`take_panics`]' callers. Panics
/// on other threads go to the hook that was there before.
fn catch_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if reservoir_raft::runtime::simulated() {
                let message = info.to_string().replace('\n', " ");
                PANICS.with(|p| p.borrow_mut().push(message));
            } else {
                before(info);
            }
        }));
    });
}

/// The panics on this thread since the last call.
fn take_panics() -> Vec<String> {
    PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()))
}

/// Runs seed `seed` on this thread.
pub fn run_seed(seed: u64, options: &Options) -> SeedReport {
    catch_panics();
    take_panics();
    reservoir_raft::runtime::simulate(Some(seed));
    inject::set(options.bug);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .build()
        .expect("a current-thread runtime");
    let report = runtime.block_on(simulate(seed, options));
    drop(runtime);
    inject::set(None);
    reservoir_raft::runtime::simulate(None);
    report
}

/// Milliseconds since `start`.
fn ms(start: Instant) -> u64 {
    Instant::now().duration_since(start).as_millis() as u64
}

/// The node a fault hits now, if any.
fn resolve(cluster: &Cluster, target: &Target) -> Option<NodeId> {
    match target {
        Target::Node(n) => Some(*n),
        Target::LeaderOf(group) => cluster.directory.leader_of(group),
    }
}

/// What the fault driver does at a moment.
enum Action {
    Start(usize),
    /// Undo fault `.0`, which hit node `.1` (if any).
    End(usize, Option<NodeId>),
}

/// Every directed link between `a` and the nodes outside `a`.
fn links_around(a: &[NodeId]) -> Vec<(NodeId, NodeId)> {
    let mut links = Vec::new();
    for x in a {
        for y in node_ids() {
            if !a.contains(&y) {
                links.push((*x, y));
                links.push((y, *x));
            }
        }
    }
    links
}

async fn simulate(seed: u64, options: &Options) -> SeedReport {
    let start = Instant::now();
    let trace = Trace::default();
    let faults = faults::schedule(seed);
    trace.event(0, format!("seed {seed}, bug {:?}", options.bug.map(Bug::name)));
    for (i, f) in faults.iter().enumerate() {
        let skipped = if options.skip.contains(&i) {
            " (skipped)"
        } else {
            ""
        };
        trace.event(
            0,
            format!(
                "fault {i} at {} ms for {} ms: {}{skipped}",
                f.at_ms, f.for_ms, f.fault
            ),
        );
    }
    let stock: BTreeMap<String, u64> = SKUS.iter().map(|s| (s.to_string(), STOCK_PER_SKU)).collect();
    let history = History::new(stock.clone(), trace.clone());
    let mut cluster = Cluster::new(seed, trace.clone());
    let report = |history: &History, trace: &Trace| SeedReport {
        seed,
        violations: history.violations(),
        trace: trace.clone(),
        faults: faults.clone(),
        acked: history.counts().0,
        reads: history.counts().1,
        simulated: Instant::now().duration_since(start),
    };

    // Start every node; wait for the first leaders; stock the ledger.
    for id in node_ids() {
        if let Err(e) = cluster.start(id).await {
            history.violation(ms(start), format!("startup: {e}"));
            return report(&history, &trace);
        }
    }
    let groups: Vec<&str> = REGIONS.iter().copied().chain([LEDGER_GROUP]).collect();
    let deadline = start + Duration::from_millis(STARTUP_MS);
    while groups.iter().any(|g| cluster.directory.leader_of(g).is_none()) {
        if Instant::now() >= deadline {
            history.violation(ms(start), "startup: not every group elected a leader".into());
            return report(&history, &trace);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for sku in SKUS {
        let mut stocked = false;
        while !stocked && Instant::now() < deadline {
            if let Some(leader) = cluster.directory.leader_of(LEDGER_GROUP)
                && let Some(host) = cluster.directory.get(leader).and_then(|h| h.host)
            {
                let cmd = LedgerCommand {
                    now_ms: host.now_ms(),
                    op: LedgerOp::AdjustStock {
                        request_id: format!("stock-{sku}"),
                        sku: sku.to_string(),
                        delta: STOCK_PER_SKU as i64,
                    },
                };
                stocked = matches!(host.group().propose(cmd).await, Ok(Ok(_)));
            }
            if !stocked {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if !stocked {
            history.violation(ms(start), format!("startup: {sku} could not be stocked"));
            return report(&history, &trace);
        }
    }
    trace.event(ms(start), "stocked; clients start");

    // Clients and the state checker.
    let shared = Shared {
        directory: cluster.directory.clone(),
        history: history.clone(),
        trace: trace.clone(),
        start,
    };
    let mut clients = Vec::new();
    for (r, region) in REGIONS.iter().enumerate() {
        for c in 0..options.clients_per_region {
            let id = r as u64 * 100 + c;
            let client = Client::new(id, region, Rng::new(seed, 100 + id), shared.clone());
            clients.push(tokio::spawn(client.run(FAULTS_UNTIL_MS)));
        }
    }
    let checker = {
        let directory = cluster.directory.clone();
        let history = history.clone();
        let stock = stock.clone();
        tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            loop {
                tokio::time::sleep(Duration::from_millis(CHECK_EVERY_MS)).await;
                for problem in check::check_state(&directory, &stock) {
                    if seen.insert(problem.clone()) {
                        history.violation(ms(start), problem);
                    }
                }
                for panic in take_panics() {
                    history.violation(ms(start), format!("a task panicked: {panic}"));
                }
            }
        })
    };

    // The faults, in time order; each undone when its window ends.
    let mut events: BTreeMap<(u64, usize, u8), Action> = BTreeMap::new();
    for (i, f) in faults.iter().enumerate() {
        if !options.skip.contains(&i) {
            events.insert((f.at_ms, i, 0), Action::Start(i));
        }
    }
    while let Some(((at, i, _), action)) = events.pop_first() {
        if !history.violations().is_empty() {
            break;
        }
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        let f = &faults[i];
        let now = ms(start);
        match action {
            Action::Start(i) => {
                let hit = apply(&mut cluster, &f.fault, true, None).await;
                trace.event(
                    now,
                    format!(
                        "fault {i} starts: {}{}",
                        f.fault,
                        hit.map(|n| format!(" (n{n})")).unwrap_or_default()
                    ),
                );
                events.insert((f.at_ms + f.for_ms, i, 1), Action::End(i, hit));
            }
            Action::End(i, hit) => {
                apply(&mut cluster, &f.fault, false, hit).await;
                trace.event(now, format!("fault {i} ends"));
            }
        }
    }

    // Heal everything; the clients stop.
    tokio::time::sleep_until(start + Duration::from_millis(FAULTS_UNTIL_MS)).await;
    cluster.net.heal_all();
    cluster.net.set_weather(Weather::calm());
    for id in node_ids() {
        let node = &cluster.nodes[&id];
        node.disk.set_faults(Default::default());
        node.clock.set_offset(0);
    }
    for id in node_ids() {
        if !cluster.up().contains(&id)
            && let Err(e) = cluster.start(id).await
        {
            history.violation(ms(start), format!("restart after heal: {e}"));
        }
    }
    let healed = ms(start);
    trace.event(healed, "healed");
    for c in clients {
        let _ = c.await;
    }

    // Liveness: every group led, every confirmed sale settled, the books
    // balanced, within the bound.
    let deadline = start + Duration::from_millis(healed + LIVENESS_MS);
    while history.violations().is_empty() {
        let (regions, ledger, _) = check::newest_states(&cluster.directory);
        let unled: Vec<&str> = groups
            .iter()
            .copied()
            .filter(|g| cluster.directory.leader_of(g).is_none())
            .collect();
        let unsettled: Vec<String> = regions
            .iter()
            .filter(|(_, (_, s))| s.settled_up_to() < s.last_outbox_seq())
            .map(|(r, (_, s))| format!("{r} ({} sales)", s.last_outbox_seq() - s.settled_up_to()))
            .collect();
        let in_flight = ledger.as_ref().map_or(0, |(_, l)| l.transfers().len());
        let mut problems = check::check_state(&cluster.directory, &stock);
        if check::leader_states(&cluster.directory).is_none() {
            problems.push("no current leader with its whole log applied in some group".into());
        }
        if unled.is_empty()
            && unsettled.is_empty()
            && in_flight == 0
            && problems.is_empty()
            && regions.len() == 3
        {
            trace.event(ms(start), "settled and balanced");
            break;
        }
        let waiting_for = format!(
            "groups without a leader {unled:?}, unsettled {unsettled:?}, transfers in flight {in_flight}, problems {problems:?}"
        );
        if Instant::now() >= deadline {
            for (id, h) in cluster.directory.all() {
                let groups = [Some(h.region.status()), h.ledger.as_ref().map(|l| l.status())];
                for g in groups.into_iter().flatten() {
                    trace.event(
                        ms(start),
                        format!(
                            "n{id} {}: {:?} term {} leader {:?} applied {:?} log {:?} quorum ack {:?} ms ago",
                            g.group,
                            g.role,
                            g.term,
                            g.leader,
                            g.applied_index,
                            g.last_log_index,
                            g.millis_since_quorum_ack
                        ),
                    );
                }
            }
            history.violation(
                ms(start),
                format!("liveness: {LIVENESS_MS} ms after the faults healed: {waiting_for}"),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Every region reserves again; the ledger's own audit (over the
    // control plane) balances; every acknowledged reservation is there.
    if history.violations().is_empty() {
        for (r, region) in REGIONS.iter().enumerate() {
            let mut client = Client::new(
                900 + r as u64,
                region,
                Rng::new(seed, 900 + r as u64),
                shared.clone(),
            );
            let mut answered = false;
            while !answered && Instant::now() < deadline {
                answered = client.probe().await;
            }
            if !answered {
                history.violation(
                    ms(start),
                    format!("liveness: {region} does not answer reserves after the heal"),
                );
            }
        }
    }
    if history.violations().is_empty() {
        let mut audited = false;
        while !audited && Instant::now() < deadline {
            let host = cluster
                .directory
                .leader_of(LEDGER_GROUP)
                .and_then(|l| cluster.directory.get(l))
                .and_then(|h| h.host);
            if let Some(host) = host {
                match host.audit().await {
                    Ok(sheet) if sheet.balanced() => audited = true,
                    Ok(sheet) => {
                        history.violation(
                            ms(start),
                            format!("the ledger's audit does not balance: {sheet:?}"),
                        );
                        break;
                    }
                    Err(_) => {}
                }
            }
            if !audited {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        if !audited && history.violations().is_empty() {
            history.violation(
                ms(start),
                "liveness: the ledger's audit never answered after the heal".into(),
            );
        }
    }
    if history.violations().is_empty() {
        for problem in check::check_acknowledged(&cluster.directory, &history, true) {
            history.violation(ms(start), problem);
        }
    }
    checker.abort();
    for panic in take_panics() {
        history.violation(ms(start), format!("a task panicked: {panic}"));
    }
    let (acked, reads) = history.counts();
    let (_, ledger, _) = check::newest_states(&cluster.directory);
    let net = cluster.net.stats();
    trace.event(
        ms(start),
        format!(
            "end: {acked} reserves acknowledged, {reads} current reads checked, {} transfers, \
             {} messages ({} lost, {} duplicated)",
            ledger.map_or(0, |(_, l)| l.transfers_begun()),
            net.sent,
            net.lost,
            net.duplicated
        ),
    );
    report(&history, &trace)
}

/// Starts (`begin`) or ends fault `fault`; returns the node it hit.
async fn apply(cluster: &mut Cluster, fault: &Fault, begin: bool, hit: Option<NodeId>) -> Option<NodeId> {
    match fault {
        Fault::Crash { target, .. } | Fault::TornCrash { target, .. } => {
            if begin {
                let node = resolve(cluster, target)?;
                let torn = matches!(fault, Fault::TornCrash { .. });
                let disk = cluster.nodes[&node].disk.clone();
                let before = disk.faults();
                disk.set_faults(reservoir_raft::store::memory::DiskFaults {
                    torn_writes: torn,
                    ..before
                });
                let crashed = cluster.crash(node).await;
                disk.set_faults(before);
                crashed.then_some(node)
            } else {
                let node = hit?;
                let _ = cluster.start(node).await;
                None
            }
        }
        Fault::IsolateNode { target } => {
            let node = if begin { resolve(cluster, target)? } else { hit? };
            for (a, b) in links_around(&[node]) {
                if begin {
                    cluster.net.cut(a, b);
                } else {
                    cluster.net.heal(a, b);
                }
            }
            Some(node)
        }
        Fault::IsolateRegion { region } => {
            for (a, b) in links_around(&nodes_of(region)) {
                if begin {
                    cluster.net.cut(a, b);
                } else {
                    cluster.net.heal(a, b);
                }
            }
            None
        }
        Fault::OneWay { from, to } => {
            if begin {
                cluster.net.cut(*from, *to);
            } else {
                cluster.net.heal(*from, *to);
            }
            None
        }
        Fault::Weather(w) => {
            cluster.net.set_weather(if begin { *w } else { Weather::calm() });
            None
        }
        Fault::SlowDisk { target, fsync_ms } => {
            let node = if begin { resolve(cluster, target)? } else { hit? };
            let disk = &cluster.nodes[&node].disk;
            let mut faults = disk.faults();
            faults.fsync_delay = if begin {
                Duration::from_millis(*fsync_ms)
            } else {
                Duration::ZERO
            };
            disk.set_faults(faults);
            Some(node)
        }
        Fault::FullDisk { target } => {
            let node = if begin { resolve(cluster, target)? } else { hit? };
            let disk = cluster.nodes[&node].disk.clone();
            let mut faults = disk.faults();
            faults.full = begin;
            disk.set_faults(faults);
            if !begin {
                // Space is back: the operator restarts the node.
                cluster.crash(node).await;
                let _ = cluster.start(node).await;
            }
            Some(node)
        }
        Fault::Clock { node, offset_ms } => {
            cluster.nodes[node]
                .clock
                .set_offset(if begin { *offset_ms } else { 0 });
            Some(*node)
        }
    }
}
