//! The fault schedule a seed draws: what goes wrong, when, for how long.
//! Drawn before the run from its own stream of the seed, as a list, so a
//! failing schedule can be shrunk by leaving faults out
//! ([`crate::Options::skip`]) and replayed.

use std::fmt;

use reservoir_raft::NodeId;

use crate::cluster::{REGIONS, node_ids};
use crate::net::Weather;
use crate::rng::Rng;

/// When faults may start (ms of simulated time).
pub const FAULTS_FROM_MS: u64 = 3_000;
/// When every fault has healed.
pub const FAULTS_UNTIL_MS: u64 = 23_000;

/// Which node a fault hits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// This node.
    Node(NodeId),
    /// Whoever leads this group when the fault starts (a region, or the
    /// ledger).
    LeaderOf(&'static str),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(n) => write!(f, "n{n}"),
            Target::LeaderOf(g) => write!(f, "the {g} leader"),
        }
    }
}

/// One fault.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The node crashes (losing unflushed writes) and restarts after
    /// `down_ms`.
    Crash {
        /// The node.
        target: Target,
        /// How long it stays down.
        down_ms: u64,
    },
    /// Every link of the node is cut, both ways.
    IsolateNode {
        /// The node.
        target: Target,
    },
    /// Every link between the region and the others is cut, both ways.
    IsolateRegion {
        /// The region.
        region: &'static str,
    },
    /// Messages from one node to another are lost (one way).
    OneWay {
        /// The sender whose messages are lost.
        from: NodeId,
        /// The addressee that does not get them.
        to: NodeId,
    },
    /// The network loses, duplicates and delays messages.
    Weather(Weather),
    /// The node's flushes take this long.
    SlowDisk {
        /// The node.
        target: Target,
        /// How long one flush takes.
        fsync_ms: u64,
    },
    /// The node's disk is full (every flush fails, its groups stop); when
    /// it heals, the node is restarted, as an operator would.
    FullDisk {
        /// The node.
        target: Target,
    },
    /// The node's wall clock is off by `offset_ms` (a skew, or a jump when
    /// it changes a clock that was right).
    Clock {
        /// The node.
        node: NodeId,
        /// How far off its wall clock is (negative: behind).
        offset_ms: i64,
    },
    /// A crash with writes since the last flush torn: a prefix survives.
    TornCrash {
        /// The node.
        target: Target,
        /// How long it stays down.
        down_ms: u64,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Crash { target, down_ms } => write!(f, "crash {target}, down {down_ms} ms"),
            Fault::TornCrash { target, down_ms } => {
                write!(f, "crash {target} tearing unflushed writes, down {down_ms} ms")
            }
            Fault::IsolateNode { target } => write!(f, "isolate {target}"),
            Fault::IsolateRegion { region } => write!(f, "cut {region} off the WAN"),
            Fault::OneWay { from, to } => write!(f, "lose messages n{from} -> n{to}"),
            Fault::Weather(w) => write!(
                f,
                "weather: loss {:.1}%, duplicates {:.1}%, WAN {}-{} ms",
                w.loss * 100.0,
                w.dup * 100.0,
                w.wan_ms.0,
                w.wan_ms.1
            ),
            Fault::SlowDisk { target, fsync_ms } => write!(f, "slow disk on {target}: fsync {fsync_ms} ms"),
            Fault::FullDisk { target } => write!(f, "full disk on {target}"),
            Fault::Clock { node, offset_ms } => write!(f, "clock of n{node} off by {offset_ms} ms"),
        }
    }
}

/// A fault with its window.
#[derive(Clone, Debug, PartialEq)]
pub struct Scheduled {
    /// When it starts.
    pub at_ms: u64,
    /// How long it lasts (a crash: until the restart).
    pub for_ms: u64,
    /// The fault.
    pub fault: Fault,
}

fn target(rng: &mut Rng) -> Target {
    if rng.chance(0.5) {
        let groups = ["us-east", "eu-west", "ap-south", "ledger"];
        Target::LeaderOf(groups[rng.below(groups.len() as u64) as usize])
    } else {
        Target::Node(*rng.pick(&node_ids()))
    }
}

/// The schedule of seed `seed`: 2 to 8 faults between
/// [`FAULTS_FROM_MS`] and [`FAULTS_UNTIL_MS`], each healed by then.
pub fn schedule(seed: u64) -> Vec<Scheduled> {
    let mut rng = Rng::new(seed, 3);
    let count = rng.range(2, 8);
    let mut faults = Vec::new();
    for _ in 0..count {
        let at_ms = rng.range(FAULTS_FROM_MS, FAULTS_UNTIL_MS - 2_000);
        let longest = FAULTS_UNTIL_MS - at_ms;
        let for_ms = rng.range(300, longest.min(8_000));
        let fault = match rng.below(100) {
            0..=21 => Fault::Crash {
                target: target(&mut rng),
                down_ms: for_ms,
            },
            22..=29 => Fault::TornCrash {
                target: target(&mut rng),
                down_ms: for_ms,
            },
            30..=44 => Fault::IsolateNode {
                target: target(&mut rng),
            },
            45..=54 => Fault::IsolateRegion {
                region: REGIONS[rng.below(REGIONS.len() as u64) as usize],
            },
            55..=61 => {
                let from = *rng.pick(&node_ids());
                let mut to = *rng.pick(&node_ids());
                if to == from {
                    to = from % node_ids().len() as u64 + 1;
                }
                Fault::OneWay { from, to }
            }
            62..=73 => Fault::Weather(Weather {
                loss: rng.range(0, 100) as f64 / 1_000.0,
                dup: rng.range(0, 200) as f64 / 1_000.0,
                lan_us: (200, rng.range(1_000, 20_000)),
                wan_ms: (rng.range(30, 80), rng.range(80, 250)),
            }),
            74..=81 => Fault::SlowDisk {
                target: target(&mut rng),
                fsync_ms: rng.range(20, 400),
            },
            82..=87 => Fault::FullDisk {
                target: target(&mut rng),
            },
            _ => Fault::Clock {
                node: *rng.pick(&node_ids()),
                offset_ms: if rng.chance(0.5) {
                    rng.range(1, 120_000) as i64
                } else {
                    -(rng.range(1, 120_000) as i64)
                },
            },
        };
        faults.push(Scheduled { at_ms, for_ms, fault });
    }
    faults.sort_by_key(|f| f.at_ms);
    faults
}
