//! pfs-ior and pfs-mdtest under a real `mpirun -np 4` (Open MPI), built with the cargo feature
//! `mpi`. They assert behaviour (exit status, checks, output), never timings.
//!
//! `mpirun` is taken from `$MPIRUN` (default `mpirun` on PATH) and given `--oversubscribe`
//! (4 ranks on fewer cores); running as root is allowed through Open MPI's environment.
#![cfg(feature = "mpi")]

use pfs_testkit::LocalCluster;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IOR: &str = env!("CARGO_BIN_EXE_pfs-ior");
const MDTEST: &str = env!("CARGO_BIN_EXE_pfs-mdtest");
/// A job that takes longer has hung (a rank left in a collective).
const TIMEOUT: Duration = Duration::from_secs(120);

/// `mpirun -np <np> <exe> <args>`: exit status and stdout + stderr. Panics after [`TIMEOUT`].
fn mpirun(np: usize, exe: &str, args: &[&str]) -> (i32, String) {
    let mpirun = std::env::var("MPIRUN").unwrap_or_else(|_| "mpirun".into());
    let mut child = Command::new(&mpirun)
        .args(["--oversubscribe", "-np", &np.to_string(), exe])
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("PFS_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {mpirun}: {e} (install openmpi-bin or set MPIRUN)"));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mpirun -np {np} {exe} {args:?}: no exit after {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = format!("{}\n--- stderr ---\n{}", out_reader.join().unwrap(), err_reader.join().unwrap());
    (status.code().unwrap_or(-1), out)
}

/// The user's command line: a shared file, checked after writing and after reading, read back
/// by the neighbouring rank, against the embedded cluster rank 0 starts.
#[test]
fn mpirun_shared_file_checks_pass_on_embedded_cluster() {
    let (code, out) = mpirun(4, IOR, &["-a", "PFS", "-w", "-r", "-W", "-R", "-C", "-b", "1m", "-t", "256k", "-s", "2"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("embedded cluster: 1 pfs-meta + 4 pfs-storage"), "{out}");
    assert_eq!(out.matches("embedded cluster:").count(), 1, "only rank 0 starts a cluster: {out}");
    assert!(out.contains("(4 MPI ranks on 1 node(s))"), "{out}");
    assert!(out.contains("tasks               : 4"), "{out}");
    assert!(out.contains("ordering inter file : constant task offset"), "{out}");
    let rows = |a: &str| out.lines().filter(|l| l.starts_with(a) && l.contains(" 1024.00 ")).count();
    assert_eq!(rows("write     "), 1, "{out}");
    assert_eq!(rows("read      "), 1, "{out}");
    assert!(out.contains("Data check passed: 0 mismatched bytes"), "{out}");
    assert!(!out.contains("WARNING"), "{out}");
    assert!(out.contains("Finished            : 4 MPI ranks"), "{out}");
}

/// With --config every rank uses that cluster (no embedded one); PFS and POSIX in one job,
/// file per process, random offsets, with the ratio and JSON.
#[test]
fn mpirun_with_config_both_apis_file_per_process() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(LocalCluster::start(4)).unwrap();
    let config = cluster.config_path().to_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let (code, out) = mpirun(
        4,
        IOR,
        &[
            "--config",
            &config,
            "-a",
            "PFS,POSIX",
            "-F",
            "-z",
            "-C",
            "-W",
            "-R",
            "-e",
            "-b",
            "256k",
            "-t",
            "64k",
            "-s",
            "2",
            "-o",
            "/mpi/f",
            "-k",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("embedded cluster"), "{out}");
    assert!(out.contains("PFS / POSIX (max bandwidth, same run):"), "{out}");
    assert!(out.contains("Data check passed: 0 mismatched bytes"), "{out}");
    let j = std::fs::read_to_string(&json).unwrap();
    assert!(j.contains("\"ranks\":4") && j.contains("\"mismatchedBytes\":0"), "{j}");
    // The files went to the given cluster (-k kept them).
    rt.block_on(async {
        let client = cluster.client().await.unwrap();
        for r in 0..4 {
            let f = client.open(&format!("/mpi/f.{r:08}")).await.unwrap();
            assert_eq!(f.size(), 2 * 256 * 1024);
            f.close().await.unwrap();
        }
    });
}

/// A corrupted byte is counted on every rank's behalf and the job exits non-zero.
#[test]
fn mpirun_read_check_counts_one_corrupted_byte() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("testFile");
    let f = file.to_str().unwrap();
    let common = ["-a", "POSIX", "-k", "-b", "64k", "-t", "16k", "-s", "2", "-o", f];
    let (code, out) = mpirun(4, IOR, &[&common[..], &["-w", "-W"]].concat());
    assert_eq!(code, 0, "{out}");
    let mut bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len(), 2 * 4 * 65536);
    bytes[300_000] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let (code, out) = mpirun(4, IOR, &[&common[..], &["-r", "-R", "-C"]].concat());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("WARNING: incorrect data on read (1 errors found)."), "{out}");
    assert!(out.contains("Data check FAILED: 1 mismatched bytes"), "{out}");
}

#[test]
fn mpirun_mdtest_prints_the_summary() {
    let (code, out) = mpirun(4, MDTEST, &["-n", "50", "-u", "-w", "100", "-e", "100"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pfs-mdtest was launched with 4 total task(s) on 1 node(s)"), "{out}");
    assert!(out.contains("4 tasks, 200 files/directories"), "{out}");
    for row in ["Directory creation", "File creation", "File read", "File removal", "Tree removal"] {
        assert!(out.lines().any(|l| l.starts_with(&format!("   {row:<26}:"))), "{row}: {out}");
    }
}

/// A failing rank aborts the MPI job instead of leaving the others in a collective; --np is
/// refused under mpirun.
#[test]
fn mpirun_failing_rank_aborts_and_np_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("missing");
    let (code, out) = mpirun(3, IOR, &["-a", "POSIX", "-r", "-o", f.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("aborting the MPI job"), "{out}");
    let (code, out) = mpirun(2, IOR, &["--np", "2", "-a", "POSIX"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("under mpirun, mpirun's -np sets the ranks"), "{out}");
}
