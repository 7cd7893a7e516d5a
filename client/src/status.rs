//! A node's `GET /status` (JSON): its region state's figures and its view of
//! Raft. The node writes it from this type; clients read it with the same
//! type, so a field added by a newer node is a field here first. Every
//! field but `node_id` may be absent (an older node), and unknown fields are
//! ignored.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A node's role in a Raft group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accepts writes and replicates them.
    Leader,
    /// Replicates the leader's log.
    Follower,
    /// Asking for votes.
    Candidate,
    /// Receives the log without a vote.
    Learner,
    /// Stopped.
    Shutdown,
    /// Not reported, or a role this client does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl Role {
    /// Its name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
            Role::Unknown => "unknown",
        }
    }
}

impl From<&str> for Role {
    /// The role called `name`; [`Role::Unknown`] for any other name.
    fn from(name: &str) -> Role {
        match name {
            "leader" => Role::Leader,
            "follower" => Role::Follower,
            "candidate" => Role::Candidate,
            "learner" => Role::Learner,
            "shutdown" => Role::Shutdown,
            _ => Role::Unknown,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a group's snapshots have cost on this node since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotStats {
    /// Snapshots built here.
    pub built: u64,
    /// Snapshots installed from a leader.
    pub installed: u64,
    /// The last log index the newest snapshot covers.
    pub last_index: Option<u64>,
    /// How long building the last snapshot took, in milliseconds.
    pub last_build_ms: u64,
    /// How long applying waited for the last build's copy of the state, in
    /// microseconds.
    pub last_pause_us: u64,
    /// Size of the newest snapshot file.
    pub last_bytes: u64,
    /// A build is running now.
    pub building: bool,
}

/// A node's view of one Raft group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupView {
    /// The group id.
    pub group: String,
    /// This node.
    pub node_id: u64,
    /// This node's role.
    pub role: Role,
    /// Its term in the group.
    pub term: u64,
    /// The group's leader it knows, if any.
    pub leader: Option<u64>,
    /// The last log index applied to the state machine.
    pub applied_index: Option<u64>,
    /// The last log index in this node's log.
    pub last_log_index: Option<u64>,
    /// The last log index its newest snapshot covers.
    pub snapshot_index: Option<u64>,
    /// The voters, by id, at their addresses.
    pub members: BTreeMap<u64, String>,
    /// On a leader: how long since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// What this group's snapshots have cost here.
    pub snapshots: SnapshotStats,
}

/// One SKU's tokens in a region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Free to reserve.
    pub available: u64,
    /// Held by live reservations.
    pub held: u64,
    /// Sold, not yet settled.
    pub confirmed: u64,
}

/// `GET /status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub node_id: u64,
    /// Its region.
    #[serde(default)]
    pub region: String,
    /// A standalone region (no ledger).
    #[serde(default)]
    pub standalone: bool,
    /// Its role in its region group.
    #[serde(default)]
    pub role: Role,
    /// Its term in the region group.
    #[serde(default)]
    pub term: u64,
    /// The region group's leader it knows, if any.
    #[serde(default)]
    pub leader: Option<u64>,
    /// The last log index it applied.
    #[serde(default)]
    pub applied_index: Option<u64>,
    /// The last log index in its log.
    #[serde(default)]
    pub last_log_index: Option<u64>,
    /// The last log index its newest snapshot covers.
    #[serde(default)]
    pub snapshot_index: Option<u64>,
    /// The region group's voters, by id, at their addresses.
    #[serde(default)]
    pub members: BTreeMap<u64, String>,
    /// Live holds.
    #[serde(default)]
    pub holds: u64,
    /// Reservations kept: live, confirmed and ended.
    #[serde(default)]
    pub reservations_kept: u64,
    /// Ended reservations kept (released, expired, settled).
    #[serde(default)]
    pub ended_kept: u64,
    /// When the earliest hold falls due.
    #[serde(default)]
    pub next_expiry_ms: Option<u64>,
    /// Sequence number of the newest outbox entry (confirmed sales).
    #[serde(default)]
    pub outbox_last_seq: u64,
    /// Outbox entries settled with the ledger, up to this sequence number.
    #[serde(default)]
    pub settled_up_to: u64,
    /// Token levels per SKU.
    #[serde(default)]
    pub buckets: BTreeMap<String, Bucket>,
    /// What the region group's snapshots have cost here (absent on older
    /// nodes).
    #[serde(default)]
    pub snapshots: Option<SnapshotStats>,
    /// The process's resident memory, if the platform tells it.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// The ledger group on this node, on the nodes that host it.
    #[serde(default)]
    pub ledger: Option<GroupView>,
}

impl NodeStatus {
    /// The replicated state this status shows, without the node's own view
    /// of Raft (role, term, applied index), so replicas can be compared.
    pub fn replicated_state(&self) -> (u64, Option<u64>, u64, u64, &BTreeMap<String, Bucket>) {
        (
            self.holds,
            self.next_expiry_ms,
            self.outbox_last_seq,
            self.settled_up_to,
            &self.buckets,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_tolerates_old_and_new_nodes() {
        let status = NodeStatus {
            node_id: 2,
            region: "eu-west".into(),
            role: Role::Follower,
            term: 3,
            leader: Some(1),
            holds: 5,
            buckets: BTreeMap::from([(
                "sku".into(),
                Bucket {
                    available: 1,
                    held: 2,
                    confirmed: 3,
                },
            )]),
            snapshots: Some(SnapshotStats {
                built: 1,
                ..SnapshotStats::default()
            }),
            ..NodeStatus::default()
        };
        let text = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<NodeStatus>(&text).unwrap(), status);
        let old: NodeStatus = serde_json::from_str(r#"{"node_id":1,"role":"leader","future":1}"#).unwrap();
        assert_eq!((old.role, old.snapshots), (Role::Leader, None));
        let odd: NodeStatus = serde_json::from_str(r#"{"node_id":1,"role":"observer"}"#).unwrap();
        assert_eq!(odd.role, Role::Unknown);
        assert!(serde_json::from_str::<NodeStatus>(r#"{"role":"leader"}"#).is_err());
    }
}
