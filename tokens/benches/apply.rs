//! Benchmarks of `RegionState::apply`: the state machine must never be the
//! bottleneck (target: at least 1,000,000 single-line reserves per second on
//! one core).
//!
//! Run: `cargo bench -p reservoir-tokens --bench apply`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use reservoir_tokens::{Line, RegionApplied, RegionCommand, RegionOp, RegionState, ReservationId};
use std::hint::black_box;
use std::time::{Duration, Instant};

const STOCK: i64 = 1_000_000_000;

fn stocked() -> RegionState {
    let mut s = RegionState::new("us-east");
    let op = RegionOp::AdjustStock {
        request_id: "seed".into(),
        sku: "hot-sku-1".into(),
        delta: STOCK,
    };
    s.apply(RegionCommand { now_ms: 1, op }).expect("seed stock");
    s
}

/// The owner of every reservation.
const OWNER: &str = "shop";

/// The `i`th proposer nonce: splitmix64, so ids are spread over the key
/// space like the random ones a leader draws (not in insertion order).
fn nonce(i: u64) -> u64 {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn reserve_cmd(i: u64, now_ms: u64, ttl_ms: u64) -> RegionCommand {
    RegionCommand {
        now_ms,
        op: RegionOp::Reserve {
            owner: OWNER.into(),
            request_id: format!("req-{i:012}"),
            lines: vec![Line::new("hot-sku-1", 1)],
            ttl_ms,
            allow_partial: false,
            nonce: nonce(i),
        },
    }
}

/// Applies `n` reserves to `state` and returns their ids.
fn fill(state: &mut RegionState, n: u64, ttl_ms: u64) -> Vec<ReservationId> {
    (0..n)
        .map(|i| match state.apply(reserve_cmd(i, 2, ttl_ms)) {
            Ok(RegionApplied::Reservation(r)) => r.id,
            other => panic!("reserve failed: {other:?}"),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("region_apply");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(4));

    // Commands are built outside the timed loop: the log hands apply a
    // decoded command, so building it is not the state machine's cost.
    g.bench_function("reserve_single_line", |b| {
        b.iter_custom(|iters| {
            let mut state = stocked();
            let cmds: Vec<RegionCommand> = (0..iters).map(|i| reserve_cmd(i, 2, 60_000)).collect();
            let start = Instant::now();
            for cmd in cmds {
                black_box(state.apply(cmd)).ok();
            }
            start.elapsed()
        })
    });

    g.bench_function("confirm", |b| {
        b.iter_custom(|iters| {
            let mut state = stocked();
            let ids = fill(&mut state, iters, 60_000);
            let cmds: Vec<RegionCommand> = ids
                .iter()
                .map(|&id| RegionCommand {
                    now_ms: 3,
                    op: RegionOp::Confirm {
                        id,
                        owner: OWNER.into(),
                        order_id: format!("order-{}", id.0),
                        lines: Vec::new(),
                    },
                })
                .collect();
            let start = Instant::now();
            for cmd in cmds {
                black_box(state.apply(cmd)).ok();
            }
            start.elapsed()
        })
    });

    g.bench_function("release", |b| {
        b.iter_custom(|iters| {
            let mut state = stocked();
            let ids = fill(&mut state, iters, 60_000);
            let cmds: Vec<RegionCommand> = ids
                .iter()
                .map(|&id| RegionCommand {
                    now_ms: 3,
                    op: RegionOp::Release {
                        id,
                        owner: OWNER.into(),
                    },
                })
                .collect();
            let start = Instant::now();
            for cmd in cmds {
                black_box(state.apply(cmd)).ok();
            }
            start.elapsed()
        })
    });

    // Time per expired hold: holds with a 1 ms TTL, swept by Expire commands
    // (each expires at most EXPIRE_PER_COMMAND_MAX).
    g.bench_function("expire_sweep_per_hold", |b| {
        b.iter_custom(|iters| {
            let mut state = stocked();
            fill(&mut state, iters, 1);
            let start = Instant::now();
            loop {
                match state.apply(RegionCommand {
                    now_ms: 10,
                    op: RegionOp::Expire,
                }) {
                    Ok(RegionApplied::Expired { more_due: true, .. }) => {}
                    Ok(RegionApplied::Expired { more_due: false, .. }) => break,
                    other => panic!("expire failed: {other:?}"),
                }
            }
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
