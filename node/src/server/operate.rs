//! What the Admin service's operator calls share: which Raft group a call
//! names ([`GroupRef`]), their bounds, the one mapping of a refused or
//! unfinished action ([`reservoir_raft::AdminError`]) to a gRPC status,
//! and the membership as a message. Also [`follow_members`], which keeps
//! the peer policy's view of each group's members current, so a node an
//! operator adds may speak for itself on the peer plane.
//!
//! The actions themselves (add a learner, change voters, transfer
//! leadership, snapshot now) are `reservoir_raft::admin`'s, run on the
//! group's leader; the service forwards a call to it once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use reservoir_proto::v1;
use reservoir_raft::{AdminError, Group, MembershipView};
use reservoir_tokens::{LedgerState, RegionState};
use tokio::sync::watch;
use tonic::{Code, Status};

use crate::server::LEDGER_GROUP;
use crate::server::config::PEERS_MAX;
use crate::server::node::Node;
use crate::server::status::status_with_info;

/// The bound of one operator action on the leader (a membership change, a
/// transfer, a snapshot); under the forwarding timeout, so the leader's own
/// answer comes back.
pub const ADMIN_ACTION_TIMEOUT: Duration = Duration::from_secs(8);
/// Most node ids one `ChangeVoters` call may add, and may remove.
pub const CHANGE_IDS_MAX: usize = PEERS_MAX;
/// Longest group name a call may give.
pub const GROUP_NAME_BYTES_MAX: usize = 64;
/// How often a node copies its groups' memberships into its peer policy.
pub const MEMBERS_POLL: Duration = Duration::from_millis(200);

/// A group this node hosts, as an operator call names it.
pub enum GroupRef<'a> {
    /// The node's region group.
    Region(&'a Group<RegionState>),
    /// The ledger group (on the home region's nodes).
    Ledger(&'a Group<LedgerState>),
}

/// Runs `$body` with `$g` bound to the group, whichever kind it is.
#[macro_export]
#[doc(hidden)]
macro_rules! on_group {
    ($target:expr, $g:ident => $body:expr) => {
        match $target {
            $crate::server::operate::GroupRef::Region($g) => $body,
            $crate::server::operate::GroupRef::Ledger($g) => $body,
        }
    };
}

impl GroupRef<'_> {
    /// The group's name.
    pub fn name(&self) -> &str {
        match self {
            GroupRef::Region(g) => g.name(),
            GroupRef::Ledger(g) => g.name(),
        }
    }
}

/// The group `name` names on `node`: `""` or the node's region for its
/// region group, `ledger` for the ledger group. Refused: an over-long name
/// (`INVALID_GROUP`), a group no node of this cluster has by that name
/// (`UNKNOWN_GROUP`), the ledger on a node that does not host it
/// (`GROUP_NOT_HOSTED`: call a node of the home region).
pub fn group<'a>(node: &'a Node, name: &str) -> Result<GroupRef<'a>, Status> {
    if name.len() > GROUP_NAME_BYTES_MAX {
        return Err(status_with_info(
            Code::InvalidArgument,
            format!("group name of {} bytes, over {GROUP_NAME_BYTES_MAX}", name.len()),
            "INVALID_GROUP",
            vec![],
        ));
    }
    if name.is_empty() || name == node.region() {
        return Ok(GroupRef::Region(node.group()));
    }
    if name == LEDGER_GROUP {
        return match node.ledger() {
            Some(host) => Ok(GroupRef::Ledger(host.group())),
            None => Err(status_with_info(
                Code::FailedPrecondition,
                format!(
                    "node {} does not host the ledger group: call a node of the home region",
                    node.config().node_id
                ),
                "GROUP_NOT_HOSTED",
                vec![("group", name.to_string())],
            )),
        };
    }
    Err(status_with_info(
        Code::NotFound,
        format!(
            "node {} hosts no group {name:?}: name its region ({}) or {LEDGER_GROUP}",
            node.config().node_id,
            node.region()
        ),
        "UNKNOWN_GROUP",
        vec![("group", name.to_string())],
    ))
}

/// Checks a `ChangeVoters` call's lists: at most [`CHANGE_IDS_MAX`] ids
/// each, none of them 0, not both empty.
pub fn change_ids(add: &[u64], remove: &[u64]) -> Result<(BTreeSet<u64>, BTreeSet<u64>), Status> {
    let invalid = |message: String| {
        status_with_info(
            Code::InvalidArgument,
            message,
            "INVALID_MEMBERSHIP_REQUEST",
            vec![],
        )
    };
    if add.len() > CHANGE_IDS_MAX || remove.len() > CHANGE_IDS_MAX {
        return Err(invalid(format!(
            "at most {CHANGE_IDS_MAX} ids to add and {CHANGE_IDS_MAX} to remove"
        )));
    }
    if add.is_empty() && remove.is_empty() {
        return Err(invalid("nothing to add or remove".into()));
    }
    if add.iter().chain(remove).any(|id| *id == 0) {
        return Err(invalid("node id 0 is not a node id".into()));
    }
    Ok((add.iter().copied().collect(), remove.iter().copied().collect()))
}

/// An action's refusal or failure as the status a client reads: the
/// action's stable reason, the group in the metadata. `NotLeader` is
/// `UNAVAILABLE` / `NO_LEADER`, retryable like any call that found no
/// leader.
pub fn admin_status(group: &str, e: &AdminError) -> Status {
    let code = match e {
        AdminError::NotLeader { .. } | AdminError::Raft(_) => Code::Unavailable,
        AdminError::Invalid(_) => Code::InvalidArgument,
        AdminError::UnknownNode { .. } => Code::NotFound,
        AdminError::NodeExists { .. } => Code::AlreadyExists,
        AdminError::NotVoter { .. }
        | AdminError::LastVoter(_)
        | AdminError::RemovesLeader { .. }
        | AdminError::NotCaughtUp { .. }
        | AdminError::QuorumAtRisk { .. } => Code::FailedPrecondition,
        AdminError::Changing
        | AdminError::TransferredElsewhere { .. }
        | AdminError::TransferRefused { .. } => Code::Aborted,
        AdminError::Timeout { .. } => Code::DeadlineExceeded,
        AdminError::SnapshotFailed(_) => Code::Internal,
    };
    let reason = match e {
        AdminError::NotLeader { .. } => "NO_LEADER",
        other => other.reason(),
    };
    status_with_info(
        code,
        format!("group {group}: {e}"),
        reason,
        vec![("group", group.to_string())],
    )
}

/// A membership view as its message.
pub fn membership_message(view: &MembershipView) -> v1::Membership {
    let member = |id: &u64, role: &str| {
        let matched = view.matched.get(id).copied().flatten();
        v1::MemberStatus {
            id: *id,
            address: view.addresses.get(id).cloned().unwrap_or_default(),
            role: role.to_string(),
            has_matched_index: matched.is_some(),
            matched_index: matched.unwrap_or(0),
        }
    };
    v1::Membership {
        group: view.group.clone(),
        node_id: view.node_id,
        leader_id: view.leader.unwrap_or(0),
        term: view.term,
        last_log_index: view.last_log_index.unwrap_or(0),
        members: view
            .voters
            .iter()
            .map(|id| member(id, "voter"))
            .chain(view.learners.iter().map(|id| member(id, "learner")))
            .collect(),
        joint: view.joint,
    }
}

/// Copies the members of this node's groups into its peer policy every
/// [`MEMBERS_POLL`], until shutdown: a node added (or a replacement) may
/// then send Raft messages and forwarded calls as the config's voters may.
pub async fn follow_members(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(MEMBERS_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let members = node.group().membership().addresses.into_keys().collect();
        node.peer_policy().set_members(false, members);
        if let Some(host) = node.ledger() {
            let members = host.group().membership().addresses.into_keys().collect();
            node.peer_policy().set_members(true, members);
        }
    }
}
