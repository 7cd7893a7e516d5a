//! An in-process simulated store, to test the load engine itself: one
//! request at a time (a single-threaded server), a fixed service time, and
//! an optional stall. With tokio's paused clock a seconds-long scenario runs
//! in milliseconds and every latency is exact, so tests can check that a
//! stall shows in full (no coordinated omission) and that the in-flight
//! bound counts late and dropped requests. Not offered on the command line.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use tokio::time::Instant;

use super::{OpError, ServerSku, ServerView, reason};
use crate::workload::Catalog;

/// Most holds the simulated store keeps.
pub const SIM_HOLDS_MAX: usize = 1_000_000;

#[derive(Default)]
struct State {
    skus: BTreeMap<String, ServerSku>,
    holds: BTreeMap<String, (Vec<(String, u64)>, Instant)>,
    /// Every hold made, by its end (an entry whose hold was confirmed or
    /// released is skipped when due), so expiry does not scan every hold.
    ends: BinaryHeap<Reverse<(Instant, String)>>,
    confirmed: BTreeMap<String, ()>,
}

impl State {
    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.ends.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, id))) = self.ends.pop() else {
                break;
            };
            if self.holds.get(&id).is_none_or(|(_, end)| *end != at) {
                continue;
            }
            if let Some((lines, _)) = self.holds.remove(&id) {
                for (sku, q) in lines {
                    if let Some(s) = self.skus.get_mut(&sku) {
                        s.held -= q;
                        s.available += q;
                    }
                }
            }
        }
    }
}

/// The simulated store.
pub struct SimTarget {
    /// Held while a request is served: one at a time.
    server: tokio::sync::Mutex<State>,
    service: Duration,
    /// The store answers nothing in `[start, start + length)`.
    stall: Option<(Instant, Duration)>,
}

impl SimTarget {
    /// A store that takes `service` per request and, if given, stalls for
    /// `stall.1` starting at `stall.0`.
    pub fn new(service: Duration, stall: Option<(Instant, Duration)>) -> SimTarget {
        SimTarget {
            server: tokio::sync::Mutex::new(State::default()),
            service,
            stall,
        }
    }

    /// Serves one request: waits its turn, out any stall, and the service
    /// time, then applies `f`.
    async fn serve<T>(&self, f: impl FnOnce(&mut State, Instant) -> T) -> T {
        let mut state = self.server.lock().await;
        if let Some((start, length)) = self.stall {
            let now = Instant::now();
            if now >= start && now < start + length {
                tokio::time::sleep_until(start + length).await;
            }
        }
        tokio::time::sleep(self.service).await;
        let now = Instant::now();
        state.expire(now);
        f(&mut state, now)
    }

    /// Stocks the catalog.
    pub async fn stock(&self, catalog: &Catalog) {
        let mut state = self.server.lock().await;
        for s in &catalog.skus {
            state.skus.insert(
                s.sku.clone(),
                ServerSku {
                    stocked: s.stock,
                    available: s.stock,
                    ..ServerSku::default()
                },
            );
        }
    }

    /// All-or-nothing reserve; the hold id is the request id.
    pub async fn reserve(
        &self,
        request_id: &str,
        lines: &[(String, u64)],
        ttl_ms: u64,
    ) -> Result<String, OpError> {
        self.serve(|s, now| {
            if s.holds.contains_key(request_id) {
                return Ok(request_id.to_string());
            }
            let short = lines
                .iter()
                .any(|(sku, q)| s.skus.get(sku).is_none_or(|k| k.available < *q));
            if short {
                return Err(OpError::fatal(reason::INSUFFICIENT_STOCK, "short"));
            }
            if s.holds.len() >= SIM_HOLDS_MAX || s.ends.len() >= SIM_HOLDS_MAX {
                return Err(OpError::retryable(reason::UNAVAILABLE, "hold table full"));
            }
            for (sku, q) in lines {
                if let Some(k) = s.skus.get_mut(sku) {
                    k.available -= q;
                    k.held += q;
                }
            }
            let end = now + Duration::from_millis(ttl_ms);
            s.holds.insert(request_id.to_string(), (lines.to_vec(), end));
            s.ends.push(Reverse((end, request_id.to_string())));
            Ok(request_id.to_string())
        })
        .await
    }

    /// Confirm (idempotent).
    pub async fn confirm(&self, id: &str) -> Result<(), OpError> {
        self.serve(|s, _| {
            if s.confirmed.contains_key(id) {
                return Ok(());
            }
            let Some((lines, _)) = s.holds.remove(id) else {
                return Err(OpError::fatal(reason::RESERVATION_NOT_FOUND, id));
            };
            for (sku, q) in lines {
                if let Some(k) = s.skus.get_mut(&sku) {
                    k.held -= q;
                    k.sold += q;
                    k.settled += q;
                }
            }
            s.confirmed.insert(id.to_string(), ());
            Ok(())
        })
        .await
    }

    /// Release (idempotent).
    pub async fn release(&self, id: &str) -> Result<(), OpError> {
        self.serve(|s, _| {
            if let Some((lines, _)) = s.holds.remove(id) {
                for (sku, q) in lines {
                    if let Some(k) = s.skus.get_mut(&sku) {
                        k.held -= q;
                        k.available += q;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Expires what is due and reads the books (with `wait_for_holds`,
    /// waiting for the last holds until `deadline`; without, live holds are
    /// noted and the books must still add up).
    pub async fn reconcile(&self, catalog: &Catalog, deadline: Instant, wait_for_holds: bool) -> ServerView {
        let started = Instant::now();
        loop {
            let mut state = self.server.lock().await;
            state.expire(Instant::now());
            if state.holds.is_empty() || !wait_for_holds || Instant::now() >= deadline {
                let skus: BTreeMap<String, ServerSku> = catalog
                    .skus
                    .iter()
                    .map(|s| (s.sku.clone(), state.skus.get(&s.sku).cloned().unwrap_or_default()))
                    .collect();
                let holds_done = state.holds.is_empty() || !wait_for_holds;
                let balanced =
                    holds_done && skus.values().all(|k| k.stocked == k.available + k.held + k.sold);
                let mut notes = Vec::new();
                if !state.holds.is_empty() {
                    notes.push(format!("{} holds still live", state.holds.len()));
                }
                return ServerView {
                    skus,
                    balanced,
                    settled_caught_up: holds_done,
                    waited_s: started.elapsed().as_secs_f64(),
                    notes,
                };
            }
            drop(state);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
