//! Helpers of the end-to-end tests: reproducible random data, running the command-line tools
//! and driving `pfs-probe` client processes line by line.

use rand::{RngCore, SeedableRng};
use std::path::Path;
use std::process::{Command, Output};

/// `len` pseudo-random bytes from `seed` (reproducible).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Runs a tool (`pfs`, `pfs-cp`, given by its executable path) with `--config CONFIG` and
/// `args`, logging at warn level; returns its output.
pub fn run_tool(exe: &str, config: &Path, args: &[&str]) -> Output {
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

/// SHA-256 of `data` as 64 hex digits.
pub fn sha256_hex(data: &[u8]) -> String {
    pfs_common::ids::Sha256Digest::of(data).to_string()
}

/// A `pfs-probe` client process driven line by line.
pub struct Probe {
    pub child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Probe {
    /// Starts `pfs-probe --config CONFIG`.
    pub fn start(exe: &str, config: &Path) -> Probe {
        use std::process::Stdio;
        let mut child = Command::new(exe)
            .arg("--config")
            .arg(config)
            .env("PFS_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pfs-probe starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Probe { child, stdin, stdout }
    }

    /// Sends one command and returns the answer line (without the trailing newline).
    pub fn cmd(&mut self, line: &str) -> String {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{line}").expect("probe is alive");
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).expect("probe answers");
        answer.trim_end().to_string()
    }

    /// Like `cmd`, panicking unless the answer starts with `ok`; returns what follows it.
    pub fn ok(&mut self, line: &str) -> String {
        let a = self.cmd(line);
        assert!(a.starts_with("ok"), "`{line}` answered `{a}`");
        a.trim_start_matches("ok").trim().to_string()
    }

    /// A counter from `stats`.
    pub fn stat(&mut self, name: &str) -> u64 {
        let s = self.ok("stats");
        s.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(|v| v.parse().unwrap()))
            .unwrap_or_else(|| panic!("no {name} in {s}"))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
