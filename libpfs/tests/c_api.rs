//! The C API from C: `api_check.c` is compiled with the system C compiler against the
//! `libpfs.so` of this build and run against a real cluster; this test's own client reads the
//! file the C program wrote, which revokes the C program's token (its callback and
//! `pfs_execstat` must show it).

use pfs_testkit::LocalCluster;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The directory holding this build's libpfs.so (target/<profile>), which it builds first:
/// a test build links the rlib only, and a .so left from another build may be stale. Cheap
/// when it is current.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).expect("tests run from target/<profile>/deps").to_path_buf();
    let target = dir.parent().expect("target/<profile> has a parent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "libpfs", "--lib"]).env("CARGO_TARGET_DIR", target);
    if dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("running cargo");
    assert!(status.success(), "building libpfs.so failed");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_course_api_works_from_c() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir();
    assert!(lib.join("libpfs.so").exists(), "no libpfs.so in {}", lib.display());
    let exe = cluster.dir().join("api_check");
    let built = Command::new("cc")
        .args(["-O1", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(manifest.join("include"))
        .arg(manifest.join("tests/api_check.c"))
        .arg("-L")
        .arg(&lib)
        .arg("-lpfs")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("a C compiler (cc)");
    assert!(built.success(), "compiling api_check.c failed");

    let mut c = Command::new(&exe)
        .arg(cluster.config_path())
        .env("PFS_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "written", "the C program stopped early");

    // Our read revokes the C program's write token: it writes back, then we read its bytes.
    let client = cluster.client().await.unwrap();
    let f = client.open("/c.bin").await.unwrap();
    let mut back = vec![0u8; 100_000];
    assert_eq!(f.read_at(0, &mut back).await.unwrap(), back.len());
    assert!(back.iter().enumerate().all(|(i, b)| *b == (i * 7) as u8), "the C program's bytes");
    f.close().await.unwrap();
    client.close().await.unwrap();

    c.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    for l in out.lines() {
        rest.push_str(&l.unwrap());
        rest.push('\n');
    }
    let status = c.wait().unwrap();
    assert!(status.success() && rest.contains("ok 0"), "api_check: {status}: {rest}");
}
