//! The metadata log of a single meta node on temporary directories: replay, torn tails,
//! corruption, snapshots and group commit, through the namespace store as pfs-meta runs it
//! (a Raft group of one).

use openraft::BasicNode;
use pfs_common::auth::Auth;
use pfs_common::layout::{LayoutChoice, LayoutPolicy};
use pfs_common::rpc::ConnectOptions;
use pfs_common::wire::namespace::NewAttrs;
use pfs_common::wire::PeerRole;
use pfs_common::{FileId, ServerId};
use pfs_meta::namespace::{Inode, Mutation, Namespace, Op};
use pfs_meta::raft::files::FORMAT_FILE;
use pfs_meta::raft::log_store::frame_entry;
use pfs_meta::raft::network::Network;
use pfs_meta::raft::{Command, Entry, Proposal};
use pfs_meta::store::{NamespaceStore, NodeOptions};
use pfs_meta::MetaError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const UP: [ServerId; 2] = [ServerId(1), ServerId(2)];
const DIR_ATTRS: NewAttrs = NewAttrs { mode: 0o755, uid: 0, gid: 0 };

async fn open(dir: &Path, snapshot_entries: u64) -> pfs_meta::Result<NamespaceStore> {
    let opts = NodeOptions {
        id: 1,
        dir: dir.to_path_buf(),
        members: [(1, BasicNode::new("127.0.0.1:9"))].into_iter().collect(),
        snapshot_entries,
        root_policy: LayoutPolicy::default(),
        probe: None,
    };
    let connect = ConnectOptions {
        role: PeerRole::Meta,
        name: "test".into(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        auth: Auth::none(),
    };
    NamespaceStore::open(opts, Network { me: 1, connect }).await
}

/// Stops the node so its directory can be opened again.
async fn close(store: NamespaceStore) {
    store.shutdown().await;
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
        attrs: NewAttrs { mode: 0o644, uid: 0, gid: 0 },
    }
}

async fn lookup(store: &NamespaceStore, path: &str) -> Inode {
    store.read_ready(|n| n.resolve(path).cloned()).await.unwrap().0.unwrap()
}

/// The namespace once this node leads and every entry it holds is applied.
async fn settled(store: &NamespaceStore) -> Namespace {
    store.read_ready(|_| ()).await.unwrap();
    store.committed()
}

/// Makes a small tree: /d, /d/f<i> with sizes; returns the number of mutations made.
async fn populate(store: &NamespaceStore, files: u64) -> u64 {
    exec(store, Op::Mkdir { path: "/d".into(), attrs: DIR_ATTRS }).await.unwrap();
    for i in 0..files {
        let a = exec(store, create(&format!("/d/f{i}"))).await.unwrap().unwrap();
        exec(store, Op::SetSize { file: a.id, size: 1000 + i }).await.unwrap();
    }
    1 + 2 * files
}

fn listed(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// A closed node's directory after [`populate`] with `files`, and its newest log segment.
async fn populated_segment(files: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1000).await.unwrap();
    populate(&store, files).await;
    close(store).await;
    let seg = listed(dir.path(), "log-0").pop().unwrap();
    (dir, seg)
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
    let store = open(dir.path(), 1000).await.unwrap();
    populate(&store, 5).await;
    let before = store.read(|n| n.clone()).unwrap().0;
    assert_eq!(store.committed(), before, "what was acknowledged is committed");
    close(store).await;
    let store = open(dir.path(), 1000).await.unwrap();
    assert_eq!(settled(&store).await, before);
    assert_eq!(lookup(&store, "/d/f3").await.size, 1003);
    // New ids continue after the replayed ones.
    let g = exec(&store, create("/g")).await.unwrap().unwrap();
    assert!(before.get(g.id).is_none());
}

#[tokio::test]
async fn torn_tail_is_cut_and_earlier_entries_survive() {
    let (dir, seg) = populated_segment(3).await;
    let offs = record_offsets(&seg);
    let last = *offs.last().unwrap();
    let full_len = std::fs::metadata(&seg).unwrap().len();
    // Tear the last record: keep only part of it.
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(full_len - 3).unwrap();
    drop(f);
    let store = open(dir.path(), 1000).await.unwrap();
    // The last entry was the SetSize of /d/f2: the file exists with size 0 now.
    let f2 = lookup(&store, "/d/f2").await;
    assert_eq!(f2.size, 0);
    assert_eq!(lookup(&store, "/d/f1").await.size, 1001);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), last, "the torn record is cut off");
    // The log keeps working after the cut, and survives another reopen.
    exec(&store, Op::SetSize { file: f2.id, size: 77 }).await.unwrap();
    close(store).await;
    let store = open(dir.path(), 1000).await.unwrap();
    assert_eq!(lookup(&store, "/d/f2").await.size, 77);
}

#[tokio::test]
async fn corrupt_final_crc_is_cut() {
    let (dir, seg) = populated_segment(2).await;
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff; // bad crc on the final record
    std::fs::write(&seg, &bytes).unwrap();
    let store = open(dir.path(), 1000).await.unwrap();
    assert_eq!(lookup(&store, "/d/f1").await.size, 0, "the final SetSize was cut off");
}

#[tokio::test]
async fn corruption_in_the_middle_fails_startup_naming_file_and_offset() {
    let (dir, seg) = populated_segment(3).await;
    let offs = record_offsets(&seg);
    let victim = offs[2];
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[victim as usize + 9] ^= 0x55; // payload byte of the third record
    std::fs::write(&seg, &bytes).unwrap();
    match open(dir.path(), 1000).await.err().expect("start-up must fail") {
        MetaError::Corrupt { file, offset, .. } => assert_eq!((file, offset), (seg.clone(), Some(victim))),
        other => panic!("{other}"),
    }
    // The file is left as it was for an operator to look at.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
}

#[tokio::test]
async fn an_entry_that_does_not_apply_stops_the_node_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1000).await.unwrap();
    populate(&store, 2).await;
    let last = store.applied().unwrap();
    close(store).await;
    // A well-formed entry (right length and crc32c) that cannot apply: it removes a name
    // that does not exist.
    let seg = listed(dir.path(), "log-0").pop().unwrap();
    let mut bad: Entry = Entry { log_id: last, payload: openraft::EntryPayload::Blank };
    bad.log_id.index += 1;
    bad.payload = openraft::EntryPayload::Normal(Command::Namespace {
        proposal: Proposal { term: last.leader_id.term, run: 1, seq: 99 },
        mutation: Mutation::Remove { parent: FileId::ROOT, name: "ghost".into(), time_ns: 1, orphan: false },
    });
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend(frame_entry(&bad));
    std::fs::write(&seg, &bytes).unwrap();
    let store = open(dir.path(), 1000).await.unwrap();
    let e = store.run_leadership().await.expect_err("the node must stop, not skip the entry");
    let msg = e.to_string();
    assert!(msg.contains(&bad.log_id.index.to_string()) && msg.contains("does not apply"), "{msg}");
}

#[tokio::test]
async fn snapshot_then_replay_gives_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 8).await.unwrap();
    populate(&store, 10).await;
    exec(&store, Op::Rename { from: "/d/f0".into(), to: "/d/f1".into(), expected_generation: None, no_replace: false })
        .await
        .unwrap();
    exec(&store, Op::Unlink { path: "/d/f2".into(), expected_generation: None }).await.unwrap();
    let before = store.read(|n| n.clone()).unwrap().0;
    // 2 + 23 entries, a snapshot every 8.
    let applied = store.applied().unwrap();
    store
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.snapshot.is_some_and(|s| s.index + 8 > applied.index), "a recent snapshot")
        .await
        .unwrap();
    close(store).await;
    let snaps = listed(dir.path(), "snapshot-");
    assert_eq!(snaps.len(), 1, "older snapshots are removed: {snaps:?}");
    let store = open(dir.path(), 8).await.unwrap();
    assert_eq!(settled(&store).await, before);
    exec(&store, Op::Mkdir { path: "/e".into(), attrs: DIR_ATTRS }).await.unwrap();
    let again = store.read(|n| n.clone()).unwrap().0;
    close(store).await;
    let store = open(dir.path(), 8).await.unwrap();
    assert_eq!(settled(&store).await, again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_makes_many_concurrent_mutations_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), 1_000_000).await.unwrap());
    exec(&store, Op::Mkdir { path: "/g".into(), attrs: DIR_ATTRS }).await.unwrap();
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
    // Every acknowledged mutation is committed.
    let before = store.read(|n| n.clone()).unwrap().0;
    assert_eq!(store.committed(), before);
    let store = Arc::into_inner(store).unwrap();
    close(store).await;
    let store = open(dir.path(), 1_000_000).await.unwrap();
    assert_eq!(settled(&store).await, before);
    assert_eq!(lookup(&store, "/g").await.entries.len(), 400);
}

/// A metadata directory from another format is refused at start with an error naming the
/// format file, never decoded as this one; POSIX attributes and links survive a replay.
#[tokio::test]
async fn another_format_is_refused_and_posix_attributes_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("meta");
    let store = open(&dir, 1000).await.unwrap();
    populate(&store, 1).await;
    let f = lookup(&store, "/d/f0").await;
    let change = Op::SetAttr { file: f.id, mode: Some(0o4750), uid: Some(42), gid: Some(7), atime: None, mtime: None };
    exec(&store, change).await.unwrap();
    exec(&store, Op::Link { file: f.id, path: "/d/again".into() }).await.unwrap();
    close(store).await;
    let store = open(&dir, 1000).await.unwrap();
    let f = lookup(&store, "/d/again").await;
    assert_eq!((f.mode, f.uid, f.gid, f.nlink), (0o4750, 42, 7, 2));
    close(store).await;

    let format = dir.join(FORMAT_FILE);
    std::fs::write(&format, "pfs-meta format 2\n").unwrap();
    let e = open(&dir, 1000).await.err().expect("another format is refused");
    assert!(matches!(e, MetaError::Corrupt { .. }) && e.to_string().contains("format 2"), "{e}");
    std::fs::remove_file(&format).unwrap();
    let e = open(&dir, 1000).await.err().expect("a log without a format file is refused");
    assert!(e.to_string().contains(FORMAT_FILE) && e.to_string().contains("older"), "{e}");
}

/// A read of inodes waits for the last change of what it read, not for every change: the
/// proposal `read_inodes` answers is the last change of the directories walked and the
/// inode found (or of the directory that lacks the name), not the newest one.
#[tokio::test]
async fn reads_of_inodes_wait_for_their_own_changes_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1_000_000).await.unwrap();
    exec(&store, Op::Mkdir { path: "/a".into(), attrs: DIR_ATTRS }).await.unwrap(); // 1
    exec(&store, Op::Mkdir { path: "/b".into(), attrs: DIR_ATTRS }).await.unwrap(); // 2 (root too)
    let b = exec(&store, create("/b/x")).await.unwrap().unwrap(); // 3
    let f = exec(&store, create("/a/f")).await.unwrap().unwrap(); // 4
    exec(&store, Op::SetSize { file: f.id, size: 10 }).await.unwrap(); // 5
    let newest = store.read(|_| ()).unwrap().1;
    assert_eq!(newest.seq, 5);
    let seq_of = |path: &str| {
        let target = pfs_common::wire::namespace::Target::Path(path.into());
        store.read_inodes(|n, read| n.lookup_traced(&target, read).map(|i| i.id)).unwrap().1.seq
    };
    assert_eq!(seq_of("/a/f"), 5, "the file's own last change");
    assert_eq!(seq_of("/b/x"), 3, "untouched by the later changes of /a");
    assert_eq!(seq_of("/b/missing"), 3, "a name missing in /b: the last change of /b");
    assert_eq!(seq_of("/b/x/.."), 3, "NotDir on the way: what was walked");
    assert_eq!(seq_of("/a/../b/x"), 4, "`..` still walked /a, whose last change (an entry) was 4");
    let (found, seen) = store
        .read_inodes(|n, read| {
            read.push(b.id);
            n.inode(b.id).map(|i| i.id).ok()
        })
        .unwrap();
    assert_eq!((found, seen.seq), (Some(b.id), 3));
    // A removal is a change of the removed inode too: a stat by id waits for it.
    exec(&store, Op::Unlink { path: "/b/x".into(), expected_generation: None }).await.unwrap(); // 6
    let (gone, seen) = store
        .read_inodes(|n, read| {
            read.push(b.id);
            n.inode(b.id).map(|i| i.id).is_err()
        })
        .unwrap();
    assert_eq!((gone, seen.seq), (true, 6));
}
