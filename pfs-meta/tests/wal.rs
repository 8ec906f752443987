//! WAL behaviour on temporary directories: replay, torn tails, corruption, checkpoints and
//! group commit.

use pfs_common::layout::{LayoutChoice, LayoutPolicy};
use pfs_common::{FileId, ServerId};
use pfs_meta::namespace::{Inode, Mutation, Namespace, Op};
use pfs_meta::store::NamespaceStore;
use pfs_meta::{wal, MetaError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const UP: [ServerId; 2] = [ServerId(1), ServerId(2)];

fn open(dir: &Path, checkpoint_records: u64) -> pfs_meta::Result<NamespaceStore> {
    NamespaceStore::open(dir, checkpoint_records, LayoutPolicy::default())
}

/// Runs `op`; returns the inode it answers with, if any.
async fn exec(store: &NamespaceStore, op: Op) -> pfs_meta::Result<Option<Inode>> {
    store.execute(&op, &UP, &|_| false).await.map(|a| a.inode)
}

fn create(path: &str) -> Op {
    Op::Create {
        path: path.into(),
        layout: LayoutChoice::default(),
        exclusive: true,
        attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o644, uid: 0, gid: 0 },
    }
}

fn lookup(store: &NamespaceStore, path: &str) -> Inode {
    store.read(|n| n.resolve(path).cloned()).0.unwrap()
}

fn stat(store: &NamespaceStore, file: FileId) -> Inode {
    store.read(|n| n.inode(file).cloned()).0.unwrap()
}

/// Makes a small tree: /d, /d/f<i> with sizes; returns the number of records written.
async fn populate(store: &NamespaceStore, files: u64) -> u64 {
    exec(
        store,
        Op::Mkdir { path: "/d".into(), attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 } },
    )
    .await
    .unwrap();
    for i in 0..files {
        let a = exec(store, create(&format!("/d/f{i}"))).await.unwrap().unwrap();
        exec(store, Op::SetSize { file: a.id, size: 1000 + i }).await.unwrap();
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
    assert_eq!(lookup(&store, "/d/f3").size, 1003);
    // New ids continue after the replayed ones.
    let g = exec(&store, create("/g")).await.unwrap().unwrap();
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
    let f2 = lookup(&store, "/d/f2");
    assert_eq!(f2.size, 0);
    assert_eq!(lookup(&store, "/d/f1").size, 1001);
    // The log keeps working after the cut, and survives another reopen.
    exec(&store, Op::SetSize { file: f2.id, size: 77 }).await.unwrap();
    drop(store);
    let store = open(dir.path(), 1000).unwrap();
    assert_eq!(stat(&store, f2.id).size, 77);
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
    assert_eq!(lookup(&store, "/d/f1").size, 0, "the final SetSize was cut off");
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
    match open(dir.path(), 1000).err().expect("start-up must fail") {
        MetaError::Corrupt { file, offset, .. } => assert_eq!((file, offset), (seg.clone(), Some(victim))),
        other => panic!("{other}"),
    }
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
    match open(dir.path(), 1000).err().expect("start-up must fail") {
        MetaError::Corrupt { file, offset: Some(_), .. } => assert_eq!(file, first),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_record_that_does_not_apply_fails_startup_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), 1000).unwrap();
        populate(&store, 2).await; // records 1..=5
    }
    // A well-formed record (right length and crc32c) that cannot apply: it removes a name
    // that does not exist. Valid records follow it, so it is not a torn tail either.
    let seg = segments(dir.path()).pop().unwrap();
    let at = std::fs::metadata(&seg).unwrap().len();
    let bad = wal::Record {
        lsn: 6,
        mutation: Mutation::Remove { parent: FileId::ROOT, name: "ghost".into(), time_ns: 1, orphan: false },
    };
    let next = wal::Record { lsn: 7, mutation: Mutation::SetSize { file: FileId(3), size: 1, time_ns: 1 } };
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend(wal::frame_record(&bad));
    bytes.extend(wal::frame_record(&next));
    std::fs::write(&seg, &bytes).unwrap();
    match open(dir.path(), 1000).err().expect("start-up must fail, not skip the record") {
        MetaError::Corrupt { file, offset, .. } => assert_eq!((file, offset), (seg, Some(at))),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn checkpoint_and_rotation_then_replay_gives_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = open(dir.path(), 4).unwrap();
        let records = populate(&store, 10).await;
        assert_eq!(records, 21);
        exec(
            &store,
            Op::Rename { from: "/d/f0".into(), to: "/d/f1".into(), expected_generation: None, no_replace: false },
        )
        .await
        .unwrap();
        exec(&store, Op::Unlink { path: "/d/f2".into(), expected_generation: None }).await.unwrap();
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
    exec(
        &store,
        Op::Mkdir { path: "/e".into(), attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 } },
    )
    .await
    .unwrap();
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
    exec(
        &store,
        Op::Mkdir { path: "/g".into(), attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 } },
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                exec(&store, create(&format!("/g/t{t}-{i}"))).await.unwrap();
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
    assert_eq!(lookup(&store, "/g").entries.len(), 400);
}

/// A metadata directory from another format is refused at start with an error naming the
/// format file, never decoded as this one; POSIX attributes and links survive a replay.
#[tokio::test]
async fn another_format_is_refused_and_posix_attributes_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("meta");
    {
        let store = open(&dir, 1000).unwrap();
        populate(&store, 1).await;
        let f = lookup(&store, "/d/f0");
        let change =
            Op::SetAttr { file: f.id, mode: Some(0o4750), uid: Some(42), gid: Some(7), atime: None, mtime: None };
        exec(&store, change).await.unwrap();
        exec(&store, Op::Link { file: f.id, path: "/d/again".into() }).await.unwrap();
    }
    let store = open(&dir, 1000).unwrap();
    let f = lookup(&store, "/d/again");
    assert_eq!((f.mode, f.uid, f.gid, f.nlink), (0o4750, 42, 7, 2));
    drop(store);

    let format = dir.join(wal::FORMAT_FILE);
    std::fs::write(&format, "pfs-meta format 1\n").unwrap();
    let e = open(&dir, 1000).err().expect("another format is refused");
    assert!(matches!(e, MetaError::Corrupt { .. }) && e.to_string().contains("format 1"), "{e}");
    std::fs::remove_file(&format).unwrap();
    let e = open(&dir, 1000).err().expect("a log without a format file is refused");
    assert!(e.to_string().contains(wal::FORMAT_FILE) && e.to_string().contains("older"), "{e}");
}

/// A read of inodes waits for the last change of what it read, not for every change: the
/// LSN `read_inodes` answers is the last change of the directories walked and the inode
/// found (or of the directory that lacks the name), not the log's newest.
#[tokio::test]
async fn reads_of_inodes_wait_for_their_own_changes_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1_000_000).unwrap();
    let attrs = pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 };
    exec(&store, Op::Mkdir { path: "/a".into(), attrs }).await.unwrap(); // LSN 1
    exec(&store, Op::Mkdir { path: "/b".into(), attrs }).await.unwrap(); // LSN 2 (root too)
    let b = exec(&store, create("/b/x")).await.unwrap().unwrap(); // LSN 3
    let f = exec(&store, create("/a/f")).await.unwrap().unwrap(); // LSN 4
    exec(&store, Op::SetSize { file: f.id, size: 10 }).await.unwrap(); // LSN 5
    let newest = store.durable().borrow().lsn;
    assert_eq!(newest, 5);
    let lsn_of = |path: &str| {
        let target = pfs_common::wire::namespace::Target::Path(path.into());
        store.read_inodes(|n, read| n.lookup_traced(&target, read).map(|i| i.id)).1
    };
    assert_eq!(lsn_of("/a/f"), 5, "the file's own last change");
    assert_eq!(lsn_of("/b/x"), 3, "untouched by the later changes of /a");
    assert_eq!(lsn_of("/b/missing"), 3, "a name missing in /b: the last change of /b");
    assert_eq!(lsn_of("/b/x/.."), 3, "NotDir on the way: what was walked");
    assert_eq!(lsn_of("/a/../b/x"), 4, "`..` still walked /a, whose last change (an entry) was 4");
    let by_id = store.read_inodes(|n, read| {
        read.push(b.id);
        n.inode(b.id).map(|i| i.id).ok()
    });
    assert_eq!(by_id, (Some(b.id), 3));
    // A removal is a change of the removed inode too: a stat by id waits for it.
    exec(&store, Op::Unlink { path: "/b/x".into(), expected_generation: None }).await.unwrap(); // LSN 6
    let gone = store.read_inodes(|n, read| {
        read.push(b.id);
        n.inode(b.id).map(|i| i.id).is_err()
    });
    assert_eq!(gone, (true, 6));
}
