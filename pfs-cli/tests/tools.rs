//! The `pfs` tool against a real cluster.

use pfs_client::CreateOptions;
use pfs_testkit::{ok, run_tool, LocalCluster};

const PFS: &str = env!("CARGO_BIN_EXE_pfs");

#[tokio::test(flavor = "multi_thread")]
async fn namespace_through_the_pfs_tool() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    ok(run_tool(PFS, &cfg, &["mkdir", "-p", "/a/b/c"]));
    ok(run_tool(PFS, &cfg, &["mv", "/a/b", "/a/renamed"]));
    assert_eq!(ok(run_tool(PFS, &cfg, &["ls", "/a"])), "renamed/\n");
    let again = run_tool(PFS, &cfg, &["mkdir", "/a"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("/a"));
    let rm_dir = run_tool(PFS, &cfg, &["rm", "/a"]);
    assert!(String::from_utf8_lossy(&rm_dir.stderr).contains("is a directory"));
    ok(run_tool(PFS, &cfg, &["rm", "-r", "/a"]));
    assert_eq!(ok(run_tool(PFS, &cfg, &["ls", "/"])), "");
    let df = ok(run_tool(PFS, &cfg, &["df"]));
    assert!(df.contains("storage-1") && df.contains("storage-2") && df.contains("2 of 2 servers up"), "{df}");

    let client = cluster.client().await.unwrap();
    let f = client.create("/hello", &CreateOptions::default()).await.unwrap();
    f.write_at(0, b"hello, striped world\n").await.unwrap();
    f.close().await.unwrap();
    assert_eq!(ok(run_tool(PFS, &cfg, &["cat", "/hello"])), "hello, striped world\n");
    let stat = ok(run_tool(PFS, &cfg, &["stat", "/hello"]));
    assert!(stat.contains("size        21 bytes"), "{stat}");
}

/// A `pfs up` whose storage server cannot start (its port is taken) fails naming it, and stops
/// the daemons it did start: no half-up cluster is left behind. Once the port is free, the
/// same command brings the cluster up.
#[test]
fn a_failed_pfs_up_stops_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let ports = pfs_testkit::free_ports(3).unwrap();
    let mut config = pfs_common::config::Config::local(dir.path(), 0, 2);
    config.meta[0].address.set_port(ports[0]);
    for (s, port) in config.storage.iter_mut().zip(&ports[1..]) {
        s.address.set_port(*port);
    }
    let cfg = dir.path().join("pfs.toml");
    std::fs::write(&cfg, config.to_toml()).unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", ports[2])).unwrap();
    let out = run_tool(PFS, &cfg, &["up"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("storage-2") && err.contains("the daemons this `pfs up` started were stopped"), "{err}");
    // pfs-meta and storage-1 are gone: their ports are free again, their pid files removed.
    for port in &ports[..2] {
        std::net::TcpListener::bind(("127.0.0.1", *port)).unwrap_or_else(|e| panic!("port {port} still taken: {e}"));
    }
    let pids: Vec<_> = std::fs::read_dir(dir.path().join("run")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(pids.is_empty(), "pid files left: {pids:?}");
    drop(squatter);
    ok(run_tool(PFS, &cfg, &["up"]));
    ok(run_tool(PFS, &cfg, &["down"]));
}

/// `pfs up` with three metadata nodes on this host starts one process per node (`--id`), with
/// pid files `run/meta-<id>.pid`, logs `logs/meta-<id>.log` and a data directory each, every
/// node serving on its own address, and its message names them all; `pfs down` stops them.
#[test]
fn pfs_up_and_down_run_every_metadata_node() {
    let dir = tempfile::tempdir().unwrap();
    let ports = pfs_testkit::free_ports(5).unwrap();
    let mut config = pfs_common::config::Config::local_group(dir.path(), 0, 3, 2);
    for (m, port) in config.meta.iter_mut().zip(&ports) {
        m.address.set_port(*port);
    }
    for (s, port) in config.storage.iter_mut().zip(&ports[3..]) {
        s.address.set_port(*port);
    }
    let cfg = dir.path().join("pfs.toml");
    std::fs::write(&cfg, config.to_toml()).unwrap();
    // Without --id, a node of a three-node config does not know which it is.
    let out = run_tool(PFS, &cfg, &["serve", "meta"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("3 metadata nodes") && err.contains("--id"), "{err}");

    let up = ok(run_tool(PFS, &cfg, &["up"]));
    let mut pids = Vec::new();
    for m in config.meta_nodes() {
        assert!(up.contains(&format!("node {} at {}", m.id, m.address)), "{up}");
        let pid_file = dir.path().join("run").join(format!("meta-{}.pid", m.id));
        let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(cmdline.contains(&format!("--id\0{}\0", m.id)), "{cmdline:?}");
        assert!(dir.path().join("logs").join(format!("meta-{}.log", m.id)).is_file());
        assert!(config.meta_dir(m.id).unwrap().is_dir(), "node {} has its own data directory", m.id);
        assert!(std::net::TcpListener::bind(m.address).is_err(), "node {} listens on {}", m.id, m.address);
        pids.push(pid);
    }
    assert_eq!(pids.iter().collect::<std::collections::HashSet<_>>().len(), 3, "one process per node");
    // A second `pfs up` finds them running and starts nothing.
    let again = ok(run_tool(PFS, &cfg, &["up"]));
    assert!(again.contains("meta-2 already running"), "{again}");

    let down = ok(run_tool(PFS, &cfg, &["down"]));
    for m in config.meta_nodes() {
        assert!(down.contains(&format!("stopped meta-{} (pid", m.id)), "{down}");
        // A stopped node's port is free again once the process is gone (a Raft node may take
        // a moment to finish its log after the signal).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Err(e) = std::net::TcpListener::bind(m.address) {
            assert!(std::time::Instant::now() < deadline, "{} still taken: {e}", m.address);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let left: Vec<_> = std::fs::read_dir(dir.path().join("run")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "pid files left: {left:?}");
}
