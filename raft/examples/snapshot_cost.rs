//! What one whole-state snapshot of a region costs: the copy taken under the
//! state lock (apply waits for it) and the encoding, for a region holding N
//! live reservations of two lines each over 200 SKUs (the shape of a load
//! test's state after a spike).
//!
//! Run: `cargo run --release -p reservoir-raft --example snapshot_cost -- 100000`

use std::time::Instant;

use reservoir_tokens::{Line, RegionCommand, RegionOp, RegionState};

/// SKUs in the catalog.
const SKUS: u64 = 200;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let sku = |k: u64| format!("lt1-000000-{:05}", k % SKUS);
    let mut state = RegionState::new("us-east");
    for k in 0..SKUS {
        let op = RegionOp::AdjustStock {
            request_id: format!("seed-{k}"),
            sku: sku(k),
            delta: 1_000_000,
        };
        state.apply(RegionCommand { now_ms: 1, op }).expect("stock");
    }
    for i in 0..n {
        let op = RegionOp::Reserve {
            request_id: format!("lt1-000000-eu-west-{i:09}"),
            lines: vec![Line::new(sku(i), 1), Line::new(sku(i + 7), 2)],
            ttl_ms: 3_000,
            allow_partial: false,
        };
        state
            .apply(RegionCommand {
                now_ms: 2 + i / 1_000,
                op,
            })
            .expect("reserve");
    }
    let started = Instant::now();
    let copy = state.clone();
    let cloned = started.elapsed();
    let started = Instant::now();
    let bytes = bincode::serialize(&copy).expect("encode");
    let encoded = started.elapsed();
    println!(
        "{n} reservations: copy {cloned:?}, encode {encoded:?}, {} bytes",
        bytes.len()
    );
}
