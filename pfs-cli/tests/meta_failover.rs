//! Faults of the metadata group under load: 3 meta nodes and 4 storage servers, real
//! processes on loopback, two replicas of every chunk. Each round runs a mixed load (a namespace worker creating, renaming
//! and unlinking with a log of what was acknowledged; two writers of interleaved records of one
//! shared file, each batch fsync'd; a reader checking every record it sees), injects one fault
//! at a random moment, lets the load run on through the election and the recovery window, and
//! then checks: every acknowledged operation is there and nothing else is; every record holds
//! its writer's last acknowledged version; no reader saw a record older than one acknowledged
//! before its read; no client was evicted; `pfs fsck` and `pfs getstripe --verify` exit 0.
//!
//! The faults, one test each: kill -9 of the leader; SIGSTOP of the leader for 10 s (a zombie:
//! when it continues, a new leader has taken over and nothing it sends may count); kill -9 of
//! the leader and a storage server together; a follower's data directory wiped (it rejoins by
//! snapshot). Namespace changes carry request ids, so none may fail with "in doubt" or be done
//! twice; the namespace worker asserts it.
//!
//! `PFS_FAILOVER_ROUNDS` sets the number of rounds of each (10 by default).

use pfs_client::{Client, CreateOptions, File};
use pfs_common::config::Config;
use pfs_common::ErrorCode;
use pfs_testkit::{meta_statuses, ok, run_tool, wait_meta_leader, DaemonKind, LocalCluster};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PFS: &str = env!("CARGO_BIN_EXE_pfs");
/// A record of the shared file, bytes.
const RECORD: usize = 4096;
/// Records per writer.
const RECORDS: u64 = 8;
const WRITERS: u64 = 2;

/// Errors a data operation may meet while the leader changes: its fate is unknown, never wrong.
/// Restarted: a storage server killed under writes not yet synced; fsync cannot vouch for them
/// (a false alarm when the server was resynced before the fsync looked), so they are not
/// acknowledged and the writer writes them again.
fn in_doubt(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Indeterminate
            | ErrorCode::Unavailable
            | ErrorCode::TimedOut
            | ErrorCode::NotLeader
            | ErrorCode::Restarted
    )
}

/// Errors a namespace change may meet while the leader changes: only "no leader answered in
/// time". Never Indeterminate: it carries a request id and is sent again until answered.
fn ns_in_doubt(e: &pfs_client::Error) -> bool {
    assert_ne!(e.code(), ErrorCode::Indeterminate, "a namespace change with a request id in doubt: {e}");
    matches!(e.code(), ErrorCode::Unavailable | ErrorCode::TimedOut | ErrorCode::NotLeader)
}

/// Record `k` of writer `w` at version `v`: every 8-byte word is `w << 56 | v`.
fn record(w: u64, v: u64) -> Vec<u8> {
    let word = (w << 56 | v).to_le_bytes();
    word.iter().copied().cycle().take(RECORD).collect()
}

/// The (writer, version) a record holds; panics naming the record if its words differ (a
/// torn or foreign record).
fn decode(buf: &[u8], index: u64) -> (u64, u64) {
    let first = u64::from_le_bytes(buf[..8].try_into().unwrap());
    assert!(
        buf.chunks(8).all(|c| c == first.to_le_bytes()),
        "record {index} is torn: it does not hold one version throughout"
    );
    (first >> 56, first & ((1 << 56) - 1))
}

/// What the namespace worker knows of its names.
#[derive(Default)]
struct NsLog {
    /// Acknowledged to exist now.
    present: BTreeSet<String>,
    /// Fate unknown (an operation on it answered in doubt).
    unknown: BTreeSet<String>,
    /// The first in-doubt error of the round, and how many there were.
    doubts: (Option<String>, u64),
}

/// Creates, renames and unlinks in `/ns` until `stop`, logging what was acknowledged in
/// `log` (that of the rounds before).
async fn namespace_worker(
    client: Client,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
    mut log: NsLog,
) -> (Client, NsLog) {
    let exclusive = CreateOptions { exclusive: true, ..Default::default() };
    while !stop.load(Ordering::Relaxed) {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let name = format!("/ns/f{i}");
        match client.create(&name, &exclusive).await {
            Ok(f) => {
                log.present.insert(name.clone());
                f.close().await.unwrap_or_else(|e| panic!("closing {name}: {e}"));
            }
            Err(e) if ns_in_doubt(&e) => {
                log.doubts.0.get_or_insert_with(|| e.to_string());
                log.doubts.1 += 1;
                log.unknown.insert(name.clone());
            }
            Err(e) => panic!("creating {name}: {e}"),
        }
        // Every third: rename an earlier file; every fifth: unlink one.
        let earlier = format!("/ns/f{}", i.saturating_sub(2));
        if i % 3 == 0 && log.present.contains(&earlier) {
            let to = format!("/ns/r{}", i.saturating_sub(2));
            match client.rename(&earlier, &to).await {
                Ok(()) => {
                    log.present.remove(&earlier);
                    log.present.insert(to);
                }
                Err(e) if ns_in_doubt(&e) => {
                    log.doubts.0.get_or_insert_with(|| e.to_string());
                    log.doubts.1 += 1;
                    log.present.remove(&earlier);
                    log.unknown.insert(earlier);
                    log.unknown.insert(to);
                }
                Err(e) => panic!("renaming {earlier}: {e}"),
            }
        }
        let victim = format!("/ns/r{}", i.saturating_sub(5));
        if i % 5 == 0 && log.present.contains(&victim) {
            match client.unlink(&victim).await {
                Ok(()) => {
                    log.present.remove(&victim);
                }
                Err(e) if ns_in_doubt(&e) => {
                    log.doubts.0.get_or_insert_with(|| e.to_string());
                    log.doubts.1 += 1;
                    log.present.remove(&victim);
                    log.unknown.insert(victim);
                }
                Err(e) => panic!("unlinking {victim}: {e}"),
            }
        }
    }
    (client, log)
}

/// The acknowledged version of every record of the shared file (record `i` belongs to writer
/// `i % WRITERS`).
type Acked = Arc<Vec<AtomicU64>>;

/// Writes its records of the shared file at ever newer versions, a batch and an fsync at a
/// time, until `stop`; a record's version in `acked` moves on once an fsync after its write
/// succeeded. Ends with one more fsync that must succeed.
async fn writer(w: u64, f: File, stop: Arc<AtomicBool>, acked: Acked, start: u64) -> File {
    let mut v = start;
    let mut written = vec![None; RECORDS as usize];
    while !stop.load(Ordering::Relaxed) {
        v += 1;
        write_records(w, &f, v, &mut written, true).await;
        match f.fsync().await {
            Ok(()) => publish(w, &mut written, &acked),
            Err(e) if in_doubt(e.code()) => {}
            Err(e) => panic!("writer {w}: fsync of version {v}: {e}"),
        }
    }
    // The round ends with every record acknowledged at some version. An fsync in doubt (a
    // storage server restarted under it) is answered by writing the records again, as the
    // error says; after the faults, that must succeed.
    for attempt in 0.. {
        match f.fsync().await {
            Ok(()) => break,
            Err(e) if in_doubt(e.code()) && attempt < 3 => {
                v += 1;
                write_records(w, &f, v, &mut written, false).await;
            }
            Err(e) => panic!("writer {w}: the last fsync after the round: {e}"),
        }
    }
    publish(w, &mut written, &acked);
    f
}

/// Writes every record of writer `w` at version `v`, noting each written in `written`; a
/// write in doubt is let go if `may_doubt` (it is written again at the next version).
async fn write_records(w: u64, f: &File, v: u64, written: &mut [Option<u64>], may_doubt: bool) {
    let bytes = record(w, v);
    for k in 0..RECORDS {
        let at = (k * WRITERS + w) * RECORD as u64;
        match f.write_at(at, &bytes).await {
            Ok(n) => {
                assert_eq!(n, RECORD);
                written[k as usize] = Some(v);
            }
            Err(e) if may_doubt && in_doubt(e.code()) => {}
            Err(e) => panic!("writer {w} writing version {v}: {e}"),
        }
    }
}

/// The records written since the last successful fsync are acknowledged at their versions.
fn publish(w: u64, written: &mut [Option<u64>], acked: &Acked) {
    for (k, v) in written.iter_mut().enumerate() {
        if let Some(v) = v.take() {
            acked[k * WRITERS as usize + w as usize].store(v, Ordering::Relaxed);
        }
    }
}

/// Reads every record until `stop`: each holds one version of its own writer, never older
/// than the one acknowledged before the read began.
async fn reader(f: File, stop: Arc<AtomicBool>, acked: Acked) -> (File, u64) {
    let mut reads = 0;
    let mut buf = vec![0u8; RECORD * (RECORDS * WRITERS) as usize];
    while !stop.load(Ordering::Relaxed) {
        let floor: Vec<u64> = acked.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        match f.read_at(0, &mut buf).await {
            Ok(n) => {
                for (i, rec) in buf[..n].chunks(RECORD).enumerate() {
                    let (w, v) = decode(rec, i as u64);
                    assert_eq!(w, i as u64 % WRITERS, "record {i} holds writer {w}'s bytes");
                    assert!(v >= floor[i], "record {i} at version {v}, older than the acknowledged {}", floor[i]);
                }
                reads += 1;
            }
            Err(e) if in_doubt(e.code()) => {}
            Err(e) => panic!("reading the shared file: {e}"),
        }
    }
    (f, reads)
}

/// A fault a round injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// kill -9 of the leader (restarted after the round).
    KillLeader,
    /// SIGSTOP of the leader for 10 s, then SIGCONT: it must come back as a follower.
    PauseLeader,
    /// kill -9 of the leader and of a storage server at once (both restarted).
    KillLeaderAndStorage,
    /// A follower killed, its data directory wiped, and started again: it rejoins.
    WipeFollower,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kills_under_mixed_load_lose_nothing_acknowledged() {
    under_faults(Fault::KillLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_paused_for_10_s_comes_back_a_follower_and_nothing_it_did_counts() {
    under_faults(Fault::PauseLeader).await;
}

// What it found: a new leader that took every storage server for gone at once (replicas
// taken offline, creates refused), an fsync whose wait for a failed replica held up a revoke
// past its timeout (a live client evicted), a failed revoke write-back that kept bytes without
// a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_and_a_storage_server_together_loses_nothing_acknowledged() {
    under_faults(Fault::KillLeaderAndStorage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_follower_rejoins_under_load() {
    under_faults(Fault::WipeFollower).await;
}

/// Polls until meta node `id` says it is a follower of a term at least `term` with the log
/// applied to `applied` at least, for at most 60 s.
async fn wait_follower(config: &Config, id: u64, term: u64, applied: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = meta_statuses(config).await;
        let me = st.iter().find(|(n, _)| *n == id).and_then(|(_, s)| s.clone());
        if me.as_ref().is_some_and(|s| s.state == "follower" && s.term >= term && s.applied >= applied) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "meta-{id} never followed term {term} to {applied}: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status of meta node `id`, as it answers now.
async fn status_of(config: &Config, id: u64) -> pfs_common::wire::raft::NodeStatus {
    let st = meta_statuses(config).await;
    st.into_iter().find(|(n, _)| *n == id).and_then(|(_, s)| s).unwrap_or_else(|| panic!("meta-{id} does not answer"))
}

async fn under_faults(fault: Fault) {
    pfs_common::logging::init();
    let rounds: u64 = std::env::var("PFS_FAILOVER_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    // Two replicas of every chunk, as config/local.toml has it: a storage server killed with
    // the leader must be survived, not just reported.
    let mut cluster = LocalCluster::start_group(3, 4, |c| c.layout.replicas = 2).await.unwrap();
    let config = cluster.config().clone();
    let cfg = cluster.config_path().to_path_buf();
    let mut leader = wait_meta_leader(&config, None, Duration::from_secs(30)).await.unwrap();

    let setup = cluster.client().await.unwrap();
    setup.mkdir_all("/ns").await.unwrap();
    let shared = setup.create("/shared", &CreateOptions::default()).await.unwrap();
    for w in 0..WRITERS {
        for k in 0..RECORDS {
            shared.write_at((k * WRITERS + w) * RECORD as u64, &record(w, 0)).await.unwrap();
        }
    }
    shared.fsync().await.unwrap();
    shared.close().await.unwrap();
    setup.close().await.unwrap();

    let mut ns_client = Some(cluster.client().await.unwrap());
    let writers: Vec<Client> = vec![cluster.client().await.unwrap(), cluster.client().await.unwrap()];
    let mut files: Vec<Option<File>> = Vec::new();
    for c in &writers {
        files.push(Some(c.open("/shared").await.unwrap()));
    }
    let reading = cluster.client().await.unwrap();
    let mut read_file = Some(reading.open("/shared").await.unwrap());
    let sessions: Vec<u64> = [ns_client.as_ref().unwrap(), &writers[0], &writers[1], &reading]
        .iter()
        .map(|c| c.session().unwrap())
        .collect();
    let acked: Acked = Arc::new((0..RECORDS * WRITERS).map(|_| AtomicU64::new(0)).collect());
    let next = Arc::new(AtomicU64::new(0));
    let mut log = NsLog::default();

    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = tokio::spawn(namespace_worker(ns_client.take().unwrap(), stop.clone(), next.clone(), log));
        let ws: Vec<_> = (0..WRITERS)
            .map(|w| {
                let f = files[w as usize].take().unwrap();
                tokio::spawn(writer(w, f, stop.clone(), acked.clone(), round * 1_000_000))
            })
            .collect();
        let rd = tokio::spawn(reader(read_file.take().unwrap(), stop.clone(), acked.clone()));

        tokio::time::sleep(Duration::from_millis(300 + rand_below(900))).await;
        let what = inject(fault, &mut cluster, &config, &mut leader, round).await;
        stop.store(true, Ordering::Relaxed);
        let (c, round_log) = ns.await.unwrap();
        ns_client = Some(c);
        log = round_log;
        for (w, t) in ws.into_iter().enumerate() {
            files[w] = Some(t.await.unwrap());
        }
        let (f, reads) = rd.await.unwrap();
        read_file = Some(f);
        let (first, doubts) = std::mem::take(&mut log.doubts);
        eprintln!("round {round}: {what}; {reads} reads, {doubts} namespace changes in doubt (first: {first:?})");

        // Every acknowledged name is there, and nothing that was never asked for.
        let check = cluster.client().await.unwrap();
        let names: BTreeSet<String> =
            check.readdir("/ns").await.unwrap().into_iter().map(|e| format!("/ns/{}", e.name)).collect();
        let missing: Vec<_> = log.present.iter().filter(|n| !names.contains(*n)).collect();
        assert!(missing.is_empty(), "round {round}: acknowledged names missing: {missing:?}");
        let strays: Vec<_> = names.iter().filter(|n| !log.present.contains(*n) && !log.unknown.contains(*n)).collect();
        assert!(strays.is_empty(), "round {round}: names nobody acknowledged or asked for: {strays:?}");
        // Every record holds its writer's last acknowledged version.
        let f = check.open("/shared").await.unwrap();
        let mut buf = vec![0u8; RECORD * (RECORDS * WRITERS) as usize];
        assert_eq!(f.read_at(0, &mut buf).await.unwrap(), buf.len());
        for (i, rec) in buf.chunks(RECORD).enumerate() {
            let (w, v) = decode(rec, i as u64);
            assert_eq!(w, i as u64 % WRITERS, "round {round}: record {i} holds writer {w}'s bytes");
            assert_eq!(v, acked[i].load(Ordering::Relaxed), "round {round}: record {i}");
        }
        f.close().await.unwrap();
        check.close().await.unwrap();
        ok(run_tool(PFS, &cfg, &["fsck"]));
        ok(run_tool(PFS, &cfg, &["getstripe", "--verify", "/shared"]));
        // Nobody alive was evicted: the same sessions, taken over by every new leader.
        let now: Vec<u64> = [ns_client.as_ref().unwrap(), &writers[0], &writers[1], &reading]
            .iter()
            .map(|c| c.session().unwrap_or_else(|e| panic!("round {round}: a live client was evicted: {e}")))
            .collect();
        assert_eq!(now, sessions);
    }
}

/// Injects `fault` while the load runs, and lets the load run on through its recovery;
/// `leader` becomes the leader after it. Returns what it did, for the log.
async fn inject(fault: Fault, cluster: &mut LocalCluster, config: &Config, leader: &mut u64, round: u64) -> String {
    // The leader may have changed since the last round (an election under load).
    *leader = wait_meta_leader(config, None, Duration::from_secs(30)).await.unwrap();
    let old = *leader;
    match fault {
        Fault::KillLeader | Fault::KillLeaderAndStorage => {
            let storage = DaemonKind::Storage(pfs_common::ServerId(round as u32 % 4 + 1));
            cluster.kill(DaemonKind::Meta(old));
            if fault == Fault::KillLeaderAndStorage {
                cluster.kill(storage);
            }
            *leader = wait_meta_leader(config, Some(old), Duration::from_secs(30)).await.unwrap();
            // The load goes on through the election and the recovery window.
            tokio::time::sleep(Duration::from_millis(800)).await;
            if fault == Fault::KillLeaderAndStorage {
                drop(cluster.restart(storage).await.unwrap());
            }
            drop(cluster.restart(DaemonKind::Meta(old)).await.unwrap());
            match fault {
                Fault::KillLeader => format!("meta-{old} killed, meta-{leader} leads"),
                _ => format!("meta-{old} and {} killed, meta-{leader} leads", storage.name()),
            }
        }
        Fault::PauseLeader => {
            let paused = std::time::Instant::now();
            cluster.suspend(DaemonKind::Meta(old));
            *leader = wait_meta_leader(config, Some(old), Duration::from_secs(30)).await.unwrap();
            let elected = paused.elapsed();
            let rest = Duration::from_secs(10).saturating_sub(elected);
            tokio::time::sleep(rest).await;
            cluster.resume(DaemonKind::Meta(old));
            // The zombie learns of the new term from the others and follows it.
            let now = status_of(config, *leader).await;
            wait_follower(config, old, now.term, 0).await;
            format!("meta-{old} paused for 10 s (meta-{leader} led after {} ms), then a follower", elected.as_millis())
        }
        Fault::WipeFollower => {
            let st = meta_statuses(config).await;
            let follower = st.iter().map(|(n, _)| *n).find(|n| *n != old).unwrap();
            cluster.kill(DaemonKind::Meta(follower));
            let dir = config.meta_dir(follower).unwrap();
            std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("wiping {}: {e}", dir.display()));
            drop(cluster.restart(DaemonKind::Meta(follower)).await.unwrap());
            let now = status_of(config, old).await;
            wait_follower(config, follower, now.term, now.applied).await;
            format!("meta-{follower} wiped and rejoined at {}", now.applied)
        }
    }
}

/// A pseudo-random number below `n` (the moment of a kill need not be reproducible).
fn rand_below(n: u64) -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    (t.subsec_nanos() as u64 ^ t.as_secs().wrapping_mul(0x9e37_79b9)) % n
}
