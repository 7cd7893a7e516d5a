//! Operator actions on one group, run on its leader: the membership as
//! the leader sees it, adding a learner, changing the voters (promote,
//! remove, replace in one joint change), handing leadership over, and
//! building a snapshot now.
//!
//! Every action is bounded (it gives up with [`AdminError::Timeout`]),
//! checks its inputs before anything changes, and refuses with an error
//! whose [`AdminError::reason`] is stable. Asking for what already holds
//! (a learner that is already there, voters that already are the voters,
//! leadership for the leader) answers at once without a change, so a
//! retried action is harmless.
//!
//! Leadership transfer: openraft 0.9 has none, so this module does what
//! the Raft thesis (§3.10) describes. Once the target is close behind, the
//! leader stops taking new batches (it holds every write slot of its
//! proposer, for at most [`PAUSE_MAX`]), waits until the target has every
//! entry of its log, stops its heartbeats, and sends the target a
//! `TimeoutNow` ([`TimeoutNow`]) over the peer plane; the target campaigns
//! at once. Its log is as long as anyone's, so the old leader grants its
//! vote (openraft's leader lease on the old leader counts from when it was
//! elected) and steps down; without heartbeats the other voters' leases run
//! out within one longest election timeout, and a target refused at first
//! is asked again. The old leader's queued proposals, taken up again once
//! it no longer leads, fail with `NotLeader` naming the new leader, and
//! their callers retry there.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};

use crate::config::{Batch, GroupMachine, GroupRaft, Node, NodeId, Vote};
use crate::group::Group;
use crate::network::{RpcKind, WireMessage, decode, encode};

/// A learner counts as caught up when its log is at most this many entries
/// behind the leader's.
pub const CATCH_UP_LAG_MAX: u64 = 64;
/// Longest node address an operator may give.
pub const ADDRESS_BYTES_MAX: usize = 256;
/// How long a membership change waits for members to acknowledge its probe
/// entry before it counts who answered (see [`Group::change_voters`]).
pub const PROBE_WAIT: Duration = Duration::from_millis(1_000);
/// Longest a leadership transfer holds new writes back while the target
/// takes the leader's last entries (then it gives up, `NOT_CAUGHT_UP`, and
/// writes go on).
pub const PAUSE_MAX: Duration = Duration::from_millis(1_000);
/// How many times a transfer asks its target to campaign (one longest
/// election timeout apart) before it gives up.
pub const ELECTION_TRIES: u32 = 3;
/// How often an action polls the group's metrics while it waits.
const POLL: Duration = Duration::from_millis(10);

/// The group's membership as one node sees it; the replication progress
/// only on the leader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipView {
    /// The group.
    pub group: String,
    /// The node that answered.
    pub node_id: NodeId,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// Its term.
    pub term: u64,
    /// Its last log index.
    pub last_log_index: Option<u64>,
    /// The voters (in a joint configuration, of both halves).
    pub voters: BTreeSet<NodeId>,
    /// The learners.
    pub learners: BTreeSet<NodeId>,
    /// Every member's address as the membership stores it.
    pub addresses: BTreeMap<NodeId, String>,
    /// On the leader: the last log index each member is known to hold.
    pub matched: BTreeMap<NodeId, Option<u64>>,
    /// A membership change is half done (a joint configuration).
    pub joint: bool,
}

impl MembershipView {
    /// How many entries `id` is behind the leader's log, when this view is
    /// the leader's and it knows.
    pub fn lag(&self, id: NodeId) -> Option<u64> {
        let matched = self.matched.get(&id).copied()?;
        Some(
            self.last_log_index
                .unwrap_or(0)
                .saturating_sub(matched.unwrap_or(0)),
        )
    }
}

/// Why an operator action did not happen, or did not finish.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// This node does not lead the group; ask the leader.
    #[error("not the leader of the group (leader: {leader:?})")]
    NotLeader {
        /// The leader's id and address, if known.
        leader: Option<(NodeId, String)>,
    },
    /// The request itself is wrong (an id of 0, an empty address, an id
    /// both added and removed).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The node is not a member of the group.
    #[error("node {id} is not a member of the group")]
    UnknownNode {
        /// The node.
        id: NodeId,
    },
    /// The node id is a member already, at another address: node ids are
    /// never reused.
    #[error("node {id} is already a member, at {address}; node ids are never reused")]
    NodeExists {
        /// The node.
        id: NodeId,
        /// Its address in the membership.
        address: String,
    },
    /// The node is a learner, not a voter.
    #[error("node {id} is a learner, not a voter")]
    NotVoter {
        /// The node.
        id: NodeId,
    },
    /// The change would leave the group without a voter, or a transfer
    /// has no other voter to go to.
    #[error("{0}")]
    LastVoter(String),
    /// The leader cannot remove itself; move leadership first.
    #[error("node {id} leads the group: transfer leadership first")]
    RemovesLeader {
        /// The leader.
        id: NodeId,
    },
    /// A learner to promote is too far behind.
    #[error("node {id} has not caught up: it holds up to index {matched:?} of {last:?}")]
    NotCaughtUp {
        /// The learner.
        id: NodeId,
        /// What it holds.
        matched: Option<u64>,
        /// The leader's last log index.
        last: Option<u64>,
    },
    /// Too few of the voters the change leaves answer the leader: the
    /// group could not commit after it.
    #[error("of the voters {voters:?} the change leaves, only {reachable:?} answer; a majority must")]
    QuorumAtRisk {
        /// The voters after the change.
        voters: BTreeSet<NodeId>,
        /// Those that answered.
        reachable: BTreeSet<NodeId>,
    },
    /// Another membership change is half done.
    #[error("another membership change is in progress; try again")]
    Changing,
    /// The action did not finish in its bound; it may still take effect.
    #[error("{what}: not done within {waited_ms} ms; it may still take effect")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        waited_ms: u64,
    },
    /// A leadership transfer ended with another node leading.
    #[error("leadership went to node {leader} rather than node {target}")]
    TransferredElsewhere {
        /// The node asked for.
        target: NodeId,
        /// The node that leads.
        leader: NodeId,
    },
    /// The target of a transfer refused to campaign.
    #[error("node {target} refused to campaign: {why}")]
    TransferRefused {
        /// The target.
        target: NodeId,
        /// Its reason.
        why: String,
    },
    /// A snapshot build failed on this node.
    #[error("the snapshot build failed: {0}")]
    SnapshotFailed(String),
    /// The group has stopped, or openraft refused for a reason of its own.
    #[error("raft: {0}")]
    Raft(String),
}

impl AdminError {
    /// The stable reason a client reads.
    pub fn reason(&self) -> &'static str {
        match self {
            AdminError::NotLeader { .. } => "NOT_LEADER",
            AdminError::Invalid(_) => "INVALID_MEMBERSHIP_REQUEST",
            AdminError::UnknownNode { .. } => "UNKNOWN_NODE",
            AdminError::NodeExists { .. } => "NODE_EXISTS",
            AdminError::NotVoter { .. } => "NOT_A_VOTER",
            AdminError::LastVoter(_) => "LAST_VOTER",
            AdminError::RemovesLeader { .. } => "REMOVES_LEADER",
            AdminError::NotCaughtUp { .. } => "NOT_CAUGHT_UP",
            AdminError::QuorumAtRisk { .. } => "QUORUM_AT_RISK",
            AdminError::Changing => "MEMBERSHIP_CHANGING",
            AdminError::Timeout { .. } => "ADMIN_TIMEOUT",
            AdminError::TransferredElsewhere { .. } => "TRANSFERRED_ELSEWHERE",
            AdminError::TransferRefused { .. } => "TRANSFER_REFUSED",
            AdminError::SnapshotFailed(_) => "SNAPSHOT_FAILED",
            AdminError::Raft(_) => "RAFT_ERROR",
        }
    }

    /// True when the same request may succeed later as it is.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            AdminError::NotLeader { .. }
                | AdminError::NotCaughtUp { .. }
                | AdminError::Changing
                | AdminError::Timeout { .. }
                | AdminError::TransferredElsewhere { .. }
                | AdminError::TransferRefused { .. }
                | AdminError::QuorumAtRisk { .. }
        )
    }
}

/// A leader's request that the addressee campaign at once (it carries the
/// leader's vote, so the message speaks for its sender, and the leader's
/// last log index, which the addressee must hold).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimeoutNow {
    /// The sender's vote.
    pub vote: Vote,
    /// The sender's last log index.
    pub last_log_index: Option<u64>,
}

/// The addressee's side of [`TimeoutNow`]: campaigns if it is a voter,
/// follows the sender (or is already campaigning) and holds the sender's
/// whole log.
pub(crate) async fn timeout_now<SM: GroupMachine>(
    raft: &GroupRaft<SM>,
    from: NodeId,
    request: &TimeoutNow,
) -> Result<(), String> {
    let (state, leader, last, voter) = {
        let m = raft.metrics();
        let m = m.borrow();
        let voter = m.membership_config.membership().voter_ids().any(|v| v == m.id);
        (m.state, m.current_leader, m.last_log_index, voter)
    };
    if state == ServerState::Leader {
        return Ok(());
    }
    if !voter {
        return Err("not a voter of the group".into());
    }
    if leader != Some(from) && state != ServerState::Candidate {
        return Err(format!(
            "node {from} is not the leader this node follows ({leader:?})"
        ));
    }
    if last < request.last_log_index {
        return Err(format!(
            "this node's log ends at {last:?}, the leader's at {:?}",
            request.last_log_index
        ));
    }
    metrics::counter!(
        "reservoir_raft_campaigns_total",
        "group" => raft.config().cluster_name.clone(),
        "reason" => "timeout_now"
    )
    .increment(1);
    raft.trigger().elect().await.map_err(|e| e.to_string())
}

/// Turns openraft's heartbeats back on when dropped (however a transfer
/// ends).
struct HeartbeatsOff<'a, SM: GroupMachine>(&'a GroupRaft<SM>);

impl<SM: GroupMachine> Drop for HeartbeatsOff<'_, SM> {
    fn drop(&mut self) {
        self.0.runtime_config().heartbeat(true);
    }
}

fn raft_error<E: std::fmt::Display>(e: E) -> AdminError {
    AdminError::Raft(e.to_string())
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

impl<SM: GroupMachine> Group<SM> {
    /// The membership as this node sees it (with each member's progress
    /// when this node leads).
    pub fn membership(&self) -> MembershipView {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let mut matched: BTreeMap<NodeId, Option<u64>> = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        if m.state == ServerState::Leader {
            matched.insert(m.id, m.last_log_index);
        }
        MembershipView {
            group: self.name.clone(),
            node_id: m.id,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            voters,
            learners,
            addresses: membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
            matched,
            joint: membership.get_joint_config().len() > 1,
        }
    }

    fn require_leader(&self) -> Result<(), AdminError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(AdminError::NotLeader {
                leader: self.leader(),
            })
        }
    }

    /// Adds node `id`, reached at `address`, as a learner: the leader starts
    /// replicating to it (by snapshot when its log was purged) and returns
    /// without waiting for it to catch up ([`MembershipView::lag`] tells).
    /// A member already there at the same address is left as it is; one at
    /// another address is refused ([`AdminError::NodeExists`]).
    pub async fn add_learner(
        &self,
        id: NodeId,
        address: &str,
        timeout: Duration,
    ) -> Result<MembershipView, AdminError> {
        if id == 0 {
            return Err(AdminError::Invalid("node id 0 is not a node id".into()));
        }
        if address.is_empty() || address.len() > ADDRESS_BYTES_MAX || address.contains(char::is_whitespace) {
            return Err(AdminError::Invalid(format!(
                "address {address:?} must be 1-{ADDRESS_BYTES_MAX} bytes without spaces"
            )));
        }
        self.require_leader()?;
        let view = self.membership();
        if let Some(existing) = view.addresses.get(&id) {
            return if existing == address {
                Ok(view)
            } else {
                Err(AdminError::NodeExists {
                    id,
                    address: existing.clone(),
                })
            };
        }
        if view.joint {
            return Err(AdminError::Changing);
        }
        let added = tokio::time::timeout(timeout, self.raft.add_learner(id, Node::new(address), false)).await;
        match added {
            Err(_) => Err(AdminError::Timeout {
                what: format!("adding node {id} as a learner"),
                waited_ms: timeout.as_millis() as u64,
            }),
            Ok(Ok(_)) => Ok(self.membership()),
            Ok(Err(e)) => Err(self.change_error(e)),
        }
    }

    /// Changes the voters in one step: the learners in `add` become voters
    /// and the members in `remove` (voters or learners) leave the group. A
    /// replacement (`add` a caught-up learner, `remove` a dead voter) is one
    /// joint change, so no moment has fewer voters able to commit than
    /// before.
    ///
    /// Refused, with nothing changed: an id that is not a member
    /// (`UNKNOWN_NODE`; add a new node as a learner first), a learner more
    /// than [`CATCH_UP_LAG_MAX`] entries behind (`NOT_CAUGHT_UP`), no voter
    /// left (`LAST_VOTER`), the leader itself removed (`REMOVES_LEADER`), a
    /// change half done (`MEMBERSHIP_CHANGING`), and a change after which
    /// fewer than a majority of the voters answer (`QUORUM_AT_RISK`): the
    /// leader commits an empty entry and counts the members that hold it
    /// within [`PROBE_WAIT`].
    pub async fn change_voters(
        &self,
        add: &BTreeSet<NodeId>,
        remove: &BTreeSet<NodeId>,
        timeout: Duration,
    ) -> Result<MembershipView, AdminError> {
        if let Some(id) = add.intersection(remove).next() {
            return Err(AdminError::Invalid(format!(
                "node {id} is both added and removed"
            )));
        }
        self.require_leader()?;
        let deadline = Instant::now() + timeout;
        let view = self.membership();
        if view.joint {
            return Err(AdminError::Changing);
        }
        for id in add.iter().chain(remove) {
            if !view.addresses.contains_key(id) {
                return Err(AdminError::UnknownNode { id: *id });
            }
        }
        let voters: BTreeSet<NodeId> = view
            .voters
            .difference(remove)
            .chain(add.iter())
            .copied()
            .collect();
        if voters.is_empty() {
            return Err(AdminError::LastVoter(
                "the change would leave the group without a voter".into(),
            ));
        }
        if remove.contains(&self.node_id) {
            return Err(AdminError::RemovesLeader { id: self.node_id });
        }
        let learners_out: BTreeSet<NodeId> = view.learners.intersection(remove).copied().collect();
        if voters == view.voters && learners_out.is_empty() {
            return Ok(view);
        }
        for id in add.difference(&view.voters) {
            let lag = view.lag(*id);
            if lag.is_none_or(|lag| lag > CATCH_UP_LAG_MAX) {
                return Err(AdminError::NotCaughtUp {
                    id: *id,
                    matched: view.matched.get(id).copied().flatten(),
                    last: view.last_log_index,
                });
            }
        }
        let reachable = self.reachable(deadline).await?;
        let answering: BTreeSet<NodeId> = voters.intersection(&reachable).copied().collect();
        if answering.len() < voters.len() / 2 + 1 {
            return Err(AdminError::QuorumAtRisk { voters, reachable });
        }
        if voters != view.voters {
            self.change_membership(ChangeMembers::ReplaceAllVoters(voters), deadline)
                .await?;
        }
        if !learners_out.is_empty() {
            self.change_membership(ChangeMembers::RemoveNodes(learners_out), deadline)
                .await?;
        }
        Ok(self.membership())
    }

    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, Node>,
        deadline: Instant,
    ) -> Result<(), AdminError> {
        let what = format!("membership change {change:?}");
        match tokio::time::timeout(left(deadline), self.raft.change_membership(change, false)).await {
            Err(_) => Err(AdminError::Timeout { what, waited_ms: 0 }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.change_error(e)),
        }
    }

    fn change_error(&self, e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> AdminError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => AdminError::NotLeader {
                leader: self.leader(),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            )) => AdminError::Changing,
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::LearnerNotFound(l),
            )) => AdminError::UnknownNode { id: l.node_id },
            other => raft_error(other),
        }
    }

    /// The members that hold a fresh empty entry the leader commits now,
    /// waited for up to [`PROBE_WAIT`] (this node included).
    async fn reachable(&self, deadline: Instant) -> Result<BTreeSet<NodeId>, AdminError> {
        let written = tokio::time::timeout(left(deadline), self.raft.client_write(Batch::new(Vec::new())))
            .await
            .map_err(|_| AdminError::Timeout {
                what: "committing a probe entry".into(),
                waited_ms: 0,
            })?
            .map_err(|e| match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => AdminError::NotLeader {
                    leader: self.leader(),
                },
                other => raft_error(other),
            })?;
        let probe = written.log_id.index;
        let until = (Instant::now() + PROBE_WAIT).min(deadline);
        loop {
            let view = self.membership();
            let reached: BTreeSet<NodeId> = view
                .matched
                .iter()
                .filter(|(_, m)| m.is_some_and(|m| m >= probe))
                .map(|(id, _)| *id)
                .chain([self.node_id])
                .collect();
            if reached.len() >= view.addresses.len() || Instant::now() >= until {
                return Ok(reached);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Hands leadership to voter `to` (or, with `None`, to the other voter
    /// furthest along), and returns the leader once it leads; at once when
    /// this node is `to`. See the module doc for how; bounded by `timeout`.
    pub async fn transfer_leadership(
        &self,
        to: Option<NodeId>,
        timeout: Duration,
    ) -> Result<NodeId, AdminError> {
        if to == Some(self.node_id) && self.is_leader() {
            return Ok(self.node_id);
        }
        self.require_leader()?;
        let deadline = Instant::now() + timeout;
        let view = self.membership();
        if view.joint {
            return Err(AdminError::Changing);
        }
        // Asked for any other voter: another election won by a third node
        // did what was asked.
        let any = to.is_none();
        let target = match to {
            Some(id) if view.voters.contains(&id) => id,
            Some(id) if view.learners.contains(&id) => return Err(AdminError::NotVoter { id }),
            Some(id) => return Err(AdminError::UnknownNode { id }),
            None => view
                .voters
                .iter()
                .filter(|id| **id != self.node_id)
                .max_by_key(|id| view.matched.get(id).copied().flatten())
                .copied()
                .ok_or_else(|| AdminError::LastVoter("no other voter to take over".into()))?,
        };
        let timed_out = |what: &str| AdminError::Timeout {
            what: format!("transfer to node {target}: {what}"),
            waited_ms: timeout.as_millis() as u64,
        };
        // Writes go on while the target comes close; they pause only for
        // its last entries, and for at most `PAUSE_MAX`.
        loop {
            self.require_leader()?;
            if self
                .membership()
                .lag(target)
                .is_some_and(|lag| lag <= CATCH_UP_LAG_MAX)
            {
                break;
            }
            if Instant::now() >= deadline {
                return Err(timed_out("waiting for it to catch up"));
            }
            tokio::time::sleep(POLL).await;
        }
        let pause_until = (Instant::now() + PAUSE_MAX).min(deadline);
        // No new batch from here on: every write slot is ours.
        let _paused = tokio::time::timeout(
            left(pause_until),
            self.write_slots.clone().acquire_many_owned(self.slots as u32),
        )
        .await
        .map_err(|_| timed_out("waiting for the batches being written"))?
        .map_err(raft_error)?;
        // The target must hold every entry this node has.
        loop {
            self.require_leader()?;
            let view = self.membership();
            if view.lag(target) == Some(0) {
                break;
            }
            if Instant::now() >= pause_until {
                return Err(AdminError::NotCaughtUp {
                    id: target,
                    matched: view.matched.get(&target).copied().flatten(),
                    last: view.last_log_index,
                });
            }
            tokio::time::sleep(POLL).await;
        }
        self.raft.runtime_config().heartbeat(false);
        let _heartbeats = HeartbeatsOff(&self.raft);
        let again = Duration::from_millis(self.election_timeout_max_ms.max(50) + 50);
        // Writes stay paused through the election: bounded to a few tries.
        let deadline = (Instant::now() + ELECTION_TRIES * again).min(deadline);
        loop {
            let (vote, last_log_index, leader, leading) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                (
                    m.vote,
                    m.last_log_index,
                    m.current_leader,
                    m.state == ServerState::Leader,
                )
            };
            if !leading {
                return match leader {
                    Some(leader) if leader == target || (any && leader != self.node_id) => Ok(leader),
                    Some(leader) if leader != self.node_id => {
                        Err(AdminError::TransferredElsewhere { target, leader })
                    }
                    _ => self.wait_for_new_leader(target, any, deadline).await,
                };
            }
            if Instant::now() >= deadline {
                return Err(timed_out("waiting for it to win an election"));
            }
            self.send_timeout_now(target, vote, last_log_index, deadline)
                .await?;
            // Wait for the election; ask again if this node still leads
            // after the voters' leases ran out.
            let until = (Instant::now() + again).min(deadline);
            while Instant::now() < until && self.is_leader() {
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// Waits for a leader after this one stepped down: `target`, or with
    /// `any` (the caller asked for any other voter) whichever other voter
    /// won.
    async fn wait_for_new_leader(
        &self,
        target: NodeId,
        any: bool,
        deadline: Instant,
    ) -> Result<NodeId, AdminError> {
        loop {
            let leader = self.raft.metrics().borrow().current_leader;
            match leader {
                Some(leader) if leader == target || (any && leader != self.node_id) => return Ok(leader),
                Some(leader) if leader != self.node_id => {
                    return Err(AdminError::TransferredElsewhere { target, leader });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(AdminError::Timeout {
                    what: format!("transfer to node {target}: waiting for a new leader"),
                    waited_ms: 0,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn send_timeout_now(
        &self,
        target: NodeId,
        vote: Vote,
        last_log_index: Option<u64>,
        deadline: Instant,
    ) -> Result<(), AdminError> {
        let address = self
            .addresses
            .get(&target)
            .cloned()
            .or_else(|| self.membership().addresses.get(&target).cloned())
            .ok_or(AdminError::UnknownNode { id: target })?;
        let payload = encode(&TimeoutNow { vote, last_log_index }).map_err(raft_error)?;
        let message = WireMessage {
            kind: RpcKind::TimeoutNow,
            group: self.name.clone(),
            from: self.node_id,
            to: target,
            payload,
        };
        let reply = tokio::time::timeout(left(deadline), self.wire.call(target, &address, message))
            .await
            .map_err(|_| AdminError::Timeout {
                what: format!("asking node {target} to campaign"),
                waited_ms: 0,
            })?
            .map_err(|e| AdminError::TransferRefused {
                target,
                why: e.to_string(),
            })?;
        let answer: Result<(), String> = decode(&reply).map_err(raft_error)?;
        answer.map_err(|why| AdminError::TransferRefused { target, why })
    }

    /// Builds a snapshot of the group on this node now (any member, leader
    /// or not) and returns the log index it covers, once it is built; at
    /// once when the newest snapshot already covers everything applied.
    pub async fn snapshot_now(&self, timeout: Duration) -> Result<u64, AdminError> {
        let deadline = Instant::now() + timeout;
        let (applied, snapshot) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
        };
        let Some(applied) = applied else {
            return Err(AdminError::Invalid(
                "nothing applied yet: no state to snapshot".into(),
            ));
        };
        if let Some(snapshot) = snapshot.filter(|s| *s >= applied) {
            return Ok(snapshot);
        }
        let failures = self.snapshot_stats.failures();
        self.raft.trigger().snapshot().await.map_err(raft_error)?;
        loop {
            let snapshot = self.raft.metrics().borrow().snapshot.map(|l| l.index);
            if let Some(snapshot) = snapshot.filter(|s| *s >= applied) {
                return Ok(snapshot);
            }
            if self.snapshot_stats.failures() > failures {
                return Err(AdminError::SnapshotFailed(format!(
                    "a build covering index {applied} failed on this node (see its log)"
                )));
            }
            if Instant::now() >= deadline {
                return Err(AdminError::Timeout {
                    what: format!("a snapshot covering index {applied}"),
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
