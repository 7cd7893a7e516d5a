//! An in-process simulated store, to test the load engine itself: one
//! request at a time (a single-threaded server), a fixed service time, and
//! an optional stall. With tokio's paused clock a seconds-long scenario runs
//! in milliseconds and every latency is exact, so tests can check that a
//! stall shows in full (no coordinated omission) and that the in-flight
//! bound counts late and dropped requests. Not offered on the command line.

use std::collections::BTreeMap;
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
    confirmed: BTreeMap<String, ()>,
}

impl State {
    fn expire(&mut self, now: Instant) {
        let due: Vec<String> = self
            .holds
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
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
            if s.holds.len() >= SIM_HOLDS_MAX {
                return Err(OpError::retryable(reason::UNAVAILABLE, "hold table full"));
            }
            for (sku, q) in lines {
                if let Some(k) = s.skus.get_mut(sku) {
                    k.available -= q;
                    k.held += q;
                }
            }
            s.holds.insert(
                request_id.to_string(),
                (lines.to_vec(), now + Duration::from_millis(ttl_ms)),
            );
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

    /// Expires what is due and reads the books (waiting for the last holds
    /// until `deadline`).
    pub async fn reconcile(&self, catalog: &Catalog, deadline: Instant) -> ServerView {
        let started = Instant::now();
        loop {
            let mut state = self.server.lock().await;
            state.expire(Instant::now());
            if state.holds.is_empty() || Instant::now() >= deadline {
                let skus: BTreeMap<String, ServerSku> = catalog
                    .skus
                    .iter()
                    .map(|s| (s.sku.clone(), state.skus.get(&s.sku).cloned().unwrap_or_default()))
                    .collect();
                let balanced = state.holds.is_empty()
                    && skus.values().all(|k| k.stocked == k.available + k.held + k.sold);
                return ServerView {
                    skus,
                    balanced,
                    settled_caught_up: state.holds.is_empty(),
                    waited_s: started.elapsed().as_secs_f64(),
                    notes: Vec::new(),
                };
            }
            drop(state);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
