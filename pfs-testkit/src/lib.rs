//! Scaffolding for pfs's tests and benchmarks: clusters of real daemon processes on loopback
//! ([`LocalCluster`]), free ports, daemon spawning, and helpers to drive the command-line tools
//! and `pfs-probe` clients from a test.
//!
//! Used as a dev-dependency by the crates' integration tests and by the benchmarks, and by
//! `pfs up` / `pfs demo`, which start daemons the same way. It links no server crate: daemons
//! are separate executables, found as [`daemon::daemon_command`] describes.

pub mod cluster;
pub mod daemon;
pub mod error;
pub mod mount;
pub mod raw;
pub mod tools;

pub use cluster::{
    free_ports, meta_leader_of, meta_statuses, wait_meta_leader, wait_meta_listening, wait_ready, LocalCluster,
    READY_TIMEOUT,
};
pub use daemon::{Daemon, DaemonKind};
pub use error::{Error, Result};
pub use mount::{mounted, wait_until, Mount};
pub use tools::{ok, random_bytes, run_tool, sha256_hex, Probe};
