//! The peer plane's callers: nodes, known by the certificate they presented
//! in the mutual-TLS handshake ([`PeerNode`]), and what each may send
//! ([`PeerPolicy`]):
//!
//! | message | from |
//! |---|---|
//! | Raft (`AppendEntries`, `Vote`, `SnapshotChunk`) for a group | that group's voters, as themselves |
//! | region `Apply` (grant, revoke, settled), `Report` | the ledger's nodes |
//! | region `Gossip` | any node the config names; only its own region's figures (and the pool, from a ledger node) are taken |
//! | ledger `TopUp` for region R | R's nodes |
//! | ledger `Apply` (`AdjustStock` only), `Summary`, `Audit` | any node the config names (it checked its client's role) |
//! | a forwarded call (client or control) | nodes of the same group |
//!
//! A group's voters are those the config names and, once an operator adds
//! nodes, the members its membership names now ([`PeerPolicy::set_members`]).
//! A node the config does not name is taken when its certificate names a
//! region the config knows (the cluster's CA vouches for it).
//!
//! A refusal is `UNAUTHENTICATED` / `PEER_NOT_AUTHENTICATED` (no node
//! certificate) or `PERMISSION_DENIED` / `PEER_NOT_ALLOWED`, and is counted
//! in `reservoir_refused_total{plane="peer"}`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use tonic::{Code, Status};

use super::CertIdentity;
use crate::server::status::status_with_info;

/// A node of the cluster, as its certificate names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerNode {
    /// Its node id.
    pub id: u64,
    /// Its region (its group's name).
    pub region: String,
}

/// Who may send a message.
#[derive(Clone, Copy, Debug)]
pub enum Senders<'a> {
    /// A voter of this node's region group.
    Group,
    /// A voter of the ledger group.
    Ledger,
    /// A node of this region.
    Region(&'a str),
    /// Any node this node's config names (every caller that gets past
    /// [`PeerPolicy::caller`] is one).
    AnyNode,
}

/// What each node may send to this one.
pub struct PeerPolicy {
    insecure: bool,
    group: BTreeSet<u64>,
    ledger: BTreeSet<u64>,
    /// Every node this node's config names, and its region.
    known: BTreeMap<u64, String>,
    /// The members of this node's groups as their memberships say now
    /// (nodes added or replaced since the config was written).
    live: RwLock<LiveMembers>,
}

/// The members of this node's groups, from their memberships.
#[derive(Default)]
struct LiveMembers {
    group: BTreeSet<u64>,
    ledger: BTreeSet<u64>,
}

impl PeerPolicy {
    /// The policy of a node whose region group is `group`, whose ledger
    /// group is `ledger`, and whose config names the nodes of `known`
    /// (id → region).
    pub fn new(group: BTreeSet<u64>, ledger: BTreeSet<u64>, known: BTreeMap<u64, String>) -> PeerPolicy {
        PeerPolicy {
            insecure: false,
            group,
            ledger,
            known,
            live: RwLock::new(LiveMembers::default()),
        }
    }

    /// No checks at all (`insecure = true`): every caller may send anything.
    pub fn insecure() -> PeerPolicy {
        PeerPolicy {
            insecure: true,
            group: BTreeSet::new(),
            ledger: BTreeSet::new(),
            known: BTreeMap::new(),
            live: RwLock::new(LiveMembers::default()),
        }
    }

    /// True when nothing is checked.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// The voters of the group named `name` on this node as its config
    /// names them: the region group's, or the ledger's.
    pub fn group_voters(&self, ledger: bool) -> &BTreeSet<u64> {
        if ledger { &self.ledger } else { &self.group }
    }

    /// Records the members of this node's region group (or, `ledger`, of
    /// the ledger group) as its membership says now: a node added by an
    /// operator may send what the group's voters may.
    pub fn set_members(&self, ledger: bool, members: BTreeSet<u64>) {
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        if ledger {
            live.ledger = members;
        } else {
            live.group = members;
        }
    }

    /// Whether `id` is a member of the region group (or the ledger's): one
    /// of the config's voters or in the group's membership now.
    pub fn is_member(&self, ledger: bool, id: u64) -> bool {
        if self.group_voters(ledger).contains(&id) {
            return true;
        }
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        if ledger {
            live.ledger.contains(&id)
        } else {
            live.group.contains(&id)
        }
    }

    /// The calling node, from its certificate; `None` in insecure mode.
    /// A caller without a node certificate, one whose certificate names a
    /// region other than the one this node's config gives it, or one the
    /// config does not name in a region it names none in, is refused. (A
    /// node the config does not name, of a region it knows, is a node
    /// added since the config was written: the cluster's CA vouches for
    /// its id and region, and what it may send is checked by
    /// [`PeerPolicy::require`].)
    pub fn caller(&self, extensions: &tonic::Extensions) -> Result<Option<PeerNode>, Status> {
        if self.insecure {
            return Ok(None);
        }
        match super::caller_identity(extensions) {
            Some(CertIdentity::Node(node)) => match self.known.get(&node.id) {
                Some(region) if *region == node.region => Ok(Some(node)),
                None if self.known.values().any(|r| *r == node.region) => Ok(Some(node)),
                Some(region) => Err(refused(
                    Code::Unauthenticated,
                    "PEER_NOT_AUTHENTICATED",
                    format!(
                        "certificate of node {} names region {}, this node's config says {region}",
                        node.id, node.region
                    ),
                )),
                None => Err(refused(
                    Code::PermissionDenied,
                    "PEER_NOT_ALLOWED",
                    format!(
                        "node {} ({}) is not a node this node's config names",
                        node.id, node.region
                    ),
                )),
            },
            _ => Err(refused(
                Code::Unauthenticated,
                "PEER_NOT_AUTHENTICATED",
                "the peer plane takes calls only from nodes with a certificate of the cluster's CA".into(),
            )),
        }
    }

    /// Whether `caller` may send `what`; `PERMISSION_DENIED` if not.
    pub fn require(&self, caller: Option<&PeerNode>, senders: Senders<'_>, what: &str) -> Result<(), Status> {
        let Some(node) = caller else {
            return if self.insecure {
                Ok(())
            } else {
                Err(refused(
                    Code::Unauthenticated,
                    "PEER_NOT_AUTHENTICATED",
                    format!("{what}: no node certificate"),
                ))
            };
        };
        let allowed = match senders {
            Senders::Group => self.is_member(false, node.id),
            Senders::Ledger => self.is_member(true, node.id),
            Senders::Region(region) => node.region == region,
            Senders::AnyNode => {
                self.known.contains_key(&node.id) || self.known.values().any(|r| *r == node.region)
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(refused(
                Code::PermissionDenied,
                "PEER_NOT_ALLOWED",
                format!("node {} ({}) may not send {what}", node.id, node.region),
            ))
        }
    }
}

/// A peer-plane refusal, counted.
pub fn refused(code: Code, reason: &'static str, message: String) -> Status {
    metrics::counter!("reservoir_refused_total", "plane" => "peer", "reason" => reason).increment(1);
    if crate::server::logging::call_line_allowed() {
        tracing::warn!(reason, detail = %message, "peer-plane message refused");
    }
    status_with_info(code, message, reason, vec![])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PeerPolicy {
        PeerPolicy::new(
            [1, 2, 3].into(),
            [1, 2, 3].into(),
            [(1, "us-east"), (2, "us-east"), (3, "us-east"), (4, "eu-west")]
                .into_iter()
                .map(|(id, r)| (id, r.to_string()))
                .collect(),
        )
    }

    fn node(id: u64, region: &str) -> PeerNode {
        PeerNode {
            id,
            region: region.into(),
        }
    }

    /// Each kind of sender is checked against the membership and regions.
    #[test]
    fn senders_are_checked() {
        let p = policy();
        let east = node(2, "us-east");
        let west = node(4, "eu-west");
        assert!(p.require(Some(&east), Senders::Group, "x").is_ok());
        assert!(p.require(Some(&east), Senders::Ledger, "x").is_ok());
        assert_eq!(
            p.require(Some(&west), Senders::Ledger, "a grant")
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        assert!(p.require(Some(&west), Senders::Region("eu-west"), "x").is_ok());
        assert!(p.require(Some(&west), Senders::Region("us-east"), "x").is_err());
        assert!(p.require(Some(&west), Senders::AnyNode, "x").is_ok());
        assert!(
            p.require(Some(&node(9, "mars")), Senders::AnyNode, "x").is_err(),
            "a node the config does not name is no node of this cluster"
        );
        assert_eq!(
            p.require(None, Senders::AnyNode, "x").unwrap_err().code(),
            Code::Unauthenticated
        );
        assert!(PeerPolicy::insecure().require(None, Senders::Ledger, "x").is_ok());
    }

    /// A node added to a group by an operator (not in the config) may send
    /// what the group's voters may once the membership names it, and no
    /// sooner; it may send what any node may from the start.
    #[test]
    fn members_added_later_are_voters() {
        let p = policy();
        let added = node(7, "us-east");
        assert!(p.require(Some(&added), Senders::Group, "x").is_err());
        assert!(p.require(Some(&added), Senders::AnyNode, "x").is_ok());
        p.set_members(false, [1, 2, 7].into());
        assert!(p.require(Some(&added), Senders::Group, "x").is_ok());
        assert!(p.require(Some(&added), Senders::Ledger, "x").is_err());
        p.set_members(true, [1, 2, 7].into());
        assert!(p.require(Some(&added), Senders::Ledger, "x").is_ok());
    }

    /// Without a certificate the caller is not authenticated.
    #[test]
    fn no_certificate_is_unauthenticated() {
        let status = policy().caller(&tonic::Extensions::new()).unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(
            reservoir_client::reason_of(&status).as_deref(),
            Some("PEER_NOT_AUTHENTICATED")
        );
        assert_eq!(
            PeerPolicy::insecure().caller(&tonic::Extensions::new()).unwrap(),
            None
        );
    }
}
