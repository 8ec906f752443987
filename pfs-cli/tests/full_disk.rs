//! A storage target that runs out of space: `pfs-cp` fails with one line naming the server and
//! the lack of space, exits non-zero, and leaves no partial file behind.
//!
//! The small target is a 4 MiB tmpfs, which needs root (CI runs as root). Without the
//! privilege to mount, the test says so and returns.

use pfs_testkit::LocalCluster;
use pfs_testkit::{ok, random_bytes, run_tool};
use std::path::{Path, PathBuf};
use std::process::Command;

const PFS_CP: &str = env!("CARGO_BIN_EXE_pfs-cp");

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status();
        st.ok().filter(|s| s.success()).map(|_| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_storage_target_fails_the_copy_cleanly() {
    let small = std::env::temp_dir().join(format!("pfs-small-target-{}", std::process::id()));
    let Some(_mount) = Tmpfs::mount(&small, "4m") else {
        panic!(
            "cannot mount a tmpfs here (needs root); skip: -E 'not test(a_full_storage_target_fails_the_copy_cleanly)'"
        );
    };
    let cluster = LocalCluster::start_with(2, |c| c.storage[1].data_dir = small.clone()).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let src = cluster.dir().join("in.bin");
    std::fs::write(&src, random_bytes(32 << 20, 3)).unwrap();

    let out = run_tool(PFS_CP, &cfg, &["--stripe-count", "2", src.to_str().unwrap(), "pfs:/big.bin"]);
    assert!(!out.status.success(), "a copy onto a full target must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("storage-2") && err.to_lowercase().contains("no space"), "{err}");
    let client = cluster.client().await.unwrap();
    assert!(client.stat("/big.bin").await.is_err(), "the partial copy was left behind");

    // The cluster still works for what fits.
    let small_src = cluster.dir().join("small.bin");
    std::fs::write(&small_src, random_bytes(1 << 20, 4)).unwrap();
    ok(run_tool(PFS_CP, &cfg, &["--verify", small_src.to_str().unwrap(), "pfs:/small.bin"]));
    drop(cluster);
}
