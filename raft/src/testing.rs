//! An in-process network for tests (and the seam a simulation plugs into):
//! nodes' [`Router`]s called directly, with links that can be cut and healed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::config::NodeId;
use crate::network::{BoxFuture, Router, Wire, WireError, WireMessage};

/// A network between nodes of one process. A cut link is cut in both
/// directions; a detached node is down.
#[derive(Clone, Default)]
pub struct LocalNet {
    inner: Arc<Mutex<NetState>>,
}

#[derive(Default)]
struct NetState {
    routers: BTreeMap<NodeId, Router>,
    /// Cut links, stored as (smaller id, larger id).
    cut: BTreeSet<(NodeId, NodeId)>,
}

impl LocalNet {
    /// An empty network.
    pub fn new() -> LocalNet {
        LocalNet::default()
    }

    /// Connects (or reconnects, after a restart) a node's router.
    pub fn attach(&self, router: Router) {
        self.lock().routers.insert(router.node_id(), router);
    }

    /// Disconnects a node (it crashed): messages to it are unreachable.
    pub fn detach(&self, node: NodeId) {
        self.lock().routers.remove(&node);
    }

    /// Cuts every link of `node`.
    pub fn isolate(&self, node: NodeId) {
        let mut s = self.lock();
        let others: Vec<NodeId> = s.routers.keys().copied().filter(|&n| n != node).collect();
        for other in others {
            s.cut.insert(pair(node, other));
        }
    }

    /// Cuts the link between `a` and `b`.
    pub fn cut(&self, a: NodeId, b: NodeId) {
        self.lock().cut.insert(pair(a, b));
    }

    /// Heals every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// The wire every node sends through.
    pub fn wire(&self) -> Arc<dyn Wire> {
        Arc::new(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}

impl Wire for LocalNet {
    fn call(
        &self,
        to: NodeId,
        _addr: &str,
        message: WireMessage,
    ) -> BoxFuture<'_, Result<Vec<u8>, WireError>> {
        let target = {
            let s = self.lock();
            if s.cut.contains(&pair(message.from, to)) {
                Err(WireError::Unreachable(format!(
                    "link {}-{} is cut",
                    message.from, to
                )))
            } else {
                s.routers
                    .get(&to)
                    .cloned()
                    .ok_or_else(|| WireError::Unreachable(format!("node {to} is down")))
            }
        };
        Box::pin(async move {
            let router = target?;
            let from = message.from;
            let reply = router.deliver(message).await;
            // A link cut while the message was in flight loses the reply.
            if self.lock().cut.contains(&pair(from, to)) {
                return Err(WireError::Unreachable(format!("link {from}-{to} cut in flight")));
            }
            reply
        })
    }
}
