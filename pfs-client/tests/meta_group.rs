//! A metadata group of three nodes, each its own process: one namespace, replicated through
//! the Raft log, that survives kill -9 of its leader; the killed node catches up when it
//! comes back. Clients and storage servers know every node's address and find the leader
//! themselves (a follower answers NotLeader).

use pfs_common::config::Config;
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::wire::raft::{GetStatus, NodeStatus};
use pfs_common::wire::{MetaRequest, PeerRole};
use pfs_common::ServerId;
use pfs_testkit::{DaemonKind, LocalCluster};
use std::time::{Duration, Instant};

/// What each meta node says of itself (`None`: it does not answer).
async fn statuses(config: &Config) -> Vec<(u64, Option<NodeStatus>)> {
    let opts = ConnectOptions {
        role: PeerRole::Client,
        name: "meta_group test".into(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        auth: config.auth(false).unwrap(),
    };
    let mut all = Vec::new();
    for n in config.meta_nodes() {
        let st = async {
            let c: RpcClient<MetaRequest> = RpcClient::connect(n.address, "meta", &opts, None).await.ok()?;
            c.ask(GetStatus).await.ok()
        };
        all.push((n.id, st.await));
    }
    all
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
    st.iter().find(|(_, s)| s.as_ref().is_some_and(|s| s.state == "leader")).map(|(id, _)| *id)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_namespace_survives_kill_9_of_the_leader_and_the_node_catches_up() {
    let mut cluster = LocalCluster::start_group(3, 2, |_| {}).await.unwrap();
    let config = cluster.config().clone();
    wait_for(&config, "a leader", |st| leader_of(st).is_some()).await;
    let st = statuses(&config).await;
    let leader = leader_of(&st).unwrap();
    assert!(
        st.iter().all(|(_, s)| s.as_ref().is_some_and(|s| s.members.len() == 3 && s.leader == Some(leader))),
        "every node knows the three members and the leader: {st:?}"
    );

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
