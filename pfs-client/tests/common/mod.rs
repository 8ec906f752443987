//! Shared helpers of the end-to-end tests: random data, running the tools.
#![allow(dead_code)]

use rand::{RngCore, SeedableRng};
use std::path::Path;
use std::process::{Command, Output};

/// `len` pseudo-random bytes from `seed` (reproducible).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Runs one of this package's tools (`pfs`, `pfs-cp`) with `--config`.
pub fn tool(exe: &str, config: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(exe);
    cmd.arg("--config").arg(config).args(args);
    cmd.env("PFS_LOG", "warn");
    cmd.output().expect("tool runs")
}

/// Panics with the tool's output unless it exited 0; returns its stdout.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "tool failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn sha256_hex(data: &[u8]) -> String {
    pfs_common::ids::Sha256Digest::of(data).to_string()
}
