//! openraft's own storage test suite (`openraft::testing::Suite`) on pfs-meta's Raft log and
//! state machine, each built on a fresh temporary directory.

use openraft::testing::{StoreBuilder, Suite};
use pfs_common::layout::LayoutPolicy;
use pfs_meta::raft::log_store::LogStore;
use pfs_meta::raft::state_machine::StateMachine;
use pfs_meta::raft::{StorageError, TypeConfig};
use tempfile::TempDir;

struct OnDisk;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for OnDisk {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = LogStore::open(dir.path()).expect("a new log opens");
        let sm = StateMachine::open(dir.path(), LayoutPolicy::default(), None).expect("a new state machine opens");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(OnDisk).unwrap();
}
