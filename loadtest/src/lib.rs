//! reservoir-loadtest: open-loop Black Friday load, and the same workload
//! against the baselines a team would otherwise pick (Redis, PostgreSQL).
//!
//! The binary `reservoir-loadtest` runs a [`scenario::Scenario`] (built in:
//! `steady`, `black-friday`, `flash-sale`, `partition`, `soak`; or a TOML
//! file)
//! against a target — a `reservoir up` cluster, or a Redis or PostgreSQL
//! server that the adapter starts itself on a private port and temporary
//! folder — then reconciles what it saw with the target's own books and
//! writes a terminal summary, `report.json` and a self-contained
//! `report.html`.
//!
//! How load is offered (see [`runner`]): each region has a Poisson arrival
//! schedule at the scenario's rate (piecewise constant: baseline, spike,
//! recovery), drawn from a seeded PRNG. A session arrives, reserves a cart of
//! 1–3 distinct Zipf-popular SKUs, and after a think time confirms, releases,
//! or abandons its hold to expire. The generator never waits for answers
//! (open loop), and every latency is measured from the request's *intended*
//! send time, so a server stall shows in full rather than slowing the load
//! down (no coordinated omission). For saturation throughput only, a
//! scenario may ask for a closed loop instead (`clients_per_region` > 0):
//! N clients per region, each starting its next session when its last
//! reserve is answered; latency is then service time. Against Reservoir
//! the calls can also be spread over a region's nodes, start at a follower
//! and follow its leader hint, or be gathered into `ReserveBatch` calls
//! (`target::reservoir::CallOptions`).
//!
//! The `soak` scenario is one region (`reservoir up --standalone`) at
//! 5,000 reserves/s of one unit over 1,000 SKUs for 10 minutes, every hold
//! abandoned (2-minute holds; `--hold-ttl-ms 900000 --no-wait-for-holds`
//! for the 15-minute variant), to watch the servers rather than the
//! tester: against Reservoir, a sampler reads every node's `/status` once a
//! second (role, live holds, applied and snapshot indexes, RSS, snapshot
//! counters), and the reports add each node's RSS figures, the snapshot
//! events, and charts of latency with the snapshots marked, live holds and
//! RSS.
//!
//! Invariants:
//! - every request carries a fresh `request_id`; only a retry of a
//!   retryable error (UNAVAILABLE, a timeout) reuses it, at most
//!   [`runner::RETRIES_MAX`] times;
//! - everything is bounded: requests in flight per region (a request that
//!   finds no slot waits and is counted late, and is dropped — counted, never
//!   sent — if none frees within `late_drop_ms`), live sessions (open loop;
//!   a closed loop has one per client in its reserve, plus those in their
//!   think time), holds waiting to expire ([`expiry::HOLD_LINES_PENDING_MAX`]
//!   lines, in one shared structure rather than a task each; past it a
//!   session waits out its hold itself, under the live-session bound),
//!   sessions per region, outcomes per histogram map, timeline rows and
//!   server samples, HTTP replies read from Reservoir's nodes (the
//!   baselines' replies are read by the `redis` and `tokio-postgres`
//!   crates, without a size bound of the tester's own), connection pools,
//!   and every wait has a deadline (a node's `/status` has
//!   [`servers::STATUS_TIMEOUT`]; one that does not answer is missing for
//!   that second, and the load never waits for it);
//! - a run that oversells, or whose target's books do not balance, says so
//!   on the terminal and in both reports, and the binary exits 1.
//!
//! Figures (definitions in [`report`]): HdrHistograms per (operation,
//! region, outcome) with merges; a per-second timeline per region
//! (arrivals, answers, p50/p99/p99.9, errors by reason, late, dropped);
//! reserve latency per region during each spike or partition window;
//! oversell per SKU; the audit (Reservoir) or the store's own books
//! (baselines); settled vs confirmed; sell-through; local-hit ratio;
//! stranded tokens; per node (Reservoir), its `/status` each second, RSS at
//! the first sample, peak, last, and min / max over the last half of the
//! load, and snapshot events (a node's snapshot index changing between two
//! samples). `reconcile_wait_for_holds = false` (`--no-wait-for-holds`)
//! reads the books without waiting for live holds to end: they are then
//! reported, not an error, and the books must still balance.
//!
//! Layout:
//! - [`rng`]: seeded xoshiro256** PRNG, exponential variates, Zipf sampler;
//! - [`schedule`]: a region's piecewise-constant Poisson arrival schedule;
//! - [`scenario`]: scenarios as data, the built-ins, TOML, stock sizing;
//! - [`workload`]: the catalog, carts and the session mix;
//! - [`metrics`]: histograms, the per-second timeline, counters, merging;
//! - [`runner`]: generators, sessions, retries, partitions, drain, reconcile;
//! - [`expiry`]: abandoned holds waiting for their end, per 100-ms bucket,
//!   given back to the tester's books by a ticker;
//! - [`servers`]: the per-second `/status` sampler, snapshot events, and
//!   the report's `servers` section;
//! - [`report`] and [`html`]: figures, terminal summary, JSON, HTML;
//! - [`target`]: the adapters — [`target::reservoir`] (gRPC, control API),
//!   [`target::redis`] (the `redis` crate, Lua scripts) and
//!   [`target::postgres`] (`tokio-postgres` with `deadpool-postgres`
//!   pools, prepared statements, one transaction per reserve) — the
//!   helpers to start and stop their servers, and
//!   [`target::sim`], an in-process store the engine's own tests run against
//!   on tokio's paused clock;
//! - [`app`]: one whole run, as the binary and the tests do it.
//!
//! Caveats:
//! - the load generator runs on the same machine as the target and competes
//!   with it for CPU; on two cores, figures are rough and a busy tester shows
//!   up as late requests (they are counted);
//! - the baselines have no regions: the three "regions" are three client
//!   pools against one server, with no WAN between them, and partition
//!   windows are skipped (and marked so);
//! - "stock existed globally" (for local misses) comes from the tester's own
//!   books (stocked − believed held − confirmed), an estimate that ignores
//!   holds whose reserve outcome was unknown;
//! - the server samples see a node once a second: a snapshot's stall
//!   shorter than that shows in the latency, not in the samples, and a
//!   snapshot event is dated to the sample that first saw its index; RSS
//!   comes from `/status` when the node reports it, else from `/proc` only
//!   when the pid in `cluster.json` is a local process started by the same
//!   command (a restarted node's new pid is not known);
//! - Reservoir's three designs (`reservoir up --architecture`) are told
//!   apart by `cluster.json`: each region's clients use the endpoints it
//!   lists; without a ledger (single-writer, global-consensus) confirmed
//!   units count as settled and local hits are not counted.

pub mod acknowledged;
pub mod app;
pub mod expiry;
pub mod html;
pub mod metrics;
pub mod report;
pub mod rng;
pub mod runner;
pub mod scenario;
pub mod schedule;
pub mod servers;
pub mod target;
pub mod workload;
