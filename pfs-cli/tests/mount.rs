//! `pfs mount` on a real cluster: files written through the mount are the bytes the pfs client
//! reads and the other way round, another client's change is seen at once, unsupported calls
//! fail honestly, a dead pfs-meta makes calls fail instead of hang, and SIGTERM unmounts.

use pfs_client::CreateOptions;
use pfs_testkit::{mounted, ok, random_bytes, run_tool, wait_until, LocalCluster, Mount};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const PFS: &str = env!("CARGO_BIN_EXE_pfs");
const PFS_CP: &str = env!("CARGO_BIN_EXE_pfs-cp");

fn mount(config: &Path, at: &Path) -> Mount {
    Mount::start(PFS, config, at, None)
}

#[tokio::test(flavor = "multi_thread")]
async fn files_through_the_mount_are_pfs_files() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let at = cluster.dir().join("mnt");
    std::fs::create_dir(&at).unwrap();
    let mut mount = mount(&cfg, &at);

    // Written through the mount, read by the pfs client.
    let data = random_bytes(5 << 20, 21);
    std::fs::create_dir(at.join("d")).unwrap();
    std::fs::write(at.join("d/a.bin"), &data).unwrap();
    let client = cluster.client().await.unwrap();
    let f = client.open("/d/a.bin").await.unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(f.read_at(0, &mut back).await.unwrap(), data.len());
    assert!(back == data, "the client reads what was written through the mount");
    f.close().await.unwrap();

    // Copied in by pfs-cp, read through the mount.
    let other = random_bytes(3 << 20, 22);
    let src = cluster.dir().join("b.bin");
    std::fs::write(&src, &other).unwrap();
    ok(run_tool(PFS_CP, &cfg, &[src.to_str().unwrap(), "pfs:/d/b.bin"]));
    assert!(std::fs::read(at.join("d/b.bin")).unwrap() == other, "the mount reads what pfs-cp wrote");

    // Another client's change is seen at once: sizes and names.
    let g = client.open("/d/b.bin").await.unwrap();
    g.truncate(1000).await.unwrap();
    g.close().await.unwrap();
    assert_eq!(std::fs::metadata(at.join("d/b.bin")).unwrap().len(), 1000);
    client.rename("/d/b.bin", "/d/c.bin").await.unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(at.join("d")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["a.bin", "c.bin"]);
    assert!(std::fs::metadata(at.join("d/b.bin")).is_err());
    let h = client.create("/d/new", &CreateOptions::default()).await.unwrap();
    h.write_at(0, b"from the client").await.unwrap();
    h.close().await.unwrap();
    assert_eq!(std::fs::read(at.join("d/new")).unwrap(), b"from the client");
    drop(std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(at.join("d/new")).unwrap());
    assert_eq!(std::fs::read(at.join("d/new")).unwrap(), b"from the client", "O_CREAT without O_TRUNC truncated");
    drop(std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(at.join("d/new")).unwrap());
    assert_eq!(client.stat("/d/new").await.unwrap().size, 0, "O_TRUNC");

    // Renames, removals, truncates through the mount.
    std::fs::rename(at.join("d/a.bin"), at.join("moved.bin")).unwrap();
    assert_eq!(client.stat("/moved.bin").await.unwrap().size, data.len() as u64);
    std::fs::OpenOptions::new().write(true).open(at.join("moved.bin")).unwrap().set_len(10).unwrap();
    assert_eq!(client.stat("/moved.bin").await.unwrap().size, 10);
    std::fs::remove_file(at.join("moved.bin")).unwrap();
    assert!(client.stat("/moved.bin").await.is_err());
    let e = std::fs::remove_dir(at.join("d")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "{e}");
    assert_eq!(std::fs::read(at.join("nothing")).unwrap_err().kind(), std::io::ErrorKind::NotFound);
    // Modes, owners, links: stored in pfs-meta, so every client sees them.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(at.join("d/c.bin"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(at.join("d/c.bin"), Some(1234), Some(5678)).unwrap();
    let c = client.stat("/d/c.bin").await.unwrap();
    assert_eq!((c.mode, c.uid, c.gid), (0o640, 1234, 5678));
    // utimens is stored; an overwrite that grows nothing still moves the mtime (at close).
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    let f = std::fs::OpenOptions::new().write(true).open(at.join("d/c.bin")).unwrap();
    f.set_modified(old).unwrap();
    assert_eq!(client.stat("/d/c.bin").await.unwrap().mtime_ns, 1_000_000_000 * 1_000_000_000);
    std::os::unix::fs::FileExt::write_all_at(&f, b"x", 0).unwrap();
    drop(f);
    assert!(std::fs::metadata(at.join("d/c.bin")).unwrap().modified().unwrap() > old, "a write moves the mtime");
    std::fs::hard_link(at.join("d/c.bin"), at.join("c.link")).unwrap();
    assert_eq!(client.stat("/c.link").await.unwrap().id, c.id);
    assert_eq!(std::fs::metadata(at.join("d/c.bin")).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("d/c.bin", at.join("c.sym")).unwrap();
    assert_eq!(client.stat("/c.sym").await.unwrap().symlink.as_deref(), Some("d/c.bin"));
    assert_eq!(std::fs::read(at.join("c.sym")).unwrap(), std::fs::read(at.join("c.link")).unwrap());
    // The mount names entries by directory id: a directory another client renames under it
    // stays the one the kernel holds (no stale path reaches the old name's new owner).
    std::fs::create_dir(at.join("held")).unwrap();
    let held = std::fs::File::open(at.join("held")).unwrap();
    client.rename("/held", "/renamed").await.unwrap();
    client.mkdir("/held").await.unwrap();
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    let fd = unsafe {
        use std::os::fd::AsRawFd;
        libc::openat(held.as_raw_fd(), c"inside".as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644)
    };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: the descriptor just opened.
    unsafe { libc::close(fd) };
    assert!(client.stat("/renamed/inside").await.is_ok(), "created in the directory the descriptor holds");
    assert!(client.stat("/held/inside").await.is_err(), "not in the new directory of the old name");
    drop(held);
    // statfs sums the storage servers.
    let df = Command::new("df").arg(&at).output().unwrap();
    assert!(String::from_utf8_lossy(&df.stdout).contains("pfs"), "{df:?}");
    client.close().await.unwrap();

    // SIGTERM unmounts cleanly.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(mount.child.id() as i32, libc::SIGTERM) };
    let status = mount.child.wait().unwrap();
    assert!(status.success(), "pfs mount after SIGTERM: {status}");
    assert!(!mounted(&at), "still mounted after SIGTERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_cluster_fails_calls_instead_of_hanging() {
    let mut cluster = LocalCluster::start_with(1, |c| {
        c.timeouts.request_ms = 2_000;
        c.timeouts.connect_ms = 1_000;
        c.tokens.revoke_timeout_ms = 1_000;
    })
    .await
    .unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let at = cluster.dir().join("mnt");
    std::fs::create_dir(&at).unwrap();
    let _mount = mount(&cfg, &at);
    std::fs::write(at.join("f"), b"x").unwrap();
    cluster.kill(pfs_testkit::DaemonKind::Meta(1));
    // A stat after pfs-meta died: an error (EIO or ETIMEDOUT) within the request timeout,
    // never a hang (a thread with a generous guard turns a hang into a failure).
    let path = at.join("f");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(std::fs::metadata(&path).map(|m| m.len())).unwrap());
    let r = rx.recv_timeout(Duration::from_secs(120)).expect("the stat hung");
    let e = r.expect_err("a stat answered with pfs-meta dead");
    assert!(matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::ETIMEDOUT)), "{e}");
    let _ = run_tool(PFS, &cfg, &["umount", at.to_str().unwrap()]);
}

/// `mmap` goes through the kernel's page cache: a page mapped on the mount is dropped when
/// another client's write revokes the mount's token (polled: the drop follows the revoke
/// asynchronously), and bytes stored through a shared writable map reach other clients.
#[tokio::test(flavor = "multi_thread")]
async fn memory_maps_follow_other_clients() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let at = cluster.dir().join("mnt");
    std::fs::create_dir(&at).unwrap();
    let _mount = mount(&cfg, &at);
    const LEN: usize = 16384;
    std::fs::write(at.join("m"), vec![b'a'; LEN]).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(at.join("m")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh shared mapping of LEN bytes of an open file, unmapped below; bytes are
    // read and written through raw pointers with volatile accesses (another process changes them).
    let map = unsafe {
        libc::mmap(std::ptr::null_mut(), LEN, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0)
    };
    assert_ne!(map, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    let map = map.cast::<u8>();
    // SAFETY: offsets below LEN of the mapping above.
    let byte = |at: usize| unsafe { std::ptr::read_volatile(map.add(at)) };
    assert_eq!(byte(100), b'a');

    let client = cluster.client().await.unwrap();
    let other = client.open("/m").await.unwrap();
    other.write_at(100, b"BBBB").await.unwrap();
    other.fsync().await.unwrap();
    wait_until("the map shows the other client's bytes", || byte(100) == b'B' && byte(103) == b'B');

    // SAFETY: as above; msync of the whole mapping.
    unsafe {
        std::ptr::write_volatile(map.add(9000), b'C');
        assert_eq!(libc::msync(map.cast(), LEN, libc::MS_SYNC), 0, "{}", std::io::Error::last_os_error());
    }
    let mut buf = [0u8; 1];
    assert_eq!(other.read_at(9000, &mut buf).await.unwrap(), 1);
    assert_eq!(&buf, b"C", "a byte stored through the map reaches another client");
    other.close().await.unwrap();
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(map.cast(), LEN) };
    drop(f);
    client.close().await.unwrap();
}
