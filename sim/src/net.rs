//! The simulated network: every Raft message ([`SimWire`], the `Wire` seam)
//! and every control-plane call ([`SimControl`], the `ControlTransport`
//! seam) between simulated nodes, with delays drawn from the seed (a LAN
//! inside a region, a WAN between regions), loss, duplication (a request
//! delivered twice), reordering (each message's delay is its own), and
//! cuts (a node or a region partitioned, or one direction of one link).
//!
//! A message to a node that is down, or over a cut link, is lost: the
//! caller learns it as a transport error after the link's delay. A lost
//! reply is the same to the caller, but the call did run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reservoir_node::server::control::ControlTransport;
use reservoir_node::server::control::pb::control_server::Control;
use reservoir_node::server::control::pb::{ControlMessage, ControlReply};
use reservoir_node::server::service::ControlService;
use reservoir_raft::network::{BoxFuture, WireError, WireMessage};
use reservoir_raft::{NodeId, Router, Wire};
use tonic::Status;

use crate::rng::Rng;

/// The network's weather: how lossy and slow it is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weather {
    /// Chance a message (request or reply) is lost.
    pub loss: f64,
    /// Chance a request is delivered twice.
    pub dup: f64,
    /// One-way delay inside a region, in microseconds (low, high).
    pub lan_us: (u64, u64),
    /// One-way delay between regions, in milliseconds (low, high).
    pub wan_ms: (u64, u64),
}

impl Weather {
    /// A calm network.
    pub fn calm() -> Weather {
        Weather {
            loss: 0.0,
            dup: 0.0,
            lan_us: (200, 1_000),
            wan_ms: (40, 80),
        }
    }
}

/// Counters of what the network did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages sent (requests and replies).
    pub sent: u64,
    /// Messages lost (loss, cuts, nodes down).
    pub lost: u64,
    /// Requests delivered twice.
    pub duplicated: u64,
}

struct State {
    rng: Rng,
    weather: Weather,
    region_of: BTreeMap<NodeId, String>,
    /// Peer address → node.
    node_at: BTreeMap<String, NodeId>,
    /// Nodes up: their Raft router and control service.
    routers: BTreeMap<NodeId, Router>,
    controls: BTreeMap<NodeId, Arc<ControlService>>,
    /// Directed cuts: messages from `.0` to `.1` are lost (counted: two
    /// overlapping faults may cut one link).
    cut: BTreeMap<(NodeId, NodeId), u32>,
    stats: NetStats,
}

/// What happens to one message.
enum Leg {
    Arrives(Duration),
    Lost(Duration),
}

/// The network shared by every simulated node.
pub struct Net {
    state: Mutex<State>,
}

impl Net {
    /// A network between the nodes of `region_of` (node → region), reached
    /// at the addresses of `node_at`, drawing from `rng`.
    pub fn new(region_of: BTreeMap<NodeId, String>, node_at: BTreeMap<String, NodeId>, rng: Rng) -> Arc<Net> {
        Arc::new(Net {
            state: Mutex::new(State {
                rng,
                weather: Weather::calm(),
                region_of,
                node_at,
                routers: BTreeMap::new(),
                controls: BTreeMap::new(),
                cut: BTreeMap::new(),
                stats: NetStats::default(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Node `id` is up, receiving on `router` and `control`.
    pub fn up(&self, id: NodeId, router: Router, control: Arc<ControlService>) {
        let mut s = self.lock();
        s.routers.insert(id, router);
        s.controls.insert(id, control);
    }

    /// Node `id` is down: nothing reaches it or leaves it.
    pub fn down(&self, id: NodeId) {
        let mut s = self.lock();
        s.routers.remove(&id);
        s.controls.remove(&id);
    }

    /// Sets the weather.
    pub fn set_weather(&self, weather: Weather) {
        self.lock().weather = weather;
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        *self.lock().cut.entry((from, to)).or_default() += 1;
    }

    /// Heals the link from `from` to `to`.
    pub fn heal(&self, from: NodeId, to: NodeId) {
        let mut s = self.lock();
        if let Some(n) = s.cut.get_mut(&(from, to)) {
            *n -= 1;
            if *n == 0 {
                s.cut.remove(&(from, to));
            }
        }
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        self.lock().cut.clear();
    }

    /// What the network did so far.
    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }

    /// Draws one leg from `from` to `to`.
    fn leg(&self, from: NodeId, to: NodeId) -> Leg {
        let mut s = self.lock();
        s.stats.sent += 1;
        let same_region = s.region_of.get(&from) == s.region_of.get(&to);
        let w = s.weather;
        let delay = if from == to {
            Duration::from_micros(10)
        } else if same_region {
            Duration::from_micros(s.rng.range(w.lan_us.0, w.lan_us.1))
        } else {
            Duration::from_millis(s.rng.range(w.wan_ms.0, w.wan_ms.1))
        };
        let lost = from != to && (s.cut.contains_key(&(from, to)) || s.rng.chance(w.loss));
        if lost {
            s.stats.lost += 1;
            Leg::Lost(delay)
        } else {
            Leg::Arrives(delay)
        }
    }

    /// Whether a request from `from` to `to` is delivered twice.
    fn duplicate(&self) -> bool {
        let mut s = self.lock();
        let dup = s.weather.dup;
        let twice = s.rng.chance(dup);
        if twice {
            s.stats.duplicated += 1;
        }
        twice
    }

    fn router(&self, id: NodeId) -> Option<Router> {
        self.lock().routers.get(&id).cloned()
    }

    fn control(&self, id: NodeId) -> Option<Arc<ControlService>> {
        self.lock().controls.get(&id).cloned()
    }

    fn node_at(&self, addr: &str) -> Option<NodeId> {
        self.lock().node_at.get(addr).copied()
    }

    fn is_up(&self, id: NodeId) -> bool {
        self.lock().routers.contains_key(&id)
    }

    /// Moves one call from `from` to `to` and its answer back: `deliver`
    /// runs at the addressee (twice if the request is duplicated), `lost`
    /// makes the caller's error.
    async fn carry<T, F, Fut, E>(
        self: &Arc<Self>,
        from: NodeId,
        to: NodeId,
        deliver: F,
        lost: E,
    ) -> Result<T, E>
    where
        F: Fn() -> Option<Fut> + Send + Sync + 'static,
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        if !self.is_up(from) {
            return Err(lost);
        }
        match self.leg(from, to) {
            Leg::Lost(delay) => {
                tokio::time::sleep(delay).await;
                return Err(lost);
            }
            Leg::Arrives(delay) => tokio::time::sleep(delay).await,
        }
        let Some(first) = deliver() else {
            return Err(lost);
        };
        if self.duplicate() {
            // The copy arrives a little later; its answer goes nowhere.
            let again = Duration::from_micros(self.lock().rng.range(100, 5_000));
            if let Some(copy) = deliver() {
                tokio::spawn(async move {
                    tokio::time::sleep(again).await;
                    let _ = copy.await;
                });
            }
        }
        let answer = first.await;
        match self.leg(to, from) {
            Leg::Lost(delay) => {
                tokio::time::sleep(delay).await;
                Err(lost)
            }
            Leg::Arrives(delay) => {
                tokio::time::sleep(delay).await;
                if self.is_up(from) { Ok(answer) } else { Err(lost) }
            }
        }
    }
}

/// One node's side of the Raft network.
pub struct SimWire {
    /// The network.
    pub net: Arc<Net>,
    /// The sending node.
    pub from: NodeId,
}

impl Wire for SimWire {
    fn call(
        &self,
        to: NodeId,
        _addr: &str,
        message: WireMessage,
    ) -> BoxFuture<'_, Result<Vec<u8>, WireError>> {
        let net = self.net.clone();
        let from = self.from;
        Box::pin(async move {
            let target = net.clone();
            let deliver = move || {
                let router = target.router(to)?;
                let message = message.clone();
                Some(async move { router.deliver(message).await })
            };
            match net
                .carry(
                    from,
                    to,
                    deliver,
                    WireError::Unreachable(format!("node {to}: no answer")),
                )
                .await
            {
                Ok(answer) => answer,
                Err(e) => Err(e),
            }
        })
    }
}

/// One node's side of the control plane.
pub struct SimControl {
    /// The network.
    pub net: Arc<Net>,
    /// The sending node.
    pub from: NodeId,
}

impl ControlTransport for SimControl {
    fn call(
        &self,
        addr: &str,
        message: ControlMessage,
        ledger: bool,
        timeout: Option<Duration>,
    ) -> BoxFuture<'_, Result<ControlReply, Status>> {
        let net = self.net.clone();
        let from = self.from;
        let to = net.node_at(addr);
        let addr = addr.to_string();
        Box::pin(async move {
            let Some(to) = to else {
                return Err(Status::internal(format!("no simulated node at {addr}")));
            };
            let target = net.clone();
            let deliver = move || {
                let service = target.control(to)?;
                let message = message.clone();
                Some(async move {
                    let request = tonic::Request::new(message);
                    let reply = if ledger {
                        service.ledger(request).await
                    } else {
                        service.region(request).await
                    };
                    reply.map(tonic::Response::into_inner)
                })
            };
            let call = net.carry(
                from,
                to,
                deliver,
                Status::unavailable(format!("node {to}: transport error")),
            );
            let answer = match timeout {
                Some(t) => match tokio::time::timeout(t, call).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        return Err(Status::deadline_exceeded(format!(
                            "node {to}: no answer within {t:?}"
                        )));
                    }
                },
                None => call.await,
            };
            match answer {
                Ok(reply) => reply,
                Err(status) => Err(status),
            }
        })
    }
}
