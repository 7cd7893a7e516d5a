//! `reservoir node`: one node, wired in one readable function ([`run`]) —
//! validate config → open storage → network → Raft → serve gRPC and HTTP
//! until shutdown.
//!
//! Where things are:
//! - [`config`]: the node's TOML config file, its environment overrides
//!   (`RESERVOIR_*`) and its validation; [`check`]: what `--check-config`
//!   checks beyond the fields (TLS files, the data directory);
//! - [`node`]: what the services share ([`node::Node`]): the region's write
//!   path, linearizable reads, forwarding clients, top-ups;
//! - [`service`]: the gRPC services (`Inventory`, `Admin`, and the internal
//!   `Control`), one file each;
//! - [`security`]: who may call (TLS on both listeners, API keys and roles
//!   on the client plane, what each node may send on the peer plane);
//! - [`edge`]: `reservoir.v1` requests → validated domain commands, and
//!   domain values → messages;
//! - [`status`]: the one mapping from domain errors and the node's own
//!   failures (`NO_LEADER`, `OVERLOADED`) to gRPC statuses;
//! - [`control`]: the control plane's messages and client (regions ↔
//!   ledger); [`ledger`]: the ledger leader's loop (reports, settlement,
//!   transfers, audit);
//! - [`demand`], [`availability`]: the demand meter, and CRDT availability
//!   gossip;
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, `/status`;
//! - [`health`]: readiness, one evaluation for `/readyz` and gRPC health,
//!   and the drain before a stop;
//! - [`logging`]: the log subscriber (text or JSON, `[log]`, `RUST_LOG`)
//!   and the per-call log budget; [`telemetry`]: the metrics recorder, the
//!   catalog of every metric, the bound on per-SKU series;
//! - [`backup`]: the backup file, and restoring a node from it;
//! - [`operate`]: what the Admin service's operator calls share (which
//!   group a call names, their bounds and refusals), and the task that
//!   keeps the peer policy's view of each group's members current;
//! - [`clock`]: the time seam (wall and monotonic clocks) and each group's bounded logical time (`GroupClock`).
//!
//! Imports run one way: `http` → `health` → `service` → `node` → `ledger` →
//! `control` → `config` → `security` (its types), `availability`; nothing
//! below `service` imports it.
//!
//! Two gRPC listeners: the client plane on `grpc_addr` (`Inventory`,
//! `Admin`, `grpc.health.v1.Health`, server reflection) and the peer plane on `peer_addr` (Raft, `Control`, and
//! `Inventory`/`Admin` for calls forwarded to a leader). Each has its own
//! bounds: message size per service (64 KiB for client calls, a
//! `ReserveBatch` included; Raft's and the control plane's own limits), concurrent streams per connection,
//! connections per remote address, header size.
//!
//! Caveats: messages over 64 KiB
//! (`reservoir_tokens::limits::MESSAGE_BYTES_MAX`) are refused by the gRPC
//! server's decoding limit, not here; the edge sees only decoded messages.

pub mod availability;
pub mod backup;
pub mod check;
pub mod clock;
pub mod config;
mod connections;
pub mod control;
pub mod demand;
pub mod edge;
pub mod health;
pub mod http;
pub mod ledger;
pub mod logging;
pub mod node;
pub mod operate;
pub mod security;
pub mod service;
pub mod status;
pub mod telemetry;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reservoir_client::Channels;
use reservoir_proto::v1::admin_server::AdminServer;
use reservoir_proto::v1::inventory_server::InventoryServer;
use reservoir_raft::{
    Group, GroupOptions, NodeStorage, ProposeError, RaftService, Router, StorageOptions, TonicWire,
};
use reservoir_tokens::limits::MESSAGE_BYTES_MAX;
use reservoir_tokens::{LedgerState, RegionApplied, RegionCommand, RegionOp, RegionOutcome, RegionState};
use tokio::sync::watch;

use crate::server::clock::{Clock, SystemClock};
use crate::server::config::{NodeConfig, Peer};
use crate::server::control::{ControlClient, RegionCall, RegionReply};
use crate::server::health::Health;
use crate::server::ledger::LedgerHost;
use crate::server::node::Node;
use crate::server::security::clients::AuthenticateLayer;
use crate::server::security::{PeerPolicy, Tls};
use crate::server::service::{AdminService, ControlService, InventoryService, Plane};

/// How often the leader checks whether a hold has fallen due.
pub const EXPIRE_TICK: Duration = Duration::from_millis(100);
/// The most an idle region's logical clock may lag its leader's time before
/// the leader moves it (with an `Expire` that expires nothing).
pub const CLOCK_TICK_MS: u64 = 1_000;
/// How long the leader waits before writing its retention settings again.
pub const RETENTION_RETRY: Duration = Duration::from_secs(5);
/// How often regions exchange availability figures.
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(500);
/// The ledger's Raft group id.
pub const LEDGER_GROUP: &str = "ledger";
/// How long shutdown waits for in-flight calls before closing anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Most concurrent streams (calls) on one client-plane connection.
pub const CLIENT_STREAMS_PER_CONNECTION: u32 = 256;
/// The longest a client call may run on a node (a reserve may wait 5 s for
/// a top-up and 6 s for a forward); then it is cancelled.
pub const CALL_TIMEOUT_MAX: Duration = Duration::from_secs(30);
/// HTTP/2 pings on both listeners, so a silent connection is closed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a ping may go unanswered before its connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most concurrent streams on one peer-plane connection (a node keeps one
/// connection per peer and sends Raft, control and forwarded calls on it).
pub const PEER_STREAMS_PER_CONNECTION: u32 = 4_096;
/// Most open peer-plane connections from one remote address.
pub const PEER_CONNECTIONS_PER_ADDRESS: usize = 64;
/// Most open client-plane connections from one remote address (a load
/// balancer in front of the nodes is one address: raise it there).
pub const CLIENT_CONNECTIONS_PER_ADDRESS: usize = 256;
/// Largest header block a caller may send (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`).
pub const HEADER_LIST_BYTES_MAX: u32 = 16 * 1024;

/// Runs a node until SIGTERM / Ctrl-C; returns once it has stopped cleanly.
pub async fn run(config: NodeConfig) -> Result<(), String> {
    let metrics = telemetry::install()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    // Storage: one sled database per node, one set of trees per group.
    let data_dir = config.data_dir.clone();
    let storage = tokio::task::spawn_blocking(move || NodeStorage::open(&StorageOptions::new(data_dir)))
        .await
        .map_err(|e| format!("opening storage: {e}"))?
        .map_err(|e| format!("opening storage at {}: {e}", config.data_dir.display()))?;
    let storage = Arc::new(storage);
    let region = config.region.clone();
    let stores = {
        let storage = storage.clone();
        let group_id = region.clone();
        tokio::task::spawn_blocking(move || storage.open_group(&group_id, RegionState::new(group_id.clone())))
            .await
            .map_err(|e| format!("opening group: {e}"))?
            .map_err(|e| format!("opening group {region}: {e}"))?
    };

    // TLS material (none in insecure mode), read before anything starts.
    let tls = match &config.tls {
        Some(files) if !config.insecure => Some(Tls::load(files, config.node_id, &config.region)?),
        _ => None,
    };
    let peer_policy = if config.insecure {
        PeerPolicy::insecure()
    } else {
        peer_policy(&config)
    };

    // Network and Raft.
    let router = Router::new(config.node_id);
    // One channel per peer, shared by Raft, the control plane and
    // forwarding; mutual TLS unless insecure.
    let channels = Arc::new(match &tls {
        Some(tls) => Channels::with_tls(tls.peer_client()),
        None => Channels::new(),
    });
    let wire = Arc::new(TonicWire::new(channels.clone()));
    let options = region_group_options(&config);

    // Bind every listener before starting Raft, so a taken port fails fast.
    let grpc_listener = bind(config.grpc_addr, "grpc_addr").await?;
    let peer_listener = bind(config.peer_addr, "peer_addr").await?;
    let http_listener = bind(config.http_addr, "http_addr").await?;

    let ledger_stores = if config.hosts_ledger() {
        let storage = storage.clone();
        Some(
            tokio::task::spawn_blocking(move || storage.open_group(LEDGER_GROUP, LedgerState::new()))
                .await
                .map_err(|e| format!("opening ledger: {e}"))?
                .map_err(|e| format!("opening ledger: {e}"))?,
        )
    } else {
        None
    };
    let group = Group::start(options.clone(), stores, wire.clone(), &router)
        .await
        .map_err(|e| e.to_string())?;

    // The control plane: this region's nodes directly, the others (and the
    // ledger) as configured — through the WAN emulator in a local cluster.
    let (regions, ledger_nodes) = control_peers(&config);
    let control = Arc::new(ControlClient::new(regions, ledger_nodes, channels.clone()));
    let ledger = match ledger_stores {
        Some(stores) => {
            let ledger_group = Group::start(ledger_group_options(&config), stores, wire, &router)
                .await
                .map_err(|e| e.to_string())?;
            Some(Arc::new(LedgerHost::new(
                Arc::new(ledger_group),
                control.clone(),
                clock.clone(),
                config.rebalance.clone(),
            )?))
        }
        None => None,
    };
    let node = Arc::new(Node::new(
        config.clone(),
        Arc::new(group),
        clock,
        channels,
        control,
        ledger.clone(),
        peer_policy,
    ));

    tokio::spawn(node.observe_time());
    telemetry::register(&node);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // The standard gRPC health service (asked without credentials): it
    // follows readiness, so it says NOT_SERVING until the node is ready.
    let health = Arc::new(Health::new(node.clone()));
    let (reporter, health_service) = tonic_health::server::health_reporter();
    for service in health::SERVICES {
        reporter
            .set_service_status(service, tonic_health::ServingStatus::NotServing)
            .await;
    }
    tokio::spawn(health.clone().publish(reporter));
    // The same service on the HTTP listener (cleartext HTTP/2), for probes.
    let grpc_health = health_service.clone();

    // The client plane: Inventory and Admin for authenticated clients, with
    // gRPC health and reflection.
    let grpc = {
        let inventory = InventoryServer::new(InventoryService::new(node.clone(), Plane::Client))
            .max_decoding_message_size(MESSAGE_BYTES_MAX);
        let admin = AdminServer::new(AdminService::new(node.clone(), Plane::Client))
            .max_decoding_message_size(MESSAGE_BYTES_MAX);
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(reservoir_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| format!("gRPC reflection: {e}"))?;
        let router = grpc_server(
            CLIENT_STREAMS_PER_CONNECTION,
            tls.as_ref().map(Tls::client_server),
            "client",
        )?
        .timeout(CALL_TIMEOUT_MAX)
        .layer(AuthenticateLayer::new(node.authenticator_arc()))
        .add_service(inventory)
        .add_service(admin)
        .add_service(health_service)
        .add_service(reflection);
        let incoming = grpc_incoming(grpc_listener, CLIENT_CONNECTIONS_PER_ADDRESS, "client");
        let mut rx = shutdown_rx.clone();
        tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
        })
    };
    // The peer plane: Raft, the control plane, and forwarded client calls,
    // from nodes of the cluster only (mutual TLS).
    let peer = {
        let inventory = InventoryServer::new(InventoryService::new(node.clone(), Plane::Peer))
            .max_decoding_message_size(MESSAGE_BYTES_MAX);
        let admin = AdminServer::new(AdminService::new(node.clone(), Plane::Peer))
            .max_decoding_message_size(MESSAGE_BYTES_MAX);
        let authorize = raft_authorizer(node.clone());
        let router = grpc_server(
            PEER_STREAMS_PER_CONNECTION,
            tls.as_ref().map(Tls::peer_server),
            "peer",
        )?
        .add_service(RaftService::server(router, authorize))
        .add_service(ControlService::server(node.clone()))
        .add_service(inventory)
        .add_service(admin);
        let incoming = grpc_incoming(peer_listener, PEER_CONNECTIONS_PER_ADDRESS, "peer");
        let mut rx = shutdown_rx.clone();
        tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
        })
    };
    let http = {
        let app = crate::server::http::router(node.clone(), metrics, health.clone(), grpc_health);
        let mut rx = shutdown_rx.clone();
        tokio::spawn(async move {
            axum::serve(http_listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
        })
    };
    let expirer = tokio::spawn(expire_loop(node.clone(), shutdown_rx.clone()));
    tokio::spawn(operate::follow_members(node.clone(), shutdown_rx.clone()));
    let ledger_loop = ledger
        .clone()
        .map(|host| tokio::spawn(host.run(shutdown_rx.clone())));
    let gossip = (!config.standalone).then(|| tokio::spawn(gossip_loop(node.clone(), shutdown_rx.clone())));
    tracing::info!(
        node_id = config.node_id,
        region = %config.region,
        grpc_addr = %config.grpc_addr,
        grpc_advertised = %config.grpc_advertised(),
        peer_addr = %config.peer_addr,
        peer_advertised = %config.peer_advertised(),
        http_addr = %config.http_addr,
        version = telemetry::VERSION,
        drain_ms = config.drain_ms,
        "reservoir node serving clients on grpc_addr (reached at grpc_advertised), peers on peer_addr \
         (reached at peer_advertised), HTTP on http_addr"
    );
    if config.insecure {
        tracing::warn!("INSECURE: plaintext, no authentication");
    }

    wait_for_signal().await;
    // Not ready first (`/readyz`, gRPC health), still serving: load
    // balancers take the node out before it stops accepting calls. A
    // second signal cuts the drain short.
    health.start_draining();
    if config.drain_ms > 0 {
        tracing::info!(
            drain_ms = config.drain_ms,
            "draining: not ready, serving calls for drain_ms before shutting down"
        );
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(config.drain_ms)) => {}
            _ = wait_for_signal() => tracing::info!("second signal: the drain is cut short"),
        }
    }
    tracing::info!(node_id = config.node_id, "shutting down");
    let _ = shutdown_tx.send(true);
    // In-flight calls finish (their proposals commit or fail) before the
    // servers return; bounded so a stuck call cannot hold the process.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = grpc.await;
        let _ = peer.await;
        let _ = http.await;
        let _ = expirer.await;
        if let Some(task) = ledger_loop {
            let _ = task.await;
        }
        if let Some(task) = gossip {
            let _ = task.await;
        }
    })
    .await;
    if let Some(host) = &ledger {
        host.group().shutdown().await;
    }
    node.group().shutdown().await;
    storage.flush().await.map_err(|e| format!("final flush: {e}"))?;
    tracing::info!(node_id = config.node_id, "stopped");
    Ok(())
}

/// The options of this node's region group, as its config says (the
/// whole-cluster simulation builds its nodes' groups with it too).
pub fn region_group_options(config: &NodeConfig) -> GroupOptions {
    let members: BTreeMap<u64, String> = config.peers.iter().map(|p| (p.id, p.peer.to_string())).collect();
    let mut options = GroupOptions::new(config.region.clone(), config.node_id, members);
    options.heartbeat_ms = config.raft.heartbeat_ms;
    options.election_timeout_min_ms = config.raft.election_timeout_min_ms;
    options.election_timeout_max_ms = config.raft.election_timeout_max_ms;
    options.proposal_queue_max = config.raft.proposal_queue_max;
    options.batches_in_flight = config.raft.batches_in_flight;
    options.snapshot_logs = config.raft.snapshot_logs;
    options.snapshot_logs_to_keep = config.raft.snapshot_logs_kept;
    options.snapshot_chunk_bytes = config.raft.snapshot_chunk_bytes;
    options.join = config.join;
    options
}

/// The options of the ledger group on a ledger host: the region group's
/// timing, the ledger's voters.
pub fn ledger_group_options(config: &NodeConfig) -> GroupOptions {
    let mut options = region_group_options(config);
    options.group = LEDGER_GROUP.to_string();
    options.members = config
        .ledger_peers
        .iter()
        .map(|p| (p.id, p.peer.to_string()))
        .collect();
    options
}

/// Whom the control plane reaches: every region's nodes (this region's
/// from `peers`) and the ledger's nodes.
pub fn control_peers(config: &NodeConfig) -> (BTreeMap<String, Vec<Peer>>, Vec<Peer>) {
    let mut regions: BTreeMap<String, Vec<Peer>> = config
        .regions
        .iter()
        .map(|r| (r.name.clone(), r.nodes.clone()))
        .collect();
    regions.insert(config.region.clone(), config.peers.clone());
    let ledger_nodes = if config.hosts_ledger() {
        config.ledger_peers.clone()
    } else {
        config.ledger_nodes.clone()
    };
    (regions, ledger_nodes)
}

/// A gRPC server with the bounds both listeners share (header size, pings)
/// and `streams` calls per connection; TLS with `tls` unless insecure.
fn grpc_server(
    streams: u32,
    tls: Option<tonic::transport::ServerTlsConfig>,
    plane: &str,
) -> Result<tonic::transport::Server, String> {
    let builder = tonic::transport::Server::builder()
        .max_concurrent_streams(streams)
        .http2_max_header_list_size(HEADER_LIST_BYTES_MAX)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    match tls {
        Some(tls) => builder
            .tls_config(tls)
            .map_err(|e| format!("{plane} plane TLS: {e}")),
        None => Ok(builder),
    }
}

async fn bind(addr: SocketAddr, field: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{field} {addr}: {e}"))
}

/// The accepted gRPC connections of one listener, each with TCP_NODELAY
/// set, at most `per_address` open at once from one remote address (more
/// are closed at once, before TLS or HTTP/2 allocate anything for them).
/// tonic ignores the builder's `tcp_nodelay` with `serve_with_incoming*`;
/// without it, Nagle's algorithm holds back a response's last small write
/// (the trailers) until the peer's delayed ACK, up to 40 ms on Linux, for
/// client calls and for Raft replies alike.
fn grpc_incoming(
    listener: tokio::net::TcpListener,
    per_address: usize,
    plane: &'static str,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<connections::Counted>> {
    connections::limited(listener, per_address, plane)
}

/// Who may send Raft messages: the voters of the group, as themselves (the
/// `from` of the message is the node its certificate names).
fn raft_authorizer(node: Arc<Node>) -> Option<reservoir_raft::network::Authorize> {
    if node.peer_policy().is_insecure() {
        return None;
    }
    Some(Arc::new(
        move |extensions: &tonic::Extensions, group: &str, from: u64| {
            let policy = node.peer_policy();
            let caller = policy.caller(extensions)?;
            let ledger = group == LEDGER_GROUP;
            let member = caller.as_ref().is_some_and(|c| c.id == from) && policy.is_member(ledger, from);
            if member && (ledger || group == node.region()) {
                Ok(())
            } else {
                let who = caller.map_or_else(|| "?".to_string(), |c| format!("node {} ({})", c.id, c.region));
                Err(crate::server::security::peers::refused(
                    tonic::Code::PermissionDenied,
                    "PEER_NOT_ALLOWED",
                    format!("{who} may not send Raft messages as node {from} of group {group}"),
                ))
            }
        },
    ))
}

/// The policy a node's config gives: its region group's voters, the
/// ledger's voters, and the region of every node it names.
fn peer_policy(config: &NodeConfig) -> PeerPolicy {
    let group = config.peers.iter().map(|p| p.id).collect();
    let ledger_list = if config.hosts_ledger() {
        &config.ledger_peers
    } else {
        &config.ledger_nodes
    };
    let ledger = ledger_list.iter().map(|p| p.id).collect();
    let mut known: BTreeMap<u64, String> = config
        .peers
        .iter()
        .map(|p| (p.id, config.region.clone()))
        .collect();
    for r in &config.regions {
        for p in &r.nodes {
            known.insert(p.id, r.name.clone());
        }
    }
    PeerPolicy::new(group, ledger, known)
}

/// Waits for SIGTERM or Ctrl-C.
async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Publishes this region's figures (and, on ledger hosts, the pool) into the
/// availability view, and exchanges the view with one node of every other
/// region, every [`GOSSIP_INTERVAL`].
pub async fn gossip_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(GOSSIP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        // Gossip markers are the sender's wall clock: they are compared
        // across groups, whose logical times may differ (README, time).
        let now = node.wall_ms();
        let index = node.group().status().applied_index.unwrap_or(0);
        if let Ok(figures) = node.group().read(|s| {
            s.buckets()
                .map(|(k, b)| (k.clone(), b.available))
                .collect::<Vec<_>>()
        }) {
            node.availability().publish(node.region(), index, now, figures);
        }
        if let Some(host) = node.ledger() {
            let index = host.group().status().applied_index.unwrap_or(0);
            if let Ok(pools) = host.group().read(|l| {
                l.skus()
                    .iter()
                    .map(|(k, s)| (k.clone(), s.pool))
                    .collect::<Vec<_>>()
            }) {
                node.availability()
                    .publish(crate::server::availability::POOL, index, now, pools);
            }
        }
        let digest = node.gossip_digest();
        let others: Vec<String> = node
            .control()
            .regions()
            .filter(|r| *r != node.region())
            .map(str::to_string)
            .collect();
        let calls = others.iter().map(|region| {
            let call = RegionCall::Gossip(digest.clone());
            let node = node.clone();
            async move {
                if let Ok(RegionReply::Gossip(theirs)) =
                    node.control().region(region, &call, GOSSIP_INTERVAL).await
                {
                    // The answer, too, counts only for the region called
                    // (and the pool, if the ledger lives there).
                    let theirs = if node.peer_policy().is_insecure() {
                        theirs
                    } else {
                        let ledger_there = node
                            .control()
                            .region_hosts(region, node.peer_policy().group_voters(true));
                        theirs.only_from(region, ledger_there, node.wall_ms())
                    };
                    node.availability().merge(theirs);
                }
            }
        });
        crate::server::ledger::futures_join_all(calls).await;
    }
}

/// On the leader, expires holds as they fall due: checks every
/// [`EXPIRE_TICK`], and proposes `Expire` when the earliest hold is due, or
/// when the region's logical clock is [`CLOCK_TICK_MS`] behind the leader's
/// time (so an idle region writes one small entry a second, and a node that
/// restarts estimates the group's time from a clock at most that old; see
/// [`clock`]). Replicas never expire on their own clock.
/// The leader also writes this node's retention settings into the region's
/// state when they differ (at most once per [`RETENTION_RETRY`]).
pub async fn expire_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EXPIRE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retention_tried: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let group = node.group();
        if !group.is_leader() {
            continue;
        }
        let wanted = node.config().retention.to_state();
        let stale = group.read(|s| s.retention() != wanted).unwrap_or(false);
        if stale && retention_tried.is_none_or(|at| at.elapsed() >= RETENTION_RETRY) {
            retention_tried = Some(tokio::time::Instant::now());
            let cmd = RegionCommand {
                now_ms: node.now_ms(),
                op: RegionOp::SetRetention { retention: wanted },
            };
            if let Ok(Err(e)) = propose_bounded(group, cmd, "retention").await {
                tracing::warn!(retention = ?wanted, error = %e, "retention setting refused");
            }
        }
        let now_ms = node.now_ms();
        let (due, behind) = group
            .read(|s| {
                let due = s.next_expiry_ms().is_some_and(|at| at <= now_ms);
                (due, now_ms.saturating_sub(s.clock_ms()) >= CLOCK_TICK_MS)
            })
            .unwrap_or((false, false));
        if !due && !behind {
            continue;
        }
        // An idle region's logical clock moves at least every
        // CLOCK_TICK_MS (an `Expire` expires nothing then), so a node that
        // restarts and leads starts from a clock at most that old.
        // Sweep until nothing due is left (each command expires a bounded number).
        loop {
            let cmd = RegionCommand {
                now_ms: node.now_ms(),
                op: RegionOp::Expire,
            };
            match propose_bounded(group, cmd, "expire").await {
                Ok(Ok(RegionApplied::Expired { count, more_due })) => {
                    metrics::counter!("reservoir_expired_total").increment(count as u64);
                    if !more_due {
                        break;
                    }
                }
                Ok(other) => {
                    tracing::error!(outcome = ?other, "expire sweep: unexpected outcome");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// Proposes a background task's command (bounded by the group's own
/// proposal bound, [`Group::propose_timeout`]). A timeout is reported: a log
/// line and `reservoir_background_propose_timeouts_total` with the task's
/// name; the task goes on at its next tick.
async fn propose_bounded(
    group: &Group<RegionState>,
    cmd: RegionCommand,
    task: &'static str,
) -> Result<RegionOutcome, ProposeError> {
    let result = group.propose(cmd).await;
    if let Err(e @ ProposeError::Timeout { .. }) = &result {
        metrics::counter!("reservoir_background_propose_timeouts_total", "task" => task).increment(1);
        tracing::warn!(task, error = %e, "background proposal timed out; trying again at the next tick");
    }
    result
}
