use super::*;
use pfs_common::ids::Sha256Digest;
use proptest::prelude::*;

const UP: [ServerId; 3] = [ServerId(1), ServerId(2), ServerId(3)];

const FILE_ATTRS: NewAttrs = NewAttrs { mode: 0o644, uid: 0, gid: 0 };
const DIR_ATTRS: NewAttrs = NewAttrs { mode: 0o755, uid: 0, gid: 0 };

fn ctx(now_ns: i64) -> Context<'static> {
    Context { now_ns, up_servers: &UP, is_open: &|_| false }
}

/// Prepares and applies `op`; returns the inode it is about (if any).
fn run(ns: &mut Namespace, op: Op) -> Result<Option<Inode>> {
    let out = match ns.prepare(&op, &ctx(1000))? {
        Decision::Unchanged(inode) | Decision::Replayed(inode) => inode,
        Decision::Mutate(m) => ns.apply(&m)?.inode,
    };
    ns.check_invariants().unwrap();
    Ok(out)
}

fn file(r: Result<Option<Inode>>) -> Inode {
    r.unwrap().expect("the operation answers an inode")
}

fn mkdir(p: &str) -> Op {
    Op::Mkdir { path: p.into(), attrs: DIR_ATTRS }
}
fn create(p: &str) -> Op {
    Op::Create { path: p.into(), layout: LayoutChoice::default(), exclusive: true, attrs: FILE_ATTRS }
}
fn rename(from: &str, to: &str) -> Op {
    Op::Rename { from: from.into(), to: to.into(), expected_generation: None, no_replace: false }
}

#[test]
fn paths_are_validated() {
    for bad in ["", "a/b", "/a\0b"] {
        assert!(matches!(split_path(bad), Err(MetaError::BadPath { .. })), "{bad:?}");
    }
    let long_name = format!("/{}", "x".repeat(256));
    let e = split_path(&long_name).unwrap_err();
    assert!(matches!(&e, MetaError::NameTooLong { path, .. } if path.len() <= 67), "shortened for display: {e}");
    let long_path = "/abc".repeat(1100);
    assert_eq!(split_path(&long_path).unwrap_err().code(), pfs_common::ErrorCode::NameTooLong);
    assert_eq!(split_path("/").unwrap(), Vec::<&str>::new());
    assert_eq!(split_path("/a/b").unwrap(), vec!["a", "b"]);
    // Repeated slashes, `.`, `..` and a trailing slash are Linux's (see `path`).
    assert_eq!(split_path("//a/./c/../b/").unwrap(), vec!["a", "b"]);
}

#[test]
fn mkdir_create_lookup_and_errors() {
    let mut ns = Namespace::new(LayoutPolicy::default());
    assert_eq!(run(&mut ns, mkdir("/d")).unwrap().unwrap().kind, InodeKind::Dir, "mkdir answers the new directory");
    let d = ns.resolve("/d").unwrap().clone();
    assert_eq!(d.kind, InodeKind::Dir);
    assert!(matches!(run(&mut ns, mkdir("/d")), Err(MetaError::Exists { path }) if path == "/d"));
    assert!(matches!(run(&mut ns, mkdir("/x/y")), Err(MetaError::NotFound { path }) if path == "/x/y"));
    let f = file(run(&mut ns, create("/d/f")));
    assert_eq!(f.layout.as_ref().unwrap().chains.len(), 3);
    assert!(f.id.0 > d.id.0);
    assert!(matches!(run(&mut ns, create("/d/f")), Err(MetaError::Exists { path }) if path == "/d/f"));
    // Non-exclusive create answers the existing file.
    let again = file(run(
        &mut ns,
        Op::Create { path: "/d/f".into(), layout: LayoutChoice::default(), exclusive: false, attrs: FILE_ATTRS },
    ));
    assert_eq!(again, f);
    assert!(matches!(run(&mut ns, create("/d/f/g")), Err(MetaError::NotDir { .. })));
    assert!(matches!(ns.resolve("/d/f/g"), Err(MetaError::NotDir { .. })));
    assert_eq!(ns.resolve("/d/f").unwrap(), &f);
    assert!(matches!(ns.resolve("relative"), Err(MetaError::BadPath { .. })));
    assert!(matches!(run(&mut ns, mkdir("/")), Err(MetaError::Exists { .. })), "as Linux's mkdir(\"/\")");
}

#[test]
fn layouts_inherit_clamp_and_rotate() {
    let policy = LayoutPolicy { block_size: 4096, stripe_blocks: 4, stripe_count: 2, replicas: 1 };
    let mut ns = Namespace::new(policy);
    run(&mut ns, mkdir("/d")).unwrap();
    let a = file(run(&mut ns, create("/d/a"))).layout.unwrap();
    let b = file(run(&mut ns, create("/d/b"))).layout.unwrap();
    assert_eq!((a.block_size, a.stripe_blocks), (4096, 4));
    let servers = |ns: &Namespace, l: &Layout| -> Vec<ServerId> {
        l.chains.iter().map(|c| ns.chains().get(*c).unwrap().head().unwrap()).collect()
    };
    assert_eq!(servers(&ns, &a), vec![ServerId(1), ServerId(2)]);
    assert_eq!(servers(&ns, &b), vec![ServerId(2), ServerId(3)]);
    assert_eq!(a.chains[1], b.chains[0], "one chain per head and replica count, shared by files");
    // A larger block keeps the policy's chunk size (16 KiB = 2 blocks of 8 KiB).
    let layout = LayoutChoice { block_size: Some(8192), chunk_size: None, stripe_count: Some(99), replicas: None };
    let c = file(run(&mut ns, Op::Create { path: "/c".into(), layout, exclusive: true, attrs: FILE_ATTRS }))
        .layout
        .unwrap();
    assert_eq!((c.block_size, c.stripe_blocks), (8192, 2));
    assert_eq!(servers(&ns, &c), vec![ServerId(3), ServerId(1), ServerId(2)]);
    // Two replicas: chains of two distinct servers, heads spread.
    let layout = LayoutChoice { replicas: Some(2), ..Default::default() };
    let r = file(run(&mut ns, Op::Create { path: "/r".into(), layout, exclusive: true, attrs: FILE_ATTRS }))
        .layout
        .unwrap();
    assert_eq!(r.replicas, 2);
    for id in &r.chains {
        let chain = ns.chains().get(*id).unwrap();
        let members: std::collections::BTreeSet<_> = chain.members.iter().map(|m| m.server).collect();
        assert_eq!(members.len(), 2, "{}", chain.describe());
    }
    let layout = LayoutChoice { replicas: Some(4), ..Default::default() };
    assert!(matches!(
        run(&mut ns, Op::Create { path: "/r4".into(), layout, exclusive: true, attrs: FILE_ATTRS }),
        Err(MetaError::Invalid(_))
    ));
    let layout = LayoutChoice { chunk_size: Some(12288), ..Default::default() };
    let d = file(run(&mut ns, Op::Create { path: "/d3".into(), layout, exclusive: true, attrs: FILE_ATTRS }))
        .layout
        .unwrap();
    assert_eq!((d.block_size, d.stripe_blocks), (4096, 3));
    for layout in [
        LayoutChoice { block_size: Some(1000), ..Default::default() },
        LayoutChoice { chunk_size: Some(5000), ..Default::default() },
        LayoutChoice { chunk_size: Some(0), ..Default::default() },
    ] {
        let e =
            run(&mut ns, Op::Create { path: "/bad".into(), layout, exclusive: true, attrs: FILE_ATTRS }).unwrap_err();
        assert!(matches!(e, MetaError::Invalid(_)), "{layout:?}: {e}");
    }
    let none_up = Context { now_ns: 1, up_servers: &[], is_open: &|_| false };
    assert!(matches!(ns.prepare(&create("/e"), &none_up), Err(MetaError::NoServers { path, .. }) if path == "/e"));
    let one_up = Context { now_ns: 1, up_servers: &[ServerId(1)], is_open: &|_| false };
    let two = Op::Create {
        path: "/e".into(),
        layout: LayoutChoice { replicas: Some(2), ..Default::default() },
        exclusive: true,
        attrs: FILE_ATTRS,
    };
    assert!(matches!(ns.prepare(&two, &one_up), Err(MetaError::NoServers { .. })), "2 replicas need 2 servers");
}

#[test]
fn readdir_pages_in_name_order() {
    let mut ns = Namespace::new(LayoutPolicy::default());
    for n in ["c", "a", "e", "b", "d"] {
        run(&mut ns, create(&format!("/{n}"))).unwrap();
    }
    let page = |ns: &Namespace, after: Option<&str>| {
        let (entries, more) = ns.readdir("/", after, 2).unwrap();
        (entries.into_iter().map(|(name, _)| name.to_string()).collect::<Vec<_>>(), more)
    };
    assert_eq!(page(&ns, None), (vec!["a".into(), "b".into()], true));
    assert_eq!(page(&ns, Some("b")), (vec!["c".into(), "d".into()], true));
    assert_eq!(page(&ns, Some("d")), (vec!["e".into()], false));
    assert!(matches!(ns.readdir("/a", None, 1), Err(MetaError::NotDir { .. })));
}

#[test]
fn rename_rules() {
    let mut ns = Namespace::new(LayoutPolicy::default());
    run(&mut ns, mkdir("/d")).unwrap();
    run(&mut ns, mkdir("/d/sub")).unwrap();
    run(&mut ns, mkdir("/full")).unwrap();
    run(&mut ns, create("/full/x")).unwrap();
    let f = file(run(&mut ns, create("/f")));
    let g = file(run(&mut ns, create("/g")));
    assert!(matches!(run(&mut ns, rename("/d", "/d/sub/x")), Err(MetaError::Invalid(_))));
    assert!(matches!(run(&mut ns, rename("/f", "/d")), Err(MetaError::IsDir { .. })));
    assert!(matches!(run(&mut ns, rename("/d", "/f")), Err(MetaError::NotDir { .. })));
    assert!(matches!(run(&mut ns, rename("/d", "/full")), Err(MetaError::NotEmpty { entries: 1, .. })));
    assert!(matches!(run(&mut ns, rename("/nope", "/z")), Err(MetaError::NotFound { .. })));
    let stale = Op::Rename {
        from: "/f".into(),
        to: "/h".into(),
        expected_generation: Some(f.generation + 5),
        no_replace: false,
    };
    match run(&mut ns, stale) {
        Err(MetaError::Conflict { what, expected, found }) => {
            assert_eq!((what.as_str(), expected, found), ("/f", f.generation + 5, f.generation))
        }
        other => panic!("{other:?}"),
    }
    // Replacing a file drops it and reports its targets.
    let m = match ns.prepare(&rename("/f", "/g"), &ctx(5)).unwrap() {
        Decision::Mutate(m) => m,
        other => panic!("{other:?}"),
    };
    let applied = ns.apply(&m).unwrap();
    assert_eq!(applied.removed_files, vec![(g.id, ns.chains().members_of(&g.layout.unwrap().chains))]);
    let moved = ns.resolve("/g").unwrap();
    assert_eq!(moved.id, f.id);
    assert!(moved.generation > f.generation);
    assert!(!ns.exists(g.id));
    assert!(matches!(ns.resolve("/f"), Err(MetaError::NotFound { .. })));
    // A directory moves with its subtree; an empty directory target is replaced.
    run(&mut ns, mkdir("/empty")).unwrap();
    run(&mut ns, rename("/d", "/empty")).unwrap();
    assert_eq!(ns.resolve("/empty/sub").unwrap().kind, InodeKind::Dir);
    assert_eq!(ns.prepare(&rename("/g", "/g"), &ctx(6)).unwrap(), Decision::Unchanged(None));
}

#[test]
fn unlink_rmdir_truncate_setsize() {
    let mut ns = Namespace::new(LayoutPolicy::default());
    run(&mut ns, mkdir("/d")).unwrap();
    let f = file(run(&mut ns, create("/d/f")));
    let unlink = |p: &str, g| Op::Unlink { path: p.into(), expected_generation: g };
    let rmdir = |p: &str| Op::Rmdir { path: p.into(), expected_generation: None };
    assert!(matches!(run(&mut ns, rmdir("/d")), Err(MetaError::NotEmpty { .. })));
    assert!(matches!(run(&mut ns, rmdir("/d/f")), Err(MetaError::NotDir { .. })));
    assert!(matches!(run(&mut ns, unlink("/d", None)), Err(MetaError::IsDir { .. })));
    assert_eq!(run(&mut ns, Op::SetSize { file: f.id, size: 100 }).unwrap(), None);
    let s = ns.get(f.id).unwrap();
    assert_eq!((s.size, s.generation), (100, f.generation + 1));
    run(&mut ns, Op::SetSize { file: f.id, size: 50 }).unwrap();
    assert_eq!(ns.get(f.id).unwrap().size, 100, "SetSize never shrinks");
    let t = file(run(&mut ns, Op::Truncate { file: f.id, size: 7, expected_generation: None }));
    assert_eq!(t.size, 7);
    let e = run(&mut ns, Op::Truncate { file: f.id, size: 1, expected_generation: Some(1) }).unwrap_err();
    assert!(matches!(e, MetaError::Conflict { expected: 1, .. }), "{e}");
    let d = ns.resolve("/d").unwrap().clone();
    assert!(matches!(run(&mut ns, Op::SetSize { file: d.id, size: 1 }), Err(MetaError::IsDir { .. })));
    assert!(matches!(run(&mut ns, unlink("/d/f", Some(1))), Err(MetaError::Conflict { .. })));
    run(&mut ns, unlink("/d/f", Some(t.generation))).unwrap();
    assert!(matches!(ns.inode(f.id), Err(MetaError::NoSuchFile { file }) if file == f.id));
    assert!(ns.resolve("/d").unwrap().generation > d.generation);
    run(&mut ns, rmdir("/d")).unwrap();
    // Ids never repeat, even after removal.
    let g = file(run(&mut ns, create("/g")));
    assert!(g.id.0 > f.id.0);
}

#[test]
fn records_that_do_not_fit_are_refused_and_change_nothing() {
    let mut ns = Namespace::new(LayoutPolicy::default());
    let m = match ns.prepare(&create("/f"), &ctx(1)).unwrap() {
        Decision::Mutate(m) => m,
        other => panic!("{other:?}"),
    };
    ns.apply(&m).unwrap();
    let before = ns.clone();
    // The same record again: its chains exist; without them, the name is taken.
    let e = ns.apply(&m);
    assert!(matches!(&e, Err(MetaError::DoesNotApply { why: Misfit::ChainExists(ChainId(0)), .. })), "{e:?}");
    let mut again = m.clone();
    if let Mutation::Create { new_chains, .. } = &mut again {
        new_chains.clear();
    }
    let taken = Misfit::NameTaken { parent: FileId::ROOT, name: "f".into() };
    let e = ns.apply(&again);
    assert!(matches!(&e, Err(MetaError::DoesNotApply { why, .. }) if *why == taken), "{e:?}");
    let f = ns.resolve("/f").unwrap().id;
    let nope = || Misfit::NoEntry { parent: FileId::ROOT, name: "nope".into() };
    for (bad, misfit) in [
        (Mutation::Remove { parent: FileId::ROOT, name: "nope".into(), time_ns: 2, orphan: false }, nope()),
        (
            Mutation::Remove { parent: FileId(999), name: "f".into(), time_ns: 2, orphan: false },
            Misfit::NoDir(FileId(999)),
        ),
        (Mutation::Reap { file: f }, Misfit::NotOrphan(f)),
        (
            Mutation::CommitChunks {
                server: ServerId(1),
                chunks: vec![(FileId(999), Commit { chunk: 0, len: 1, sha256: Sha256Digest([0; 32]), version: 1 })],
            },
            Misfit::NoFile(FileId(999)),
        ),
        (
            Mutation::Mkdir {
                parent: f,
                name: "x".into(),
                id: FileId(50),
                policy: LayoutPolicy::default(),
                attrs: DIR_ATTRS,
                time_ns: 2,
            },
            Misfit::NotDir(f),
        ),
        (Mutation::SetSize { file: FileId::ROOT, size: 5, time_ns: 2 }, Misfit::NotAFile(FileId::ROOT)),
        (Mutation::Truncate { file: FileId(999), size: 5, time_ns: 2 }, Misfit::NoFile(FileId(999))),
        (
            Mutation::Rename {
                from_parent: FileId::ROOT,
                from_name: "nope".into(),
                to_parent: FileId::ROOT,
                to_name: "x".into(),
                time_ns: 2,
                orphan: false,
            },
            nope(),
        ),
        (
            Mutation::Mkdir {
                parent: FileId::ROOT,
                name: "new".into(),
                id: f,
                policy: LayoutPolicy::default(),
                attrs: DIR_ATTRS,
                time_ns: 2,
            },
            Misfit::IdTaken(f),
        ),
    ] {
        match ns.apply(&bad) {
            Err(MetaError::DoesNotApply { why, .. }) => assert_eq!(why, misfit, "{bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
        assert_eq!(ns, before, "a refused record changed the state: {bad:?}");
    }
}

fn arb_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from)
}

fn arb_path() -> impl Strategy<Value = String> {
    prop::collection::vec(arb_name(), 1..4).prop_map(|v| format!("/{}", v.join("/")))
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (arb_path(), 0u32..0o10000)
            .prop_map(|(path, mode)| Op::Mkdir { path, attrs: NewAttrs { mode, uid: 1, gid: 2 } }),
        (arb_path(), any::<bool>(), prop::option::of(0u32..5)).prop_map(|(path, exclusive, sc)| Op::Create {
            path,
            layout: LayoutChoice { stripe_count: sc, ..Default::default() },
            exclusive,
            attrs: FILE_ATTRS,
        }),
        (arb_path(), prop::option::of("[a-z/]{1,8}")).prop_map(|(path, symlink)| Op::MakeNode {
            path,
            kind: if symlink.is_some() { InodeKind::Symlink } else { InodeKind::Fifo },
            rdev: 0,
            symlink,
            attrs: FILE_ATTRS,
        }),
        (2u64..20, arb_path()).prop_map(|(f, path)| Op::Link { file: FileId(f), path }),
        (2u64..20, prop::option::of(0u32..0o10000), prop::option::of(0u32..3), prop::option::of(-5i64..5)).prop_map(
            |(f, mode, uid, t)| Op::SetAttr {
                file: FileId(f),
                mode,
                uid,
                gid: uid,
                atime: t.map(SetTime::At),
                mtime: t.map(|_| SetTime::Now),
            }
        ),
        (arb_path(), arb_path(), any::<bool>()).prop_map(|(from, to, no_replace)| Op::Rename {
            from,
            to,
            expected_generation: None,
            no_replace
        }),
        arb_path().prop_map(|path| Op::Unlink { path, expected_generation: None }),
        arb_path().prop_map(|path| Op::Rmdir { path, expected_generation: None }),
        (2u64..20, 0u64..1000).prop_map(|(f, size)| Op::SetSize { file: FileId(f), size }),
        (2u64..20, 0u64..1000, prop::option::of(1u64..4)).prop_map(|(f, size, g)| Op::Truncate {
            file: FileId(f),
            size,
            expected_generation: g
        }),
        (1u32..4, prop::collection::vec((2u64..20, 0u64..4, 0u64..600, any::<u8>()), 1..3)).prop_map(
            |(server, chunks)| Op::CommitChunks {
                server: ServerId(server),
                chunks: chunks
                    .into_iter()
                    .map(|(f, chunk, len, b)| (
                        FileId(f),
                        Commit { chunk, len, sha256: Sha256Digest([b; 32]), version: len % 3 }
                    ))
                    .collect(),
            }
        ),
        (2u64..20).prop_map(|f| Op::Reap { file: FileId(f) }),
    ]
}

proptest! {
    /// Every record `prepare` makes applies, the tree's invariants hold after each, and
    /// replaying the logged records into a fresh namespace reproduces the state (the records
    /// survive a postcard round trip, as they do through the WAL).
    #[test]
    fn replay_gives_identical_state(ops in prop::collection::vec(arb_op(), 0..60)) {
        let mut ns = Namespace::new(LayoutPolicy::default());
        let mut log = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            // Which files are open changes from step to step, so orphans are made and reaped.
            let is_open = |f: FileId| (f.0 + i as u64).is_multiple_of(3);
            let ctx = Context { now_ns: i as i64, up_servers: &UP, is_open: &is_open };
            if let Ok(Decision::Mutate(m)) = ns.prepare(op, &ctx) {
                prop_assert!(ns.apply(&m).is_ok(), "a prepared record did not apply: {:?}", m);
                log.push(postcard::to_allocvec(&m).unwrap());
            }
            prop_assert_eq!(ns.check_invariants(), Ok(()));
        }
        let mut replayed = Namespace::new(LayoutPolicy::default());
        for bytes in &log {
            let m: Mutation = postcard::from_bytes(bytes).unwrap();
            prop_assert!(replayed.apply(&m).is_ok());
        }
        prop_assert_eq!(&replayed, &ns);
        let snap: Namespace = postcard::from_bytes(&postcard::to_allocvec(&ns).unwrap()).unwrap();
        prop_assert_eq!(snap, ns);
    }
}

#[test]
fn sizes_past_the_largest_file_are_refused() {
    use pfs_common::layout::MAX_FILE_SIZE;
    let mut ns = Namespace::new(LayoutPolicy::default());
    let f = file(run(&mut ns, create("/f")));
    for op in [
        Op::SetSize { file: f.id, size: u64::MAX },
        Op::SetSize { file: f.id, size: MAX_FILE_SIZE + 1 },
        Op::Truncate { file: f.id, size: MAX_FILE_SIZE + 1, expected_generation: None },
    ] {
        let e = run(&mut ns, op.clone()).unwrap_err();
        let shown = e.to_string();
        assert_eq!(e.code(), pfs_common::ErrorCode::Invalid, "{op:?}");
        assert!(shown.contains(&f.id.to_string()) && shown.contains(&MAX_FILE_SIZE.to_string()), "{shown}");
    }
    assert_eq!(ns.get(f.id).unwrap(), &f, "nothing changed");
    run(&mut ns, Op::SetSize { file: f.id, size: MAX_FILE_SIZE }).unwrap();
    assert_eq!(ns.get(f.id).unwrap().size, MAX_FILE_SIZE, "the largest size itself is fine");
}

#[test]
fn hard_links_count_names_and_the_last_name_takes_the_file() {
    let mut ns = Namespace::new(LayoutPolicy::default());
    run(&mut ns, mkdir("/d")).unwrap();
    let f = file(run(&mut ns, create("/f")));
    let linked = file(run(&mut ns, Op::Link { file: f.id, path: "/d/g".into() }));
    assert_eq!((linked.id, linked.nlink), (f.id, 2));
    assert!(linked.ctime_ns >= f.ctime_ns && linked.generation > f.generation, "a link changes the inode");
    assert!(matches!(run(&mut ns, Op::Link { file: f.id, path: "/d/g".into() }), Err(MetaError::Exists { .. })));
    let d = ns.resolve("/d").unwrap().id;
    assert!(matches!(run(&mut ns, Op::Link { file: d, path: "/e".into() }), Err(MetaError::IsDir { .. })));
    // Renaming one name of a file onto another name of it changes nothing (POSIX).
    run(&mut ns, rename("/f", "/d/g")).unwrap();
    assert_eq!(ns.resolve("/f").unwrap().id, f.id);
    // Removing a name keeps the file under the other.
    run(&mut ns, Op::Unlink { path: "/f".into(), expected_generation: None }).unwrap();
    assert_eq!(ns.resolve("/d/g").unwrap().nlink, 1);
    assert!(ns.get(f.id).is_some());
    // Replacing the last name by a rename drops it (no session has it open).
    run(&mut ns, create("/h")).unwrap();
    let removed = match ns.prepare(&rename("/h", "/d/g"), &ctx(2000)).unwrap() {
        Decision::Mutate(m) => ns.apply(&m).unwrap().removed_files,
        d => panic!("{d:?}"),
    };
    assert_eq!(removed.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![f.id]);
    assert!(ns.get(f.id).is_none());
    ns.check_invariants().unwrap();
}

#[test]
fn directory_link_counts_and_paths_follow_mkdir_rename_and_rmdir() {
    let mut ns = Namespace::new(LayoutPolicy::default());
    for p in ["/a", "/a/b", "/c"] {
        run(&mut ns, mkdir(p)).unwrap();
    }
    let nlink = |ns: &Namespace, p: &str| ns.resolve(p).unwrap().nlink;
    assert_eq!((nlink(&ns, "/"), nlink(&ns, "/a"), nlink(&ns, "/a/b")), (4, 3, 2));
    let b = ns.resolve("/a/b").unwrap().id;
    run(&mut ns, rename("/a/b", "/c/b2")).unwrap();
    assert_eq!((nlink(&ns, "/a"), nlink(&ns, "/c")), (2, 3));
    assert_eq!(ns.dir_path(b).unwrap(), "/c/b2");
    assert_eq!(ns.target_path(&Target::Entry { dir: b, name: "x".into() }).unwrap(), "/c/b2/x");
    for bad in ["", ".", "..", "a/b", "a\0"] {
        let t = Target::Entry { dir: b, name: bad.into() };
        assert!(matches!(ns.target_path(&t), Err(MetaError::BadPath { .. })), "{bad:?}");
    }
    // A directory replacing an empty one: the replaced one's `..` leaves the count.
    run(&mut ns, rename("/a", "/c/b2")).unwrap();
    assert_eq!((nlink(&ns, "/"), nlink(&ns, "/c")), (3, 3));
    run(&mut ns, Op::Rmdir { path: "/c/b2".into(), expected_generation: None }).unwrap();
    assert_eq!(nlink(&ns, "/c"), 2);
    assert!(matches!(
        run(&mut ns, Op::Rename { from: "/c".into(), to: "/c".into(), expected_generation: None, no_replace: false }),
        Ok(None)
    ));
    run(&mut ns, mkdir("/e")).unwrap();
    let no_replace = Op::Rename { from: "/c".into(), to: "/e".into(), expected_generation: None, no_replace: true };
    assert!(matches!(run(&mut ns, no_replace), Err(MetaError::Exists { .. })));
}

#[test]
fn attributes_owners_times_symlinks_and_nodes() {
    let mut ns = Namespace::new(LayoutPolicy::default());
    let user = NewAttrs { mode: 0o640, uid: 1000, gid: 100 };
    let f = file(run(
        &mut ns,
        Op::Create { path: "/f".into(), layout: LayoutChoice::default(), exclusive: true, attrs: user },
    ));
    assert_eq!((f.mode, f.uid, f.gid, f.nlink, f.atime_ns), (0o640, 1000, 100, 1, 1000));
    let set = |mode, atime| Op::SetAttr { file: f.id, mode, uid: Some(7), gid: None, atime, mtime: None };
    let changed = file(run(&mut ns, set(Some(0o4755), Some(SetTime::At(-1_500)))));
    assert_eq!((changed.mode, changed.uid, changed.gid, changed.atime_ns), (0o4755, 7, 100, -1_500));
    assert_eq!(changed.mtime_ns, f.mtime_ns);
    assert!(matches!(run(&mut ns, set(Some(0o10000), None)), Err(MetaError::Invalid(_))));
    // A set-group-ID directory gives its group, and to directories its bit.
    let sgid = NewAttrs { mode: 0o2775, uid: 0, gid: 50 };
    run(&mut ns, Op::Mkdir { path: "/s".into(), attrs: sgid }).unwrap();
    let sub = file(run(&mut ns, Op::Mkdir { path: "/s/sub".into(), attrs: user }));
    assert_eq!((sub.gid, sub.mode), (50, 0o2640));
    let inner = file(run(
        &mut ns,
        Op::Create { path: "/s/f".into(), layout: LayoutChoice::default(), exclusive: true, attrs: user },
    ));
    assert_eq!((inner.gid, inner.mode), (50, 0o640));
    let link = Op::MakeNode {
        path: "/l".into(),
        kind: InodeKind::Symlink,
        rdev: 0,
        symlink: Some("f/../x".into()),
        attrs: user,
    };
    let l = file(run(&mut ns, link));
    assert_eq!((l.kind, l.size, l.mode, l.symlink.as_deref()), (InodeKind::Symlink, 6, 0o777, Some("f/../x")));
    let dev =
        Op::MakeNode { path: "/dev".into(), kind: InodeKind::CharDevice, rdev: 0x0103, symlink: None, attrs: user };
    assert_eq!(file(run(&mut ns, dev)).rdev, 0x0103);
    let bad = Op::MakeNode { path: "/x".into(), kind: InodeKind::File, rdev: 0, symlink: None, attrs: user };
    assert!(matches!(run(&mut ns, bad), Err(MetaError::Invalid(_))), "regular files come from Create");
    // Not a regular file: no size changes, no opening as a file.
    assert!(matches!(run(&mut ns, Op::SetSize { file: l.id, size: 9 }), Err(MetaError::Invalid(_))));
    run(&mut ns, Op::Unlink { path: "/l".into(), expected_generation: None }).unwrap();
    assert!(ns.get(l.id).is_none());
}

#[test]
fn late_commits_past_the_size_of_a_closed_file_are_not_chunks_that_must_exist() {
    let mut ns = Namespace::new(LayoutPolicy::default());
    let f = file(run(&mut ns, create("/f"))).id;
    run(&mut ns, Op::SetSize { file: f, size: 2 << 20 }).unwrap();
    let commit = |chunk| (f, Commit { chunk, len: 1 << 20, sha256: Sha256Digest([chunk as u8; 32]), version: 1 });
    let op = Op::CommitChunks { server: ServerId(1), chunks: vec![commit(1), commit(5)] };
    let closed = Context { now_ns: 2, up_servers: &UP, is_open: &|_| false };
    match ns.prepare(&op, &closed).unwrap() {
        Decision::Mutate(m) => ns.apply(&m).map(drop).unwrap(),
        other => panic!("{other:?}"),
    }
    assert!(ns.chunks().get(f, 1).is_some(), "within the size: committed");
    assert!(ns.chunks().get(f, 5).is_none(), "past the size of a closed file (a truncate's leftover): not committed");
    // Open: a writer past the size it recorded so far.
    let open = Context { now_ns: 3, up_servers: &UP, is_open: &|_| true };
    match ns.prepare(&op, &open).unwrap() {
        Decision::Mutate(m) => ns.apply(&m).map(drop).unwrap(),
        other => panic!("{other:?}"),
    }
    assert!(ns.chunks().get(f, 5).is_some(), "an open file's chunk past its recorded size is committed");
}

/// Prepares and applies `op` as request `seq` of `slot` of `session`, logging the mutation.
fn run_once(
    ns: &mut Namespace,
    log: &mut Vec<Mutation>,
    session: SessionId,
    slot: u16,
    seq: u64,
    op: Op,
) -> Result<Option<Inode>> {
    let op = Op::Request { request: RequestId { session, slot, seq }, op: Box::new(op) };
    let out = match ns.prepare(&op, &ctx(1000))? {
        Decision::Unchanged(inode) | Decision::Replayed(inode) => inode,
        Decision::Mutate(m) => {
            log.push(m.clone());
            ns.apply(&m)?.inode
        }
    };
    ns.check_invariants().unwrap();
    Ok(out)
}

/// A change named by a request id is done once: its repeat (a client that lost the answer)
/// is answered with what it did, on the leader's namespace and on one rebuilt from the log.
#[test]
fn a_repeated_request_is_answered_from_the_log_not_done_twice() {
    use pfs_common::ErrorCode;
    let mut ns = Namespace::new(LayoutPolicy::default());
    let session = pfs_common::token::first_session_of(3) | 1;
    run(&mut ns, Op::OpenSession { session, key_sha256: [1; 32] }).unwrap();
    let mut log = Vec::new();
    let made = file(run_once(&mut ns, &mut log, session, 0, 1, create("/f")));
    let again = file(run_once(&mut ns, &mut log, session, 0, 1, create("/f")));
    assert_eq!(again.id, made.id, "the repeat answers the file made, not Exists");
    let e = run_once(&mut ns, &mut log, session, 0, 2, create("/f")).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Exists, "a new request");
    file(run_once(&mut ns, &mut log, session, 1, 1, mkdir("/d")));
    run_once(&mut ns, &mut log, session, 1, 2, rename("/d", "/e")).unwrap();
    let again = run_once(&mut ns, &mut log, session, 1, 2, rename("/d", "/e"));
    assert_eq!(again.unwrap(), None, "the repeat is done, not NotFound");
    assert!(ns.resolve("/e").is_ok() && ns.resolve("/d").is_err());
    let e = run_once(&mut ns, &mut log, session, 1, 1, mkdir("/d")).unwrap_err();
    assert!(e.to_string().contains("at request 2"), "an overtaken copy is refused: {e}");
    // The file made is gone since: the repeat says so instead of making it again.
    run_once(&mut ns, &mut log, session, 2, 1, Op::Unlink { path: "/f".into(), expected_generation: None }).unwrap();
    let e = run_once(&mut ns, &mut log, session, 0, 1, create("/f")).unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
    assert!(ns.resolve("/f").is_err(), "not made again");
    // A follower applying the log knows the same requests.
    let mut follower = Namespace::new(LayoutPolicy::default());
    run(&mut follower, Op::OpenSession { session, key_sha256: [1; 32] }).unwrap();
    for m in &log {
        follower.apply(m).unwrap();
    }
    assert_eq!(follower, ns);
    let repeat = Op::Request { request: RequestId { session, slot: 1, seq: 2 }, op: Box::new(rename("/d", "/e")) };
    assert_eq!(follower.prepare(&repeat, &ctx(2000)).unwrap(), Decision::Replayed(None));
    let e = follower.apply(&log[1]).unwrap_err();
    assert!(matches!(e, MetaError::DoesNotApply { .. }), "a request logged twice does not apply twice: {e}");
    // Requests of a session that is not open are refused.
    run(&mut ns, Op::EndSession { session, evicted: false }).unwrap();
    let e = run_once(&mut ns, &mut log, session, 3, 1, mkdir("/g")).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Evicted);
}
