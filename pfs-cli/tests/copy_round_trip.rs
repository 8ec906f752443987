//! `pfs-cp` on a real cluster: a 64 MiB random file in and out, byte-identical, striped over
//! all four storage servers with the right chunk files and SHA-256 values.

use pfs_common::ids::chunk_file_name;
use pfs_testkit::LocalCluster;
use pfs_testkit::{ok, random_bytes, run_tool, sha256_hex};

const PFS: &str = env!("CARGO_BIN_EXE_pfs");
const PFS_CP: &str = env!("CARGO_BIN_EXE_pfs-cp");

#[tokio::test(flavor = "multi_thread")]
async fn a_64_mib_file_round_trips_through_pfs_cp() {
    let cluster = LocalCluster::start(4).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let data = random_bytes(64 << 20, 1);
    let src = cluster.dir().join("in.bin");
    std::fs::write(&src, &data).unwrap();

    ok(run_tool(PFS_CP, &cfg, &["--verify", src.to_str().unwrap(), "pfs:/in.bin"]));
    ok(run_tool(PFS_CP, &cfg, &["--verify", "--read-back", src.to_str().unwrap(), "pfs:/in-read-back.bin"]));
    let back = cluster.dir().join("out.bin");
    ok(run_tool(PFS_CP, &cfg, &["--verify", "pfs:/in.bin", back.to_str().unwrap()]));
    assert!(std::fs::read(&back).unwrap() == data, "read back bytes differ");

    // Striped over all four targets, every chunk on its round-robin target, chunk files named
    // by file id, and pfs-meta's SHA-256 equal to the chunk's bytes.
    let client = cluster.client().await.unwrap();
    let f = client.open("/in.bin").await.unwrap();
    assert_eq!(f.size(), data.len() as u64);
    let layout = f.layout().clone();
    assert_eq!(layout.stripe_count(), 4);
    let chunks = client.chunks(f.id(), layout.chunk_count(f.size())).await.unwrap();
    assert_eq!(chunks.len() as u64, layout.chunk_count(f.size()));
    for c in &chunks {
        let start = layout.file_offset(c.chunk, 0) as usize;
        let end = (start + layout.chunk_size() as usize).min(data.len());
        let want = sha256_hex(&data[start..end]);
        assert_eq!(c.holders.len(), 1, "chunk {} holders {:?}", c.chunk, c.holders);
        let h = &c.holders[0];
        assert_eq!(Some(h.server), f.chain(c.chunk).await.unwrap().head());
        assert_eq!(h.sha256.map(|s| s.to_string()).as_deref(), Some(want.as_str()), "chunk {}", c.chunk);
        let s = cluster.config().storage(h.server).unwrap();
        let on_disk = cluster.config().storage_dir(s).join(chunk_file_name(f.id(), c.chunk));
        assert_eq!(std::fs::read(&on_disk).unwrap(), &data[start..end], "{}", on_disk.display());
    }

    // The tool shows the same and checks the bytes against the hashes.
    let out = ok(run_tool(PFS, &cfg, &["getstripe", "--verify", "/in.bin"]));
    assert!(out.contains("stripe count  4"), "{out}");
    for id in 1..=4 {
        assert!(out.contains(&format!("storage-{id}")), "{out}");
    }
    assert!(out.contains(&format!("all {} chunks match", chunks.len())), "{out}");

    // --verify reads the destination back: a destination that does not keep what is written
    // (/dev/zero takes writes and reads back zeros; /dev/null reads back nothing) fails the
    // copy, naming the byte range and both digests, with exit status 1.
    let out = run_tool(PFS_CP, &cfg, &["--verify", "pfs:/in.bin", "/dev/zero"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("verify failed: bytes ") && err.contains("/dev/zero read back with sha256"), "{err}");
    let out = run_tool(PFS_CP, &cfg, &["--verify", "pfs:/in.bin", "/dev/null"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    // The failed copies left the devices alone (only a regular file is removed as partial).
    use std::os::unix::fs::FileTypeExt;
    for dev in ["/dev/zero", "/dev/null"] {
        assert!(std::fs::metadata(dev).unwrap().file_type().is_char_device(), "{dev} is still a device");
    }
    assert!(err.contains("partial destination left behind"), "{err}");
    // Without --verify the same copy succeeds (nothing reads it back).
    ok(run_tool(PFS_CP, &cfg, &["pfs:/in.bin", "/dev/null"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn layout_options_and_directories_copy_recursively() {
    let cluster = LocalCluster::start(4).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let tree = cluster.dir().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    let files = [("a.bin", 3_000_001usize, 2u64), ("sub/b.bin", 17, 3), ("sub/deeper/c.bin", 0, 4)];
    for (name, len, seed) in files {
        std::fs::write(tree.join(name), random_bytes(len, seed)).unwrap();
    }
    ok(run_tool(
        PFS_CP,
        &cfg,
        &["-r", "--stripe-count", "2", "--chunk-size", "128k", tree.to_str().unwrap(), "pfs:/t"],
    ));
    let client = cluster.client().await.unwrap();
    let a = client.stat("/t/a.bin").await.unwrap();
    let l = a.layout.unwrap();
    assert_eq!((l.stripe_count(), l.chunk_size()), (2, 128 << 10));

    // pfs -> pfs, then back out, and compare every file.
    ok(run_tool(PFS_CP, &cfg, &["-r", "pfs:/t", "pfs:/copy"]));
    let out = cluster.dir().join("out");
    ok(run_tool(PFS_CP, &cfg, &["-r", "pfs:/copy", out.to_str().unwrap()]));
    for (name, len, seed) in files {
        assert_eq!(std::fs::read(out.join(name)).unwrap(), random_bytes(len, seed), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_failures_are_one_clear_line_and_non_zero() {
    let mut cluster = LocalCluster::start(2).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();

    let missing = run_tool(PFS_CP, &cfg, &["/definitely/not/here.bin", "pfs:/x"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("/definitely/not/here.bin") && err.lines().count() == 1, "{err}");

    let missing = run_tool(PFS_CP, &cfg, &["pfs:/nope", cluster.dir().join("x").to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nope"));

    // A storage server that is down: copying a file striped over it fails naming it, and the
    // partial destination is not left behind looking complete.
    let src = cluster.dir().join("in.bin");
    std::fs::write(&src, random_bytes(8 << 20, 9)).unwrap();
    ok(run_tool(PFS_CP, &cfg, &[src.to_str().unwrap(), "pfs:/in.bin"]));
    cluster.kill(pfs_testkit::DaemonKind::Storage(pfs_common::ServerId(2)));
    let out = cluster.dir().join("out.bin");
    let down = run_tool(PFS_CP, &cfg, &["pfs:/in.bin", out.to_str().unwrap()]);
    assert!(!down.status.success());
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(err.contains("storage-2") && err.lines().count() == 1, "{err}");
    assert!(!out.exists(), "a partial copy was left at {}", out.display());
}

/// `pfs-cp --verify` into pfs checks the chunk map: a chunk whose committed SHA-256 is not the
/// source's, and a chunk never committed, are both named with their byte range.
#[tokio::test(flavor = "multi_thread")]
async fn verify_against_the_chunk_map_names_the_chunk_that_differs() {
    use pfs_cli::copy::verify_chunks;
    use sha2::{Digest, Sha256};
    let cluster = LocalCluster::start(4).await.unwrap();
    let client = cluster.client().await.unwrap();
    let data = random_bytes(3 << 20, 7);
    let f = client.create("/checked.bin", &Default::default()).await.unwrap();
    f.write_at(0, &data).await.unwrap();
    f.fsync().await.unwrap();
    let cs = f.layout().chunk_size() as usize;
    let mut digests: std::collections::BTreeMap<u64, [u8; 32]> =
        data.chunks(cs).enumerate().map(|(i, c)| (i as u64, Sha256::digest(c).into())).collect();
    verify_chunks(&client, &f, data.len() as u64, &digests).await.unwrap();

    // The source had other bytes in chunk 1.
    let mut other = data[cs..2 * cs].to_vec();
    other[17] ^= 1;
    digests.insert(1, Sha256::digest(&other).into());
    let err = verify_chunks(&client, &f, data.len() as u64, &digests).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("chunk 1 (bytes {cs}..{}) of pfs:/checked.bin is committed with sha256", 2 * cs)),
        "{err}"
    );
    digests.insert(1, Sha256::digest(&data[cs..2 * cs]).into());

    // A fourth chunk written but not synced is not in the chunk map yet.
    let tail = random_bytes(1000, 8);
    f.write_at(data.len() as u64, &tail).await.unwrap();
    digests.insert(3, Sha256::digest(&tail).into());
    let size = (data.len() + tail.len()) as u64;
    let err = verify_chunks(&client, &f, size, &digests).await.unwrap_err().to_string();
    assert!(err.contains("chunk 3 (bytes 3145728..3146728) of pfs:/checked.bin is not committed"), "{err}");
    // Once closed (written back and committed), it checks out.
    f.close().await.unwrap();
    let f = client.open("/checked.bin").await.unwrap();
    verify_chunks(&client, &f, size, &digests).await.unwrap();
}
