//! Replicated files against real daemons killed with SIGKILL: a copy carries on through a
//! storage server's death, reads come from the surviving replica, a returning server resyncs
//! before it serves, a wiped one is rebuilt elsewhere, and no read ever returns a stale copy.

use pfs_client::Client;
use pfs_common::config::Config;
use pfs_common::ids::chunk_file_name;
use pfs_common::ServerId;
use pfs_testkit::{ok, random_bytes, run_tool, sha256_hex, DaemonKind, LocalCluster};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PFS: &str = env!("CARGO_BIN_EXE_pfs");
const PFS_CP: &str = env!("CARGO_BIN_EXE_pfs-cp");

/// Two replicas and quick failure detection.
fn replicated(c: &mut Config) {
    c.layout.replicas = 2;
    c.timeouts.heartbeat_ms = 100;
    c.timeouts.server_down_ms = 1_000;
}

/// Polls `f` every 20 ms until it is true; panics naming `what` after 90 s.
async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let end = Instant::now() + Duration::from_secs(90);
    while !f().await {
        assert!(Instant::now() < end, "not within 90 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True once every chain has all its replicas serving.
async fn all_chains_whole(client: &Client) -> bool {
    client.all_chains().await.is_ok_and(|chains| chains.iter().all(|c| !c.degraded()))
}

/// Number of chunk files in a directory (0 if it does not exist).
fn chunk_count(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains("_chunk_")).count()
}

fn sha_of_file(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

/// Copies `data` in as pfs:/f (1 MiB chunks), through a file in `work`.
fn copy_in(cfg: &Path, work: &Path, data: &[u8]) {
    let src = work.join("in.bin");
    std::fs::write(&src, data).unwrap();
    ok(run_tool(PFS_CP, cfg, &["--chunk-size", "1m", src.to_str().unwrap(), "pfs:/f"]));
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_server_killed_during_a_copy_loses_nothing_and_resyncs() {
    let mut cluster = LocalCluster::start_with(3, replicated).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("in.bin");
    std::fs::write(&src, random_bytes(256 << 20, 91)).unwrap();
    let want = sha_of_file(&src);

    // SIGKILL storage-2 once the copy has put some of the file on it.
    let victim = ServerId(2);
    let victim_dir = cluster.config().storage_dir(cluster.config().storage(victim).unwrap());
    let copy = Command::new(PFS_CP)
        .arg("--config")
        .arg(&cfg)
        .args([src.to_str().unwrap(), "pfs:/big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut copy = copy;
    wait_until("the copy reaches storage-2", || async { chunk_count(&victim_dir) >= 16 }).await;
    assert!(copy.try_wait().unwrap().is_none(), "the copy must still be running when storage-2 dies");
    cluster.kill(DaemonKind::Storage(victim));
    let copied = copy.wait_with_output().unwrap();
    assert!(copied.status.success(), "the copy must carry on: {}", String::from_utf8_lossy(&copied.stderr));

    // Byte-identical while storage-2 is still down.
    let out = work.path().join("out.bin");
    ok(run_tool(PFS_CP, &cfg, &["pfs:/big", out.to_str().unwrap()]));
    assert_eq!(sha_of_file(&out), want, "read back while a replica is down");
    let stripe = ok(run_tool(PFS, &cfg, &["getstripe", "/big"]));
    assert!(stripe.contains("DEGRADED") && stripe.contains("storage-2 offline"), "{stripe}");
    let df = ok(run_tool(PFS, &cfg, &["df"]));
    assert!(df.contains("DOWN") && df.contains("under-replicated"), "{df}");
    // Verifying every replica fails while one is missing, naming it.
    let verify = run_tool(PFS, &cfg, &["getstripe", "--verify", "/big"]);
    assert!(!verify.status.success(), "{}", stdout(&verify));

    // It comes back, resyncs, and then every replica of every chunk verifies.
    let client = cluster.restart(DaemonKind::Storage(victim)).await.unwrap();
    wait_until("every chain has both replicas serving", || all_chains_whole(&client)).await;
    let verified = ok(run_tool(PFS, &cfg, &["getstripe", "--verify", "/big"]));
    assert!(verified.contains("on every replica") && !verified.contains("offline"), "{verified}");
    let log = std::fs::read_to_string(cluster.log(DaemonKind::Storage(victim))).unwrap();
    assert!(log.contains("resynced"), "storage-2 resynced its chains: {log}");
    std::fs::remove_file(&out).unwrap();
    ok(run_tool(PFS_CP, &cfg, &["pfs:/big", out.to_str().unwrap()]));
    assert_eq!(sha_of_file(&out), want);
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_server_is_rebuilt_on_the_others_after_rereplicate_after_ms() {
    let mut cluster = LocalCluster::start_with(3, |c| {
        replicated(c);
        c.timeouts.rereplicate_after_ms = 2_000;
    })
    .await
    .unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let work = tempfile::tempdir().unwrap();
    let data = random_bytes(24 << 20, 92);
    let want = sha256_hex(&data);
    copy_in(&cfg, work.path(), &data);

    // storage-3's disk is gone for good.
    let gone = ServerId(3);
    cluster.kill(DaemonKind::Storage(gone));
    let dir = cluster.config().storage_dir(cluster.config().storage(gone).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();

    let out = work.path().join("out.bin");
    ok(run_tool(PFS_CP, &cfg, &["pfs:/f", out.to_str().unwrap()]));
    assert_eq!(sha_of_file(&out), want, "read back from the surviving replicas");

    // After rereplicate_after_ms its replicas are rebuilt on the other two servers.
    let client = cluster.client().await.unwrap();
    wait_until("every chain is whole again without storage-3", || async {
        client.all_chains().await.is_ok_and(|chains| chains.iter().all(|c| !c.degraded() && c.state_of(gone).is_none()))
    })
    .await;
    let verified = ok(run_tool(PFS, &cfg, &["getstripe", "--verify", "/f"]));
    assert!(verified.contains("on every replica") && !verified.contains("storage-3"), "{verified}");
    let f = client.open("/f").await.unwrap();
    let size = f.size();
    let layout = f.layout().clone();
    for chunk in 0..layout.chunk_count(size) {
        let chain = f.chain(chunk).await.unwrap();
        assert_eq!(chain.readers().count(), 2, "chunk {chunk}: {}", chain.describe());
    }
    f.close().await.unwrap();
    client.close().await.unwrap();
    // storage-3 comes back with its empty disk: it owes nothing any more, so fsck is clean.
    std::fs::create_dir_all(&dir).unwrap();
    cluster.restart(DaemonKind::Storage(gone)).await.unwrap().close().await.unwrap();
    let checked = ok(run_tool(PFS, &cfg, &["fsck"]));
    assert!(checked.contains("0 problems"), "{checked}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_down_during_overwrites_never_serves_its_stale_bytes() {
    let mut cluster = LocalCluster::start_with(2, replicated).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let work = tempfile::tempdir().unwrap();
    let version = |n: u64| {
        let p = work.path().join(format!("v{n}.bin"));
        std::fs::write(&p, random_bytes(8 << 20, 100 + n)).unwrap();
        p
    };
    let v1 = version(1);
    ok(run_tool(PFS_CP, &cfg, &["--chunk-size", "1m", v1.to_str().unwrap(), "pfs:/f"]));

    // storage-2 goes down with v1; the file is overwritten twice while it is away.
    let stale = ServerId(2);
    cluster.kill(DaemonKind::Storage(stale));
    let mut last = v1;
    for n in [2, 3] {
        last = version(n);
        ok(run_tool(PFS_CP, &cfg, &[last.to_str().unwrap(), "pfs:/f"]));
    }
    let want = sha_of_file(&last);
    let dir = cluster.config().storage_dir(cluster.config().storage(stale).unwrap());
    assert!(std::fs::read_dir(&dir).unwrap().count() > 0, "storage-2 still has v1's chunks");

    // Back: while it resyncs, every read returns the newest bytes, whichever replica answers.
    let client = cluster.restart(DaemonKind::Storage(stale)).await.unwrap();
    let f = client.open("/f").await.unwrap();
    let want_bytes = std::fs::read(&last).unwrap();
    let mut buf = vec![0u8; want_bytes.len()];
    let mut reads = 0;
    loop {
        let whole = all_chains_whole(&client).await;
        let n = f.read_at(0, &mut buf).await.unwrap();
        assert_eq!(n, want_bytes.len());
        assert!(buf == want_bytes, "read {reads} returned other bytes than the newest version");
        reads += 1;
        if whole {
            break;
        }
    }
    f.close().await.unwrap();
    let log = std::fs::read_to_string(cluster.log(DaemonKind::Storage(stale))).unwrap();
    assert!(
        log.lines().any(|l| l.contains("resynced") && !l.contains("(0 chunks copied)")),
        "storage-2 copied the newer chunks: {log}"
    );
    // Every replica, storage-2's included, holds the newest bytes.
    let verified = ok(run_tool(PFS, &cfg, &["getstripe", "--verify", "/f"]));
    assert!(verified.contains("on every replica") && verified.contains("storage-2 serving"), "{verified}");
    let out = work.path().join("out.bin");
    ok(run_tool(PFS_CP, &cfg, &["pfs:/f", out.to_str().unwrap()]));
    assert_eq!(sha_of_file(&out), want);
    client.close().await.unwrap();
}

/// Flips one byte of a chunk file in place.
fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[!b[0]], at).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_in_one_replica_is_read_around_scrubbed_and_repaired_by_fsck() {
    let cluster = LocalCluster::start_with(2, replicated).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let work = tempfile::tempdir().unwrap();
    let data = random_bytes(8 << 20, 93);
    copy_in(&cfg, work.path(), &data);

    // Chunk 1's copy on the replica a reader asks first is damaged on disk.
    let client = cluster.client().await.unwrap();
    let f = client.open("/f").await.unwrap();
    let chain = f.chain(1).await.unwrap();
    let readers: Vec<ServerId> = chain.readers().collect();
    let bad = readers[1 % readers.len()];
    let dir_of = |id: ServerId| cluster.config().storage_dir(cluster.config().storage(id).unwrap());
    flip_byte(&dir_of(bad).join(chunk_file_name(f.id(), 1)), 3 * 65536 + 5);
    let block = f.layout().chunk_size() as usize;

    // Reads return the right bytes: the damaged replica's error passes the read to the other.
    let mut buf = vec![0u8; block];
    assert_eq!(f.read_at(block as u64, &mut buf).await.unwrap(), block);
    assert!(buf[..] == data[block..2 * block], "chunk 1 read around the damaged copy");
    assert!(client.stats().failovers >= 1, "the read went to another replica");
    let out = work.path().join("out.bin");
    ok(run_tool(PFS_CP, &cfg, &["pfs:/f", out.to_str().unwrap()]));
    assert_eq!(sha_of_file(&out), sha256_hex(&data));
    // Verifying every replica names the damaged one.
    let verify = run_tool(PFS, &cfg, &["getstripe", "--verify", "/f"]);
    assert!(!verify.status.success());
    let err = String::from_utf8_lossy(&verify.stderr).into_owned();
    assert!(err.contains(&format!("chunk 1 on {bad}")) && err.contains("corrupt"), "{err}");

    // pfs scrub finds and rewrites it from the good replica; the next verify is clean.
    let scrubbed = ok(run_tool(PFS, &cfg, &["scrub"]));
    assert!(scrubbed.contains(&format!("{bad}: ")) && scrubbed.contains("1 damaged, 1 repaired"), "{scrubbed}");
    assert!(scrubbed.contains("0 problems"), "{scrubbed}");
    ok(run_tool(PFS, &cfg, &["getstripe", "--verify", "/f"]));

    // pfs fsck --repair does the same for a copy it finds damaged.
    flip_byte(&dir_of(readers[0]).join(chunk_file_name(f.id(), 3)), 100);
    let found = run_tool(PFS, &cfg, &["fsck"]);
    assert!(!found.status.success());
    assert!(stdout(&found).contains(&format!("corrupt: /f chunk 3 on {}", readers[0])), "{}", stdout(&found));
    let repaired = ok(run_tool(PFS, &cfg, &["fsck", "--repair"]));
    assert!(repaired.contains("repaired from a replica") && repaired.contains("0 problems"), "{repaired}");
    ok(run_tool(PFS, &cfg, &["fsck"]));
    ok(run_tool(PFS, &cfg, &["getstripe", "--verify", "/f"]));
    f.close().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_go_on_while_a_wiped_server_resyncs() {
    let mut cluster = LocalCluster::start_with(2, |c| {
        replicated(c);
        // Slow copies, so the resync is still running when the writes come.
        c.timeouts.resync_bytes_per_sec = 8 << 20;
    })
    .await
    .unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let work = tempfile::tempdir().unwrap();
    let mut data = random_bytes(32 << 20, 94);
    copy_in(&cfg, work.path(), &data);

    // storage-2 comes back with an empty disk: every chunk it held is lost there.
    let wiped = ServerId(2);
    cluster.kill(DaemonKind::Storage(wiped));
    let dir = cluster.config().storage_dir(cluster.config().storage(wiped).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let client = cluster.restart(DaemonKind::Storage(wiped)).await.unwrap();
    let syncing = client.all_chains().await.unwrap().iter().any(|c| c.degraded());
    assert!(syncing, "storage-2 resyncs before it serves");

    // Overwrites of chunks it has not copied back yet succeed and reach both replicas.
    let f = client.open("/f").await.unwrap();
    for chunk in [30u64, 31] {
        let at = (chunk << 20) + 4096;
        let patch = random_bytes(100_000, 200 + chunk);
        f.write_at(at, &patch).await.unwrap();
        data[at as usize..at as usize + patch.len()].copy_from_slice(&patch);
    }
    f.fsync().await.unwrap();
    wait_until("storage-2 serves again", || all_chains_whole(&client)).await;
    let mut buf = vec![0u8; data.len()];
    assert_eq!(f.read_at(0, &mut buf).await.unwrap(), data.len());
    assert!(buf == data);
    f.close().await.unwrap();
    let verified = ok(run_tool(PFS, &cfg, &["getstripe", "--verify", "/f"]));
    assert!(verified.contains("on every replica"), "{verified}");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_replica_does_not_hold_up_reads_or_writes() {
    let cluster = LocalCluster::start_with(3, replicated).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let work = tempfile::tempdir().unwrap();
    copy_in(&cfg, work.path(), &random_bytes(16 << 20, 95));

    // A client with connections open to every server, storage-2's included.
    let client = cluster.client().await.unwrap();
    let f = client.open("/f").await.unwrap();
    let mut buf = vec![0u8; 16 << 20];
    f.read_at(0, &mut buf).await.unwrap();

    // storage-2 stops (SIGSTOP: alive, silent, its connections open). Writes through chains
    // it heads or forwards to, and their fsync, go on once pfs-meta has taken it out.
    let hung = ServerId(2);
    cluster.suspend(DaemonKind::Storage(hung));
    let v2 = random_bytes(16 << 20, 96);
    f.write_at(0, &v2).await.unwrap();
    f.fsync().await.unwrap();
    f.truncate(15 << 20).await.unwrap();
    f.close().await.unwrap();
    // Another writer, then a reader, in new processes.
    let v3 = work.path().join("v3.bin");
    std::fs::write(&v3, random_bytes(12 << 20, 97)).unwrap();
    ok(run_tool(PFS_CP, &cfg, &[v3.to_str().unwrap(), "pfs:/g"]));
    let out = work.path().join("out.bin");
    ok(run_tool(PFS_CP, &cfg, &["pfs:/f", out.to_str().unwrap()]));
    assert_eq!(sha_of_file(&out), sha256_hex(&v2[..15 << 20]));

    // It continues, finds itself declared down, registers again and resyncs.
    cluster.resume(DaemonKind::Storage(hung));
    wait_until("every chain is whole again", || all_chains_whole(&client)).await;
    for path in ["/f", "/g"] {
        let verified = ok(run_tool(PFS, &cfg, &["getstripe", "--verify", path]));
        assert!(verified.contains("on every replica"), "{verified}");
    }
    client.close().await.unwrap();
}
