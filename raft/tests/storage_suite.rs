//! openraft's storage conformance suite against the sled stores.

mod common;

use openraft::testing::{StoreBuilder, Suite};
use reservoir_raft::{LogStore, NodeStorage, StateMachineStore, StorageError};
use reservoir_tokens::RegionState;
use tempfile::TempDir;

use common::C;

/// Keeps a store's database and its directory alive for one suite test.
/// Fields drop in order: the database closes before its directory goes.
type Guard = (NodeStorage, TempDir);

/// Builds each store on a fresh sled database in a fresh temp dir.
struct SledBuilder;

impl StoreBuilder<C, LogStore<RegionState>, StateMachineStore<RegionState>, Guard> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(Guard, LogStore<RegionState>, StateMachineStore<RegionState>), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let (storage, stores) = common::open(dir.path());
        Ok(((storage, dir), stores.log, stores.state_machine))
    }
}

/// The sled log and state machine stores pass openraft's whole storage suite.
#[test]
fn sled_store_passes_openraft_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
