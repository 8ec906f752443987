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
