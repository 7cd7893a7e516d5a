//! A real one-node openraft group on the sled stores, restarted: what it
//! applied comes back from the snapshot plus openraft's replay of the log.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, RaftNetwork, RaftNetworkFactory, ServerState, Snapshot, SnapshotPolicy};
use reservoir_raft::{Batch, GroupRaft, NodeId, NodeStorage, StateReader, Vote};
use reservoir_tokens::RegionState;
use tempfile::TempDir;

use common::{C, adjust};

/// How long any wait on the group may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// A network for a group of one: there is never anyone to call.
struct NoPeers;

fn no_peer() -> NetworkError {
    NetworkError::new(&io::Error::other("a one-node group has no peers"))
}

impl RaftNetworkFactory<C> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _target: NodeId, _node: &BasicNode) -> NoPeers {
        NoPeers
    }
}

impl RaftNetwork<C> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(RPCError::Network(no_peer()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(RPCError::Network(no_peer()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot<C>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<C, Fatal<NodeId>>> {
        Err(StreamingError::Network(no_peer()))
    }
}

/// Snapshots only when asked, and keeps no log before a snapshot, so a
/// restart must use both the snapshot and the log after it.
fn raft_config() -> Arc<Config> {
    let config = Config {
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        ..Config::default()
    };
    Arc::new(config.validate().expect("valid raft config"))
}

/// Opens the group at `dir` (waiting for a shut-down instance to let go)
/// and starts its Raft node 1.
async fn start(dir: &TempDir) -> (NodeStorage, GroupRaft<RegionState>, StateReader<RegionState>) {
    let (storage, stores) = common::reopen(dir.path()).await;
    let reader = stores.state_machine.reader();
    let raft = GroupRaft::new(1, raft_config(), NoPeers, stores.log, stores.state_machine)
        .await
        .expect("start raft");
    (storage, raft, reader)
}

/// Writes before and after a snapshot (with the log before it purged) are
/// all in the state after a restart, and the restarted node leads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_snapshot_and_replays_log() {
    let dir = TempDir::new().expect("temp dir");
    let state_before;
    let last_index;
    {
        let (_storage, raft, reader) = start(&dir).await;
        assert!(!raft.is_initialized().await.expect("raft alive"));
        let members = BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]);
        raft.initialize(members).await.expect("initialize");
        raft.wait(Some(WAIT))
            .state(ServerState::Leader, "leader")
            .await
            .expect("leads");

        let written = raft
            .client_write(Batch::new(vec![
                adjust("r1", "sku-a", 10),
                adjust("r2", "sku-b", 3),
            ]))
            .await
            .expect("write");
        assert_eq!(written.data.len(), 2, "one outcome per command");
        assert!(written.data.iter().all(Result::is_ok), "{:?}", written.data);

        raft.trigger().snapshot().await.expect("trigger snapshot");
        raft.wait(Some(WAIT))
            .snapshot(written.log_id, "snapshot")
            .await
            .expect("snapshot");
        raft.wait(Some(WAIT))
            .purged(Some(written.log_id), "purged")
            .await
            .expect("purged");

        let written = raft
            .client_write(Batch::new(vec![adjust("r3", "sku-a", -4)]))
            .await
            .expect("write after snapshot");
        assert_eq!(written.data.len(), 1);
        last_index = written.log_id.index;
        state_before = reader.read(|state| state.machine.clone()).expect("read");
        assert_eq!(state_before.bucket("sku-a").map(|b| b.available), Some(6));
        raft.shutdown().await.expect("shutdown");
    }

    let (_storage, raft, reader) = start(&dir).await;
    assert!(raft.is_initialized().await.expect("raft alive"));
    raft.wait(Some(WAIT))
        .applied_index_at_least(Some(last_index), "replayed")
        .await
        .expect("replays the log after the snapshot");
    let state_after = reader.read(|state| state.machine.clone()).expect("read");
    assert_eq!(state_after, state_before);
    raft.wait(Some(WAIT))
        .state(ServerState::Leader, "leader again")
        .await
        .expect("leads");
    raft.shutdown().await.expect("shutdown");
}
