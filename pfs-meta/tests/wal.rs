//! WAL behaviour on temporary directories: replay, torn tails, corruption, checkpoints and
//! group commit.

use pfs_common::layout::LayoutPolicy;
use pfs_common::wire::meta::{Attr, LayoutRequest, MetaRequest, MetaResponse};
use pfs_common::{ErrorCode, ServerId};
use pfs_meta::namespace::Namespace;
use pfs_meta::store::Store;
use pfs_meta::wal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const UP: [ServerId; 2] = [ServerId(1), ServerId(2)];

fn open(dir: &Path, checkpoint_records: u64) -> pfs_common::Result<Store> {
    Store::open(dir, checkpoint_records, LayoutPolicy::default())
}

async fn exec(store: &Store, req: MetaRequest) -> pfs_common::Result<MetaResponse> {
    store.execute(&req, &UP).await.map(|a| a.response)
}

fn attr(r: MetaResponse) -> Attr {
    match r {
        MetaResponse::Attr(a) => a,
        other => panic!("expected Attr, got {other:?}"),
    }
}

/// Makes a small tree: /d, /d/f<i> with sizes; returns the number of records written.
async fn populate(store: &Store, files: u64) -> u64 {
    exec(store, MetaRequest::Mkdir { path: "/d".into() }).await.unwrap();
    for i in 0..files {
        let path = format!("/d/f{i}");
        let a = attr(
            exec(store, MetaRequest::Create { path, layout: LayoutRequest::default(), exclusive: true }).await.unwrap(),
        );
        exec(store, MetaRequest::SetSize { file: a.id, size: 1000 + i }).await.unwrap();
    }
    1 + 2 * files
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("wal-"))
        .collect();
    v.sort();
    v
}

fn checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("checkpoint-"))
        .collect();
    v.sort();
    v
}

/// Byte offsets of the records in a segment.
fn record_offsets(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut offs = Vec::new();
    let mut off = 0usize;
    while off < bytes.len() {
        offs.push(off as u64);
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        off += 8 + len;
    }
    offs
}

#[tokio::test]
async fn replay_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = open(dir.path(), 1000).unwrap();
        populate(&store, 5).await;
        store.snapshot()
    };
    let store = open(dir.path(), 1000).unwrap();
    assert_eq!(store.snapshot(), before);
    let f = attr(exec(&store, MetaRequest::Lookup { path: "/d/f3".into() }).await.unwrap());
    assert_eq!(f.size, 1003);
    // New ids continue after the replayed ones.
    let g = attr(
        exec(&store, MetaRequest::Create { path: "/g".into(), layout: LayoutRequest::default(), exclusive: true })
            .await
            .unwrap(),
    );
    assert!(before.get(g.id).is_none());
}

#[tokio::test]
async fn torn_tail_is_cut_and_earlier_records_survive() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), 1000).unwrap();
        populate(&store, 3).await;
    }
    let seg = segments(dir.path()).pop().unwrap();
    let offs = record_offsets(&seg);
    let last = *offs.last().unwrap();
    let full_len = std::fs::metadata(&seg).unwrap().len();
    // Tear the last record: keep only part of it.
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(full_len - 3).unwrap();
    drop(f);
    let store = open(dir.path(), 1000).unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), last, "the torn record is cut off");
    // The last record was the SetSize of /d/f2: the file exists with size 0 now.
    let f2 = attr(exec(&store, MetaRequest::Lookup { path: "/d/f2".into() }).await.unwrap());
    assert_eq!(f2.size, 0);
    let f1 = attr(exec(&store, MetaRequest::Lookup { path: "/d/f1".into() }).await.unwrap());
    assert_eq!(f1.size, 1001);
    // The log keeps working after the cut, and survives another reopen.
    exec(&store, MetaRequest::SetSize { file: f2.id, size: 77 }).await.unwrap();
    drop(store);
    let store = open(dir.path(), 1000).unwrap();
    assert_eq!(attr(exec(&store, MetaRequest::Stat { file: f2.id }).await.unwrap()).size, 77);
}

#[tokio::test]
async fn corrupt_final_crc_is_cut_but_garbage_length_in_middle_fails() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), 1000).unwrap();
        populate(&store, 2).await;
    }
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff; // bad crc on the final record
    std::fs::write(&seg, &bytes).unwrap();
    let store = open(dir.path(), 1000).unwrap();
    let f1 = attr(exec(&store, MetaRequest::Lookup { path: "/d/f1".into() }).await.unwrap());
    assert_eq!(f1.size, 0, "the final SetSize was cut off");
}

#[tokio::test]
async fn corruption_in_the_middle_fails_startup_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), 1000).unwrap();
        populate(&store, 3).await;
    }
    let seg = segments(dir.path()).pop().unwrap();
    let offs = record_offsets(&seg);
    let victim = offs[2];
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[victim as usize + 9] ^= 0x55; // payload byte of the third record
    std::fs::write(&seg, &bytes).unwrap();
    let err = open(dir.path(), 1000).err().expect("start-up must fail");
    assert_eq!(err.code, ErrorCode::Io);
    assert!(err.message.contains(seg.to_str().unwrap()), "{err}");
    assert!(err.message.contains(&format!("offset {victim}")), "{err}");
    // The file is left as it was for an operator to look at.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
}

#[tokio::test]
async fn corruption_in_an_earlier_segment_fails_startup() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), 1_000_000).unwrap();
        populate(&store, 2).await;
    }
    // Make a second segment by hand: an empty newer segment makes the first one "earlier".
    let first = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&first).unwrap().len();
    let mut bytes = std::fs::read(&first).unwrap();
    bytes.truncate(len as usize - 2); // torn, but not in the last segment
    std::fs::write(&first, &bytes).unwrap();
    std::fs::write(dir.path().join(format!("wal-{:016x}.log", 1000)), b"").unwrap();
    let err = open(dir.path(), 1000).err().expect("start-up must fail");
    assert!(err.message.contains(first.to_str().unwrap()), "{err}");
    assert!(err.message.contains("offset"), "{err}");
}

#[tokio::test]
async fn checkpoint_and_rotation_then_replay_gives_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = open(dir.path(), 4).unwrap();
        let records = populate(&store, 10).await;
        assert_eq!(records, 21);
        exec(&store, MetaRequest::Rename { from: "/d/f0".into(), to: "/d/f1".into(), expected_generation: None })
            .await
            .unwrap();
        exec(&store, MetaRequest::Unlink { path: "/d/f2".into(), expected_generation: None }).await.unwrap();
        store.snapshot()
    };
    // 23 records, a checkpoint every 4: the newest at 20, segments before it are gone.
    let cps = checkpoints(dir.path());
    assert_eq!(cps.len(), 1, "{cps:?}");
    assert!(cps[0].ends_with(format!("checkpoint-{:016x}.snap", 20)), "{cps:?}");
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert!(segs[0].ends_with(format!("wal-{:016x}.log", 21)), "{segs:?}");
    let store = open(dir.path(), 4).unwrap();
    assert_eq!(store.snapshot(), before);
    // And once more after further records and checkpoints.
    exec(&store, MetaRequest::Mkdir { path: "/e".into() }).await.unwrap();
    let again = store.snapshot();
    drop(store);
    assert_eq!(open(dir.path(), 4).unwrap().snapshot(), again);
}

#[tokio::test]
async fn recover_reads_checkpoint_even_without_segments() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = open(dir.path(), 3).unwrap();
        populate(&store, 1).await; // exactly 3 records: checkpoint at 3
        store.snapshot()
    };
    for s in segments(dir.path()) {
        std::fs::remove_file(s).unwrap();
    }
    let rec = wal::recover(dir.path(), LayoutPolicy::default()).unwrap();
    assert_eq!(rec.checkpoint_lsn, 3);
    assert_eq!(rec.last_lsn, 3);
    assert_eq!(rec.namespace, before);
    assert_ne!(rec.namespace, Namespace::new(LayoutPolicy::default()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_makes_many_concurrent_mutations_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), 1_000_000).unwrap());
    exec(&store, MetaRequest::Mkdir { path: "/g".into() }).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let path = format!("/g/t{t}-{i}");
                exec(&store, MetaRequest::Create { path, layout: LayoutRequest::default(), exclusive: true })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every acknowledged mutation is durable: the durable LSN covers them all.
    assert!(store.durable().borrow().lsn >= 401);
    let before = store.snapshot();
    drop(store);
    let store = open(dir.path(), 1_000_000).unwrap();
    assert_eq!(store.snapshot(), before);
    let dir_attr = attr(exec(&store, MetaRequest::Lookup { path: "/g".into() }).await.unwrap());
    assert_eq!(dir_attr.entries, 400);
}
