//! pfs-ior and pfs-mdtest as users run them: real rank processes, a real cluster, real files.
//! They assert behaviour (exit status, checks, output layout), never timings.

use pfs_testkit::LocalCluster;
use std::process::{Command, Output};

const IOR: &str = env!("CARGO_BIN_EXE_pfs-ior");
const MDTEST: &str = env!("CARGO_BIN_EXE_pfs-mdtest");

fn run(exe: &str, args: &[&str]) -> (i32, String) {
    let out: Output = Command::new(exe).args(args).env("PFS_LOG", "warn").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), format!("{stdout}\n--- stderr ---\n{stderr}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// `--np 4` against the embedded cluster (no --config): a strided shared file with 47008-byte
/// transfers, written, checked, read back by the neighbouring rank, checked again.
#[test]
fn four_ranks_shared_file_checks_pass_on_embedded_cluster() {
    let (code, out) = run(IOR, &["--np", "4", "-W", "-R", "-C", "-b", "94016", "-t", "47008", "-s", "3", "-i", "2"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("embedded cluster: 1 pfs-meta + 4 pfs-storage"), "{out}");
    assert!(out.contains("access    bw(MiB/s)  IOPS       Latency(s)  block(KiB) xfer(KiB)  open(s)    wr/rd(s)   close(s)   total(s)   iter"), "{out}");
    // Table rows (block 91.81 KiB, xfer 45.91 KiB), one per iteration; the summary has its own.
    let rows = |a: &str| out.lines().filter(|l| l.starts_with(a) && l.contains(" 91.81 ")).count();
    assert_eq!(rows("write     "), 2, "{out}");
    assert_eq!(rows("read      "), 2, "{out}");
    assert!(out.contains("tasks               : 4"), "{out}");
    assert!(out.contains("Max Write: ") && out.contains("Max Read:  "), "{out}");
    assert!(out.contains("Summary of all tests:"), "{out}");
    assert!(out.contains("Data check passed: 0 mismatched bytes"), "{out}");
    assert!(!out.contains("WARNING"), "{out}");
}

/// File per process, random offsets, reordered reads, PFS and POSIX in one job, with JSON.
#[test]
fn four_ranks_file_per_process_both_apis() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let (code, out) = run(
        IOR,
        &[
            "--np",
            "4",
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
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("api                 : PFS") && out.contains("api                 : POSIX"), "{out}");
    assert!(out.contains("PFS / POSIX (max bandwidth, same run):"), "{out}");
    assert!(out.contains("Data check passed: 0 mismatched bytes"), "{out}");
    let j = std::fs::read_to_string(&json).unwrap();
    assert!(
        j.contains("\"api\":\"PFS\"") && j.contains("\"api\":\"POSIX\"") && j.contains("\"mismatchedBytes\":0"),
        "{j}"
    );
}

/// A byte changed in a POSIX test file between a write run and a checked read run.
#[test]
fn read_check_counts_one_corrupted_byte_posix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("testFile");
    let f = file.to_str().unwrap();
    let common = ["-a", "POSIX", "--np", "2", "-k", "-b", "64k", "-t", "16k", "-s", "2", "-o", f];
    let (code, out) = run(IOR, &[&common[..], &["-w", "-W"]].concat());
    assert_eq!(code, 0, "{out}");
    let mut bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len(), 2 * 2 * 65536);
    bytes[100_000] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let (code, out) = run(IOR, &[&common[..], &["-r", "-R"]].concat());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("WARNING: incorrect data on read (1 errors found)."), "{out}");
    assert!(out.contains("Data check FAILED: 1 mismatched bytes"), "{out}");
}

/// The same through pfs: a byte overwritten by another client is caught by -R (with -C).
#[test]
fn read_check_counts_one_corrupted_byte_pfs() {
    let rt = runtime();
    let cluster = rt.block_on(LocalCluster::start(4)).unwrap();
    let config = cluster.config_path().to_str().unwrap().to_string();
    let common = ["--config", &config, "--np", "4", "-k", "-b", "94016", "-t", "47008", "-s", "2", "-o", "/t/f"];
    let (code, out) = run(IOR, &[&common[..], &["-w", "-W", "-C"]].concat());
    assert_eq!(code, 0, "{out}");
    rt.block_on(async {
        let client = cluster.client().await.unwrap();
        let file = client.open("/t/f").await.unwrap();
        assert_eq!(file.size(), 2 * 4 * 94016);
        let mut b = [0u8; 1];
        file.read_at(300_001, &mut b).await.unwrap();
        b[0] ^= 0x80;
        file.write_at(300_001, &b).await.unwrap();
        file.close().await.unwrap();
    });
    let (code, out) = run(IOR, &[&common[..], &["-r", "-R", "-C"]].concat());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("Data check FAILED: 1 mismatched bytes"), "{out}");
    // Without the corruption the same read passes: write again, then read.
    let (code, out) = run(IOR, &[&common[..], &["-w", "-r", "-R"]].concat());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Data check passed: 0 mismatched bytes"), "{out}");
}

#[test]
fn mdtest_four_ranks_prints_the_summary() {
    let (code, out) = run(MDTEST, &["--np", "4", "-n", "25", "-w", "100", "-e", "100", "-i", "2"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SUMMARY rate (in ops/sec): (of 2 iterations)"), "{out}");
    for row in [
        "Directory creation",
        "Directory stat",
        "Directory removal",
        "File creation",
        "File stat",
        "File read",
        "File removal",
        "Tree creation",
        "Tree removal",
    ] {
        assert!(out.lines().any(|l| l.starts_with(&format!("   {row:<26}:"))), "{row}: {out}");
    }
    assert!(out.contains("4 tasks, 100 files/directories"), "{out}");
}

#[test]
fn mdtest_presets_run_on_both_apis() {
    for preset in ["mdtest-easy", "mdtest-hard"] {
        let (code, out) = run(MDTEST, &["--np", "2", "-a", "PFS,POSIX", "--preset", preset, "--size", "20"]);
        assert_eq!(code, 0, "{preset}: {out}");
        assert!(out.contains("API: PFS") && out.contains("API: POSIX"), "{out}");
        assert!(!out.contains("Directory creation"), "files only: {out}");
        assert!(out.contains("File creation"), "{out}");
    }
}

/// A rank that fails (reading a file that does not exist) ends the job with an error instead
/// of leaving the other ranks at a barrier.
#[test]
fn a_failing_rank_ends_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("missing");
    let (code, out) = run(IOR, &["-a", "POSIX", "--np", "3", "-r", "-o", f.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error"), "{out}");
}
