//! The regions of a three-region cluster.

/// The regions, in the order `reservoir up` lays them out.
pub const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// The home region: the ledger's voters live here, single-writer's one
/// group, and a standalone region (`reservoir up --standalone`).
pub const HOME_REGION: &str = REGIONS[0];
