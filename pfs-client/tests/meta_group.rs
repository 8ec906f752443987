//! A metadata group of three nodes, each its own process: one namespace, replicated through
//! the Raft log, that survives kill -9 of its leader; the killed node catches up when it
//! comes back. Clients and storage servers know every node's address and find the leader
//! themselves (a follower answers NotLeader).

use pfs_common::config::Config;
use pfs_common::wire::raft::NodeStatus;
use pfs_common::ServerId;
use pfs_testkit::{meta_leader_of, meta_statuses, DaemonKind, LocalCluster};
use std::time::{Duration, Instant};

async fn statuses(config: &Config) -> Vec<(u64, Option<NodeStatus>)> {
    meta_statuses(config).await
}

/// Polls the nodes until `done` holds of their statuses, for at most 30 s.
async fn wait_for(config: &Config, what: &str, done: impl Fn(&[(u64, Option<NodeStatus>)]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = statuses(config).await;
        if done(&st) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never happened; the nodes say {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn leader_of(st: &[(u64, Option<NodeStatus>)]) -> Option<u64> {
    meta_leader_of(st)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_namespace_survives_kill_9_of_the_leader_and_the_node_catches_up() {
    let mut cluster = LocalCluster::start_group(3, 2, |_| {}).await.unwrap();
    let config = cluster.config().clone();
    // A node learns the members and the leader from the leader's first append: wait for it.
    wait_for(&config, "every node knowing the three members and the leader", |st| {
        leader_of(st).is_some_and(|l| {
            st.iter().all(|(_, s)| s.as_ref().is_some_and(|s| s.members.len() == 3 && s.leader == Some(l)))
        })
    })
    .await;
    let leader = leader_of(&statuses(&config).await).unwrap();

    // Acknowledged before the kill: all of it must be there after.
    let client = cluster.client().await.unwrap();
    let mut made = Vec::new();
    for i in 0..30 {
        let p = format!("/before-{i:02}");
        client.mkdir_all(&p).await.unwrap();
        made.push(p);
    }
    drop(client);

    cluster.kill(DaemonKind::Meta(leader));
    wait_for(&config, "a new leader", |st| leader_of(st).is_some_and(|l| l != leader)).await;
    let after = cluster.client().await.expect("a new client finds the new leader");
    let mut names: Vec<String> =
        after.readdir("/").await.unwrap().into_iter().map(|e| format!("/{}", e.name)).collect();
    names.sort();
    assert_eq!(names, made, "every directory acknowledged before the kill, and nothing else");
    after.mkdir_all("/after-the-kill").await.unwrap();
    // The storage servers registered with the new leader too.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let servers = after.servers().await.unwrap();
        if [1, 2].iter().all(|id| servers.iter().any(|s| s.id == ServerId(*id) && s.up)) {
            break;
        }
        assert!(Instant::now() < deadline, "the storage servers never registered with the new leader: {servers:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The killed node comes back as a follower and applies what it missed.
    let newest = statuses(&config).await.into_iter().filter_map(|(_, s)| s).map(|s| s.applied).max().unwrap();
    drop(cluster.restart(DaemonKind::Meta(leader)).await.unwrap());
    wait_for(&config, "the restarted node catching up", |st| {
        st.iter()
            .any(|(id, s)| *id == leader && s.as_ref().is_some_and(|s| s.state == "follower" && s.applied >= newest))
    })
    .await;
    let again = cluster.client().await.unwrap();
    assert!(again.stat("/after-the-kill").await.is_ok());
    assert_eq!(again.readdir("/").await.unwrap().len(), 31);
}

/// The pattern byte `i` of file `seed`.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// What the issue measured on the single-WAL pfs-meta: a client with 64 KiB in its write-back
/// cache, not yet fsync'd, lost it (Evicted, file 0 bytes) when pfs-meta went away. With the
/// group, the session is in the log and the client reclaims its tokens and opens from the new
/// leader: its fsync after the kill succeeds, another client reads every byte, the session is
/// not evicted, and a file another client unlinked while it was open stays readable through
/// the open handle until it is closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_keeps_its_write_back_cache_and_open_files_through_kill_9_of_the_leader() {
    let mut cluster = LocalCluster::start_group(3, 2, |_| {}).await.unwrap();
    let config = cluster.config().clone();
    wait_for(&config, "a leader", |st| leader_of(st).is_some()).await;
    let leader = leader_of(&statuses(&config).await).unwrap();

    let writer = cluster.client().await.unwrap();
    let session = writer.session().unwrap();
    let cached = writer.create("/cached", &Default::default()).await.unwrap();
    let bytes = pattern(7, 64 << 10);
    assert_eq!(cached.write_at(0, &bytes).await.unwrap(), bytes.len());
    let kept = writer.create("/kept-open", &Default::default()).await.unwrap();
    let kept_bytes = pattern(9, 8 << 10);
    kept.write_at(0, &kept_bytes).await.unwrap();
    kept.fsync().await.unwrap();
    let other = cluster.client().await.unwrap();
    other.unlink("/kept-open").await.unwrap();
    drop(other);

    cluster.kill(DaemonKind::Meta(leader));
    wait_for(&config, "a new leader", |st| leader_of(st).is_some_and(|l| l != leader)).await;

    cached.fsync().await.expect("the write-back cache is flushed under the reclaimed tokens");
    assert_eq!(writer.session().expect("not evicted"), session, "the same session, taken over");
    let mut back = vec![0u8; kept_bytes.len()];
    assert_eq!(kept.read_at(0, &mut back).await.unwrap(), back.len());
    assert_eq!(back, kept_bytes, "the file unlinked while open is still readable");
    cached.close().await.unwrap();

    let reader = cluster.client().await.unwrap();
    let f = reader.open("/cached").await.unwrap();
    assert_eq!(f.size(), bytes.len() as u64, "the size the writer reported after the failover");
    let mut got = vec![0u8; bytes.len()];
    assert_eq!(f.read_at(0, &mut got).await.unwrap(), got.len());
    assert!(got == bytes, "another client reads every byte written before the kill");
    assert!(reader.stat("/kept-open").await.is_err(), "unlinked: no name");
    kept.close().await.unwrap();
    writer.close().await.unwrap();
}
