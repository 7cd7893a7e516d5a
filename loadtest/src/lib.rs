//! reservoir-loadtest: Black Friday load and latency benchmarks.
//!
//! **Not built yet.** This crate will hold the open-loop load generator
//! (Poisson arrivals, latency measured from the intended send time so a stall
//! cannot hide), the workload model (Zipf-popular SKUs, carts of 1–3 lines,
//! reserve → confirm / release / abandon sessions), the scenarios (`steady`,
//! `black-friday`, `flash-sale`, `partition`), HdrHistogram reports, and the
//! Redis and PostgreSQL baseline adapters.
//!
//! Today it contains no code: nothing here pretends to measure anything.
