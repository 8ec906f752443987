//! Byte-range tokens across separate client processes (`pfs-probe`) on a real cluster.

use pfs_common::rpc::RpcClient;
use pfs_common::wire::storage::StorageRequest;
use pfs_common::wire::PeerRole;
use pfs_common::ErrorCode;
use pfs_testkit::{raw, LocalCluster};
use pfs_testkit::{sha256_hex, Probe};

const PROBE: &str = env!("CARGO_BIN_EXE_pfs-probe");

fn hex_of(byte: u8, n: usize) -> String {
    hex::encode(vec![byte; n])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_reader_sees_a_later_remote_write() {
    let cluster = LocalCluster::start(4).await.unwrap();
    let cfg = cluster.config_path();
    let mut c1 = Probe::start(PROBE, cfg);
    let mut c2 = Probe::start(PROBE, cfg);
    c1.ok("create /f");
    c1.ok("write 0 200 1");
    c1.ok("fsync");
    // Client 1 reads bytes 40..70 and keeps them cached.
    assert_eq!(c1.ok("read 40 30"), hex_of(1, 30));
    assert_eq!(c1.ok("read 40 30"), hex_of(1, 30));
    assert!(c1.stat("read_hits") >= 1, "the second read should be served from the cache");
    // Client 2 writes 60..80 (cached in client 2 under its write token).
    c2.ok("open /f");
    c2.ok("write 60 20 2");
    // Client 1's next read of 40..70 sees client 2's bytes for 60..70.
    let want = format!("{}{}", hex_of(1, 20), hex_of(2, 10));
    assert_eq!(c1.ok("read 40 30"), want);
    assert!(c2.stat("revokes") >= 1 && c1.stat("revokes") >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn four_writers_share_one_file() {
    const REC: u64 = 47008;
    const PER: u64 = 6;
    let cluster = LocalCluster::start(4).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let client = cluster.client().await.unwrap();
    client.create("/interleaved", &Default::default()).await.unwrap().close().await.unwrap();
    client.create("/segmented", &Default::default()).await.unwrap().close().await.unwrap();
    let mut probes: Vec<Probe> = (0..4).map(|_| Probe::start(PROBE, &cfg)).collect();

    // Interleaved records: record k belongs to writer k % 4; writers take turns record by
    // record, so every write conflicts with a neighbour's token.
    for p in &mut probes {
        p.ok("open /interleaved");
    }
    for k in 0..4 * PER {
        let p = &mut probes[(k % 4) as usize];
        p.ok(&format!("write {} {REC} {}", k * REC, k + 1));
    }
    for p in &mut probes {
        p.ok("fsync");
    }
    for (i, probe) in probes.iter_mut().enumerate() {
        let neighbour = (i + 1) % 4;
        for k in (0..4 * PER).filter(|k| k % 4 == neighbour as u64) {
            let got = probe.ok(&format!("readsum {} {REC}", k * REC));
            assert_eq!(
                got,
                format!("{REC} {}", sha256_hex(&vec![(k + 1) as u8; REC as usize])),
                "writer {i} record {k}"
            );
        }
    }
    for p in &mut probes {
        p.ok("close");
    }

    // Disjoint sequential ranges: writer i writes its own segment record by record.
    let before: Vec<u64> = probes.iter_mut().map(|p| p.stat("acquires")).collect();
    for p in &mut probes {
        p.ok("open /segmented");
    }
    for r in 0..PER {
        for (i, p) in probes.iter_mut().enumerate() {
            let k = i as u64 * PER + r;
            p.ok(&format!("write {} {REC} {}", k * REC, k + 1));
        }
    }
    for (i, p) in probes.iter_mut().enumerate() {
        p.ok("fsync");
        let trips = p.stat("acquires") - before[i];
        assert!(trips <= 2, "writer {i} needed {trips} token round trips for its own segment");
    }
    let neighbour_ok = (0..4usize).all(|i| {
        let n = (i + 1) % 4;
        (0..PER).all(|r| {
            let k = n as u64 * PER + r;
            probes[i].ok(&format!("readsum {} {REC}", k * REC))
                == format!("{REC} {}", sha256_hex(&vec![(k + 1) as u8; REC as usize]))
        })
    });
    assert!(neighbour_ok, "a neighbour's segment read back wrong");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_writer_is_evicted_and_fenced() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let mut dead = Probe::start(PROBE, &cfg);
    dead.ok("create /k");
    dead.ok("write 0 4096 7");
    dead.ok("fsync");
    dead.ok("write 0 4096 9"); // dirty in its cache only
    let session = u64::from_str_radix(&dead.ok("session"), 16).unwrap();
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();

    // Another client gets the token and reads what was written back.
    let mut alive = Probe::start(PROBE, &cfg);
    alive.ok("open /k");
    assert_eq!(alive.ok("read 0 4096"), hex_of(7, 4096));

    // A write carrying the dead session is refused by the storage server.
    let client = cluster.client().await.unwrap();
    let attr = client.stat("/k").await.unwrap();
    let layout = attr.layout.unwrap();
    let chain = client.chain(layout.chain(0)).await.unwrap();
    let target = cluster.config().storage(chain.head().unwrap()).unwrap();
    let opts = raw::cluster_options(cluster.config(), PeerRole::Client, "late writer");
    let conn: RpcClient<StorageRequest> = RpcClient::connect(target.address, "storage", &opts, None).await.unwrap();
    // The capability it held is still valid (unexpired): the fence must refuse the write.
    let req = raw::block_write(cluster.config(), session, (attr.id, 0, layout.chunk_size(), chain.at()));
    let err = conn.call(req, &[9u8; 4096]).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Evicted, "{err}");
    assert_eq!(alive.ok("read 0 4096"), hex_of(7, 4096), "the late write must not land");
}

#[tokio::test(flavor = "multi_thread")]
async fn readers_never_see_a_torn_write() {
    const LEN: usize = 8192;
    const ROUNDS: usize = 150;
    let cluster = LocalCluster::start(4).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let mut w = Probe::start(PROBE, &cfg);
    w.ok("create /t");
    w.ok(&format!("write 0 {LEN} 1"));
    w.ok("fsync");
    let writer = std::thread::spawn(move || {
        for v in 0..ROUNDS {
            // Unaligned, straddling two blocks of the reader's range.
            w.ok(&format!("write 100 {LEN} {}", (v % 250) + 2));
        }
        w.ok("close");
    });
    let mut r = Probe::start(PROBE, &cfg);
    r.ok("open /t");
    for _ in 0..ROUNDS {
        let got = hex::decode(r.ok(&format!("read 100 {LEN}"))).unwrap();
        assert_eq!(got.len(), LEN);
        assert!(got.iter().all(|b| *b == got[0]), "torn read: {:?} .. {:?}", &got[..8], &got[LEN - 8..]);
    }
    writer.join().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_holder_is_evicted_and_learns_it() {
    let cluster = LocalCluster::start_with(2, |c| {
        c.tokens.revoke_timeout_ms = 300;
        c.tokens.lease_ms = 3000;
    })
    .await
    .unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let mut stalled = Probe::start(PROBE, &cfg);
    stalled.ok("create /s");
    stalled.ok("write 0 100 5"); // dirty in its cache, size not recorded yet
    let pid = stalled.child.id() as i32;
    // SAFETY: signals to our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };

    // The reader's token needs a revoke the stopped holder cannot answer: after the revoke
    // timeout it is evicted and fenced, and the reader proceeds. The holder's cached bytes
    // were never written back, so the file is still empty.
    let mut reader = Probe::start(PROBE, &cfg);
    reader.ok("open /s");
    assert_eq!(reader.ok("read 0 100"), "");

    // Woken up, its late write-back is refused (fenced), and from then on every call says
    // it was evicted.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let sync = stalled.cmd("fsync");
    assert!(sync.starts_with("err Evicted"), "{sync}");
    let again = stalled.cmd("read 0 100");
    assert!(again.starts_with("err Evicted"), "{again}");
    assert_eq!(reader.ok("read 0 100"), "", "the fenced write must not have landed");
}
