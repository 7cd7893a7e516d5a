//! What a proposal costs through a real three-node group in one process
//! (openraft, sled with real flushes in temp dirs, the in-process
//! `LocalNet`): C callers on the leader each propose one-unit reserves, one
//! at a time, for S seconds; the output is proposals per second and the
//! callers' latency (p50, p99). Used to measure what bounding every wait on
//! consensus (a timer per proposal and per batch) costs.
//!
//! Run: `cargo run --release -p reservoir-raft --example propose_cost -- 64 10`
//! (callers, seconds).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reservoir_raft::testing::LocalNet;
use reservoir_raft::{Group, GroupOptions, NodeStorage, Router, StorageOptions, Wire};
use reservoir_tokens::{Line, RegionCommand, RegionOp, RegionState};

const GROUP: &str = "us-east";
const SKU: &str = "sku-a";

fn command(op: RegionOp) -> RegionCommand {
    RegionCommand { now_ms: 1_000, op }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let callers: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);

    let net = LocalNet::new();
    let members: BTreeMap<u64, String> = (1..=3).map(|id| (id, format!("local-{id}"))).collect();
    let mut groups = Vec::new();
    let mut keep = Vec::new();
    for id in (1..=3u64).rev() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let storage = NodeStorage::open(&StorageOptions::new(dir.path())).expect("open sled");
        let stores = storage
            .open_group(GROUP, RegionState::new(GROUP))
            .expect("open group");
        let router = Router::new(id);
        net.attach(router.clone());
        let wire: Arc<dyn Wire> = net.wire();
        let options = GroupOptions::new(GROUP, id, members.clone());
        let group = Group::start(options, stores, wire, &router).await.expect("start");
        groups.push(Arc::new(group));
        keep.push((dir, storage, router));
    }
    let leader = loop {
        if let Some(g) = groups.iter().find(|g| g.is_leader()) {
            break g.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    leader
        .propose(command(RegionOp::AdjustStock {
            request_id: "stock".into(),
            sku: SKU.into(),
            delta: 1_000_000_000,
        }))
        .await
        .expect("stocked")
        .expect("stock accepted");

    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let leader = leader.clone();
            tokio::spawn(async move {
                let mut latencies_us = Vec::new();
                let mut i = 0u64;
                while Instant::now() < until {
                    let started = Instant::now();
                    let op = RegionOp::Reserve {
                        owner: "shop".into(),
                        request_id: format!("c{c}-{i}"),
                        lines: vec![Line::new(SKU, 1)],
                        ttl_ms: 0,
                        allow_partial: false,
                        nonce: (c << 40) | i,
                    };
                    leader
                        .propose(command(op))
                        .await
                        .expect("proposed")
                        .expect("reserved");
                    latencies_us.push(started.elapsed().as_micros() as u64);
                    i += 1;
                }
                latencies_us
            })
        })
        .collect();
    let started = Instant::now();
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await.expect("caller"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    let at = |q: f64| latencies_us[((latencies_us.len() as f64 - 1.0) * q) as usize];
    println!(
        "{callers} callers, {seconds} s: {} proposals, {:.0}/s, p50 {} us, p99 {} us",
        latencies_us.len(),
        latencies_us.len() as f64 / elapsed,
        at(0.5),
        at(0.99)
    );
    for g in &groups {
        g.shutdown().await;
    }
}
