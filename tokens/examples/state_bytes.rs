//! Bytes of memory one item of a region's state costs: a live hold, an
//! ended (released) reservation, and a confirmed sale waiting in the outbox,
//! each with the request id that made it (36 bytes, a UUID's length), and a
//! remembered stock-adjustment id (36 bytes; ledger and standalone region
//! keep the same memory), over a
//! catalog of 1,000 SKUs, all of one owner, with ids spread over the key
//! space as a leader's random nonces spread them. Counted by a counting
//! global allocator: the heap bytes the state holds after N items, minus
//! before, over N.
//!
//! Run: `cargo run --release -p reservoir-tokens --example state_bytes -- 1000000`
#![allow(unsafe_code)] // a counting global allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use reservoir_tokens::{
    LedgerCommand, LedgerOp, LedgerState, Line, RegionCommand, RegionOp, RegionState, ReservationId,
};

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed straight to the system allocator; the
// counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// SKUs in the catalog.
const SKUS: u64 = 1_000;
/// Logical time of every command (nothing expires or is pruned).
const NOW_MS: u64 = 1_700_000_000_000;

/// The owner of every reservation.
const OWNER: &str = "shop";

/// The `i`th reservation's nonce, and so its id: splitmix64, a bijection, so
/// distinct `i` give distinct ids spread like random ones.
fn nonce(i: u64) -> u64 {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn sku(k: u64) -> String {
    format!("lt1-000000-{:05}", k % SKUS)
}

fn apply(state: &mut RegionState, op: RegionOp) {
    state
        .apply(RegionCommand { now_ms: NOW_MS, op })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A stocked region.
fn stocked() -> RegionState {
    let mut state = RegionState::new("us-east");
    for k in 0..SKUS {
        let op = RegionOp::AdjustStock {
            request_id: format!("seed-{k:032}"),
            sku: sku(k),
            delta: 100_000_000,
        };
        apply(&mut state, op);
    }
    state
}

/// Reserves `n` one-line holds with 36-byte request ids.
fn reserve(state: &mut RegionState, n: u64) {
    for i in 0..n {
        let op = RegionOp::Reserve {
            owner: OWNER.into(),
            request_id: format!("{i:08x}-0000-4000-8000-000000000000"),
            lines: vec![Line::new(sku(i * 7919), 1)],
            ttl_ms: 0,
            allow_partial: false,
            nonce: nonce(i),
        };
        apply(state, op);
    }
}

fn bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);

    let mut state = stocked();
    let base = bytes();
    reserve(&mut state, n);
    let held = bytes();
    println!(
        "live hold:             {:6.0} bytes each ({n} holds)",
        (held - base) as f64 / n as f64
    );
    // Each id is its nonce (a nonce of 0 would have been probed, and its
    // release would panic here as not found).
    for i in 0..n {
        apply(
            &mut state,
            RegionOp::Release {
                id: ReservationId(nonce(i)),
                owner: OWNER.into(),
            },
        );
    }
    let ended = bytes();
    println!(
        "ended reservation:     {:6.0} bytes each (the same holds, released)",
        (ended - base) as f64 / n as f64
    );
    drop(state);

    let mut state = stocked();
    let base = bytes();
    reserve(&mut state, n);
    for i in 0..n {
        let op = RegionOp::Confirm {
            id: ReservationId(nonce(i)),
            owner: OWNER.into(),
            order_id: format!("order-{i:030}"),
            lines: Vec::new(),
        };
        apply(&mut state, op);
    }
    let sold = bytes();
    println!(
        "confirmed, in outbox:  {:6.0} bytes each (36-byte order ids)",
        (sold - base) as f64 / n as f64
    );
    drop(state);

    // Adjustment ids, at most ADJUSTMENT_IDS_MAX: n adjustments of one unit
    // each over the catalog, their stock all still there (so none may be
    // forgotten).
    let n_adjust = n.min(reservoir_tokens::limits::ADJUSTMENT_IDS_MAX as u64);
    let mut ledger = LedgerState::new();
    let base = bytes();
    for i in 0..n_adjust {
        let op = LedgerOp::AdjustStock {
            request_id: format!("{i:08x}-0000-4000-8000-000000000000"),
            sku: sku(i * 7919),
            delta: 1,
        };
        ledger
            .apply(LedgerCommand { now_ms: NOW_MS, op })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let adjusted = bytes();
    println!(
        "adjustment id:         {:6.0} bytes each ({n_adjust} remembered, {SKUS} SKUs)",
        (adjusted - base) as f64 / n_adjust as f64
    );
}
