//! IO500's ior-hard shape through `pfs mount`: four writers (threads, each with its own file
//! descriptor, as four IOR ranks on one node are four processes with their own `open`) write
//! 47008-byte records interleaved into one shared file (record `s × 4 + r` is writer `r`'s in
//! segment `s`), fsync and close it, then each reads back its neighbour's records (IOR's `-C`)
//! and checks every byte; the file is removed and created again between iterations (IOR's
//! `-i`), and one run stops the writers part way as a stonewall does, then lets them wear out
//! to the same count (`-D` with `stoneWallingWearOut=1`).
//!
//! Every write, fsync, close and read must succeed: a byte-range token manager exists for
//! exactly this pattern, and the application is entitled to every one of these calls.

use pfs_testkit::{random_bytes, LocalCluster, Mount};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

const PFS: &str = env!("CARGO_BIN_EXE_pfs");

/// IO500's ior-hard transfer and block size, bytes.
const RECORD: usize = 47008;
const WRITERS: u64 = 4;

/// The bytes of record `record` in iteration `iteration`: every record differs from every
/// other, so a record written to the wrong place or read from a stale cache is caught.
fn record_bytes(iteration: u64, record: u64) -> Vec<u8> {
    random_bytes(RECORD, iteration << 40 | record)
}

/// What one iteration does, and where it stops writing early.
#[derive(Clone, Copy)]
struct Shape {
    segments: u64,
    /// Writer 0 raises the stonewall after this many segments; every writer stops at its next
    /// record, then all go on to the largest count any of them reached (wear-out).
    stonewall_after: Option<u64>,
}

/// Runs one iteration of the shape on `path`; returns the records each writer wrote, or
/// every failure (the call, the record and the OS error).
fn iteration(path: &Path, n: u64, shape: Shape) -> Result<u64, Vec<String>> {
    let barrier = Arc::new(Barrier::new(WRITERS as usize));
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|rank| {
            let (path, barrier, stop, most) = (path.to_path_buf(), barrier.clone(), stop.clone(), most.clone());
            std::thread::spawn(move || rank_main(&path, n, rank, shape, &barrier, &stop, &most))
        })
        .collect();
    let mut failures = Vec::new();
    let mut counts = Vec::new();
    for w in writers {
        match w.join().expect("a writer panicked") {
            Ok(c) => counts.push(c),
            Err(mut e) => failures.append(&mut e),
        }
    }
    if !failures.is_empty() {
        return Err(failures);
    }
    assert!(counts.windows(2).all(|w| w[0] == w[1]), "writers wore out to different counts: {counts:?}");
    Ok(counts[0])
}

/// One writer: its records, fsync and close; then its neighbour's records read back.
fn rank_main(
    path: &PathBuf,
    n: u64,
    rank: u64,
    shape: Shape,
    barrier: &Barrier,
    stop: &AtomicBool,
    most: &AtomicU64,
) -> Result<u64, Vec<String>> {
    let mut failures = Vec::new();
    let fail = |failures: &mut Vec<String>, what: String, e: std::io::Error| {
        failures.push(format!("iteration {n}, writer {rank}: {what}: {e}"));
    };
    // IOR: rank 0 creates the file, the others open it after a barrier.
    let created = if rank == 0 {
        OpenOptions::new().write(true).create(true).truncate(true).open(path)
    } else {
        Err(std::io::Error::other("not rank 0"))
    };
    barrier.wait();
    let file = if rank == 0 { created } else { OpenOptions::new().write(true).open(path) };
    let file = match file {
        Ok(f) => Some(f),
        Err(e) => {
            fail(&mut failures, "open for writing".into(), e);
            None
        }
    };
    let mut written = 0;
    if let Some(f) = &file {
        let write = |s: u64, failures: &mut Vec<String>| {
            let record = s * WRITERS + rank;
            if let Err(e) = f.write_all_at(&record_bytes(n, record), record * RECORD as u64) {
                fail(failures, format!("write of record {record}"), e);
            }
        };
        while written < shape.segments {
            if shape.stonewall_after.is_some() && stop.load(Ordering::Acquire) {
                break;
            }
            write(written, &mut failures);
            written += 1;
            if rank == 0 && shape.stonewall_after == Some(written) {
                stop.store(true, Ordering::Release);
            }
        }
        most.fetch_max(written, Ordering::AcqRel);
    }
    barrier.wait();
    if let Some(f) = &file {
        // Wear-out: every writer goes on to the count the furthest one reached.
        while written < most.load(Ordering::Acquire) {
            let record = written * WRITERS + rank;
            if let Err(e) = f.write_all_at(&record_bytes(n, record), record * RECORD as u64) {
                fail(&mut failures, format!("write of record {record}"), e);
            }
            written += 1;
        }
        if let Err(e) = f.sync_all() {
            fail(&mut failures, "fsync".into(), e);
        }
    }
    drop(file);
    barrier.wait();
    // Read back the neighbour's records (IOR -C: task reordering), every byte checked.
    let neighbour = (rank + 1) % WRITERS;
    match OpenOptions::new().read(true).open(path) {
        Err(e) => fail(&mut failures, "open for reading".into(), e),
        Ok(f) => {
            let mut buf = vec![0u8; RECORD];
            for s in 0..written {
                let record = s * WRITERS + neighbour;
                match f.read_exact_at(&mut buf, record * RECORD as u64) {
                    Err(e) => fail(&mut failures, format!("read of record {record}"), e),
                    Ok(()) if buf != record_bytes(n, record) => {
                        failures.push(format!("iteration {n}, writer {rank}: record {record} read back differs"))
                    }
                    Ok(()) => {}
                }
            }
        }
    }
    barrier.wait();
    if failures.is_empty() {
        Ok(written)
    } else {
        Err(failures)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn interleaved_writers_of_one_file_through_the_mount_never_fail() {
    let cluster = LocalCluster::start_with(4, |c| c.layout.replicas = 2).await.unwrap();
    let at = cluster.dir().join("mnt");
    std::fs::create_dir(&at).unwrap();
    let log = cluster.dir().join("mount.log");
    let _mount = Mount::start(PFS, cluster.config_path(), &at, Some(&log));
    std::fs::create_dir(at.join("h")).unwrap();
    let path = at.join("h/f");
    let report = |n: u64, failures: Vec<String>| -> String {
        let shown: Vec<&String> = failures.iter().take(8).collect();
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        format!("iteration {n}: {} failures, the first: {shown:#?}\nthe mount's log:\n{log}", failures.len())
    };
    let path2 = path.clone();
    let failures = tokio::task::spawn_blocking(move || {
        // IOR -i 3: the file removed and created again under the same name each time.
        for n in 0..3 {
            let shape = Shape { segments: 600, stonewall_after: None };
            if let Err(f) = iteration(&path2, n, shape) {
                return Some((n, f));
            }
            std::fs::remove_file(&path2).unwrap();
        }
        // A stonewalled run: writer 0 stops everyone a third of the way, all wear out.
        let shape = Shape { segments: 1500, stonewall_after: Some(500) };
        match iteration(&path2, 3, shape) {
            Ok(wrote) => {
                assert!(
                    wrote >= 500,
                    "the writers wore out to {wrote} records each, fewer than the stonewall let through"
                );
                None
            }
            Err(f) => Some((3, f)),
        }
    })
    .await
    .unwrap();
    if let Some((n, f)) = failures {
        panic!("{}", report(n, f));
    }
    // The file is whole as the pfs client reads it too (no cache in between).
    let client = cluster.client().await.unwrap();
    let f = client.open("/h/f").await.unwrap();
    let mut buf = vec![0u8; RECORD];
    let records = f.size() / RECORD as u64;
    assert_eq!(f.size() % RECORD as u64, 0, "the size is a whole number of records");
    for record in (0..records).step_by(97) {
        assert_eq!(f.read_at(record * RECORD as u64, &mut buf).await.unwrap(), RECORD);
        assert!(buf == record_bytes(3, record), "record {record} as the pfs client reads it");
    }
    f.close().await.unwrap();
    client.close().await.unwrap();
}
