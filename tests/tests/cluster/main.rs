//! Every cluster-level test, in one test binary (one link instead of seven;
//! see tests/README.md for what each file proves). Each test starts its own
//! region or cluster and holds [`reservoir_tests::one_at_a_time`] while it
//! runs, so no two share the machine's cores.

mod architectures;
mod backup;
mod bad_input;
mod clock_skew;
mod cluster_faults;
mod cluster_flows;
mod host_names;
mod leader_crash;
mod load_tester;
mod observability;
mod operate;
mod region_faults;
mod region_isolation;
mod region_restart;
mod reserve_batch;
